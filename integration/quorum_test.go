package integration

import (
	"context"
	"crypto/ed25519"
	"errors"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	hsmcluster "github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
)

// Quorum over a cluster of daemon processes: officers' keys and the policy reach every
// member; a token from one member, approved once, serves all of them; an
// unapproved or replayed token is refused everywhere with nothing changed.
func TestQuorumAcrossTheCluster(t *testing.T) {
	c, cfg := threeMembers(t)
	ctx := context.Background()
	password := c.password
	admin, err := hsmcluster.Open(ctx, cfg, testOfficer, password)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	privs := map[string]ed25519.PrivateKey{}
	for _, name := range []string{testOfficer, "co2", "co3"} {
		if name != testOfficer {
			if err := admin.CreateUser(ctx, name, hsmcore.CryptoOfficer, password); err != nil {
				t.Fatal(err)
			}
		}
		cl := admin
		if name != testOfficer {
			if cl, err = hsmcluster.Open(ctx, cfg, name, password); err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
		}
		pub, priv, _ := ed25519.GenerateKey(nil)
		if err := cl.RegisterSigningKey(ctx, pub); err != nil {
			t.Fatal(err)
		}
		privs[name] = priv
	}
	if err := admin.CreateUser(ctx, "alice", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	if err := admin.SetQuorum(ctx, "user.delete", 2); err != nil {
		t.Fatal(err)
	}
	wantInSync(t, cfg)

	before := digests(t, cfg)
	if err := admin.DeleteUser(ctx, "alice"); !errors.Is(err, hsmcore.ErrQuorum) {
		t.Fatalf("unapproved: got %v, want ErrQuorum", err)
	}
	tok, err := admin.QuorumToken(ctx, "user.delete", hsmcore.UserDeleteObject("alice", hsmcore.CryptoUser))
	if err != nil {
		t.Fatal(err)
	}
	unsigned := []quorum.Approval{{Officer: "co2", Signature: make([]byte, 64)}, {Officer: "co3", Signature: make([]byte, 64)}}
	admin.Approve(tok.ID, unsigned)
	if err := admin.DeleteUser(ctx, "alice"); !errors.Is(err, hsmcore.ErrQuorum) {
		t.Fatalf("unsigned approvals: got %v, want ErrQuorum", err)
	}
	if d := digests(t, cfg); d[0] != before[0] || d[1] != before[1] || d[2] != before[2] {
		t.Fatal("a refused operation changed a member")
	}
	admin.Approve(tok.ID, []quorum.Approval{quorum.Sign(privs["co2"], "co2", tok), quorum.Sign(privs["co3"], "co3", tok)})
	if err := admin.DeleteUser(ctx, "alice"); err != nil {
		t.Fatalf("approved: %v", err)
	}
	wantInSync(t, cfg)
	if err := admin.CreateUser(ctx, "alice", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	before = digests(t, cfg)
	if err := admin.DeleteUser(ctx, "alice"); !errors.Is(err, hsmcore.ErrQuorum) {
		t.Fatalf("replayed token: got %v, want ErrQuorum", err)
	}
	admin.ClearApproval()
	if d := digests(t, cfg); d[0] != before[0] || d[1] != before[1] || d[2] != before[2] {
		t.Fatal("a replayed token changed a member")
	}
}
