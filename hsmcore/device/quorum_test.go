package device

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
)

// officers gives d three crypto officers with signing keys (admin plus
// co2 and co3) and returns their private keys by name.
func officers(t *testing.T, d *Device, admin *Session) map[string]ed25519.PrivateKey {
	t.Helper()
	keys := map[string]ed25519.PrivateKey{}
	for _, name := range []string{"admin", "co2", "co3"} {
		s := admin
		if name != "admin" {
			if err := admin.CreateUser(name, hsmcore.CryptoOfficer, testPassword); err != nil {
				t.Fatal(err)
			}
			s = login(t, d, name)
		}
		pub, priv, _ := ed25519.GenerateKey(nil)
		if err := s.RegisterSigningKey(pub); err != nil {
			t.Fatal(err)
		}
		keys[name] = priv
	}
	return keys
}

func approvals(keys map[string]ed25519.PrivateKey, tok quorum.Token, names ...string) []quorum.Approval {
	var out []quorum.Approval
	for _, n := range names {
		out = append(out, quorum.Sign(keys[n], n, tok))
	}
	return out
}

func TestQuorumProtectsOperations(t *testing.T) {
	clock := time.Now()
	opts := TestOptions()
	opts.Now = func() time.Time { return clock }
	d, _, err := Manufacture(t.TempDir()+"/hsm", ManufactureConfig{Class: "hsm2m.medium", Firmware: "2.1.0",
		Manufacturer: authority(t, "acme"), Operator: authority(t, "cloud")}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	co, _ := initDevice(t, d)
	keys := officers(t, d, co)
	if err := co.SetQuorum("user.delete", 4); !errors.Is(err, hsmcore.ErrInvalid) {
		t.Fatalf("M above the officers with keys: got %v, want ErrInvalid", err)
	}
	if err := co.SetQuorum("user.delete", 2); err != nil {
		t.Fatal(err)
	}

	refuse := func(name string, setup func()) {
		t.Helper()
		sealed, content := stateBytes(t, d), contentsBytes(t, d)
		setup()
		if err := co.DeleteUser("alice"); !errors.Is(err, hsmcore.ErrQuorum) {
			t.Fatalf("%s: got %v, want ErrQuorum", name, err)
		}
		assertUnchanged(t, d, sealed, content)
	}
	refuse("no approvals", func() {})
	tok, _, err := co.QuorumToken("user.delete", hsmcore.UserDeleteObject("alice", hsmcore.CryptoUser))
	if err != nil {
		t.Fatal(err)
	}
	refuse("one approval of two", func() { co.Approve(tok.ID, approvals(keys, tok, "co2")) })
	refuse("one officer twice", func() { co.Approve(tok.ID, approvals(keys, tok, "co2", "co2")) })
	forged := approvals(keys, tok, "co2", "co3")
	forged[1].Signature[0] ^= 1
	refuse("a forged signature", func() { co.Approve(tok.ID, forged) })
	other, _, _ := co.QuorumToken("user.delete", hsmcore.UserDeleteObject("bob", hsmcore.CryptoUser))
	refuse("a token for another user", func() { co.Approve(other.ID, approvals(keys, other, "co2", "co3")) })

	co.Approve(tok.ID, approvals(keys, tok, "co2", "co3"))
	if err := co.DeleteUser("alice"); err != nil {
		t.Fatalf("with two approvals: %v", err)
	}
	if err := co.CreateUser("alice", hsmcore.CryptoUser, testPassword); err != nil {
		t.Fatal(err)
	}
	refuse("a replayed token", func() { co.Approve(tok.ID, approvals(keys, tok, "co2", "co3")) })

	late, _, _ := co.QuorumToken("user.delete", hsmcore.UserDeleteObject("alice", hsmcore.CryptoUser))
	clock = clock.Add(quorum.DefaultTTL + time.Second)
	refuse("an expired token", func() { co.Approve(late.ID, approvals(keys, late, "admin", "co3")) })

	// Once quorum.set is protected, lowering a quorum needs approval too.
	if err := co.SetQuorum("quorum.set", 2); err != nil {
		t.Fatal(err)
	}
	if err := co.SetQuorum("user.delete", 0); !errors.Is(err, hsmcore.ErrQuorum) {
		t.Fatalf("lowering without approval: got %v, want ErrQuorum", err)
	}
	q, _, _ := co.QuorumToken("quorum.set", hsmcore.QuorumSetObject("user.delete", 0))
	co.Approve(q.ID, approvals(keys, q, "admin", "co2"))
	if err := co.SetQuorum("user.delete", 0); err != nil {
		t.Fatal(err)
	}
}

// One set of approvals serves every member of a cluster, once each.
func TestQuorumAcrossClusterMembers(t *testing.T) {
	a, b, coA, _, coB, _ := twoMembers(t)
	keys := officers(t, a, coA)
	reclone(t, coA, b, coB)
	if err := coA.SetQuorum("image.export", 2); err != nil {
		t.Fatal(err)
	}
	replicate(t, a, b)
	coB = login(t, b, "admin")
	if a.StateDigest() != b.StateDigest() {
		t.Fatal("members differ")
	}
	tok, sealed, err := coA.QuorumToken("image.export", hsmcore.ImageExportObject("cluster-s", ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := coB.AdoptQuorumToken(sealed); err != nil {
		t.Fatal(err)
	}
	ap := approvals(keys, tok, "co2", "co3")
	for _, s := range []*Session{coA, coB} {
		s.Approve(tok.ID, ap)
		if _, r, err := s.ExportImage(context.Background()); err != nil {
			t.Fatalf("approved export: %v", err)
		} else {
			r.Close()
		}
		s.Approve(tok.ID, ap)
		if _, _, err := s.ExportImage(context.Background()); !errors.Is(err, hsmcore.ErrQuorum) {
			t.Fatalf("second use: got %v, want ErrQuorum", err)
		}
	}
	if _, err := coB.AdoptQuorumToken(sealed); !errors.Is(err, hsmcore.ErrQuorum) {
		t.Fatalf("re-adopting a used token: got %v, want ErrQuorum", err)
	}
	bad := bytes.Clone(sealed)
	bad[len(bad)-1] ^= 1
	if _, err := coB.AdoptQuorumToken(bad); !errors.Is(err, hsmcore.ErrTampered) {
		t.Fatalf("tampered token: got %v, want ErrTampered", err)
	}
}
