package quorum_test

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
)

func Example() {
	// Each crypto officer registers an Ed25519 public key with the HSM.
	privs := map[string]ed25519.PrivateKey{}
	keys := map[string]ed25519.PublicKey{}
	for _, name := range []string{"alice", "bob", "carol"} {
		seed := sha256.Sum256([]byte(name)) // for a reproducible example only
		privs[name] = ed25519.NewKeyFromSeed(seed[:])
		keys[name] = privs[name].Public().(ed25519.PublicKey)
	}
	policy := quorum.Policy{Ops: map[string]int{"user.delete": 2}}
	if err := policy.Validate(); err != nil {
		panic(err)
	}

	// The HSM issues a token for the operation; officers sign it offline.
	tracker := quorum.NewTracker(nil, 0)
	tok, err := tracker.Issue("user.delete", "dave")
	if err != nil {
		panic(err)
	}
	approvals := []quorum.Approval{
		quorum.Sign(privs["alice"], "alice", tok),
		quorum.Sign(privs["carol"], "carol", tok),
	}

	// The HSM consumes the token before it runs the operation.
	m := policy.Required("user.delete")
	err = tracker.Consume(tok.ID, "user.delete", "dave", m, approvals[:1], keys)
	fmt.Println(errors.Is(err, quorum.ErrNotEnoughApprovals))
	err = tracker.Consume(tok.ID, "user.delete", "dave", m, approvals, keys)
	fmt.Println(err)
	err = tracker.Consume(tok.ID, "user.delete", "dave", m, approvals, keys)
	fmt.Println(errors.Is(err, quorum.ErrUnknownToken))
	// Output:
	// true
	// <nil>
	// true
}
