package cluster_test

import (
	"context"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
)

// A key unwrapped through the cluster is on every member, with the check
// value of the key that was wrapped, under every mechanism.
func TestUnwrapReplicates(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	hsms, cfg := e.threeMembers(t)
	cu, err := cluster.Open(ctx, cfg, "alice", password)
	if err != nil {
		t.Fatal(err)
	}
	defer cu.Close()
	ks, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{
		{Type: hsmcore.AES, Bits: 256, Wrap: true, Unwrap: true},
		{Type: hsmcore.RSA, Bits: 2048, Wrap: true, Unwrap: true},
		{Type: hsmcore.AES, Bits: 128, Encrypt: true, Decrypt: true, Extractable: true},
		{Type: hsmcore.HPKE, Bits: 768, Wrap: true, Unwrap: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	aes, target := ks[0], ks[2]
	wks := map[hsmcore.KeyType]hsmcore.KeyInfo{hsmcore.AES: ks[0], hsmcore.RSA: ks[1], hsmcore.HPKE: ks[3]}
	for _, mech := range hsmcore.Mechanisms {
		wk := wks[mech.WrappingKeyType()]
		w, err := cu.WrapKey(ctx, wk.Handle, target.Handle, mech)
		if err != nil {
			t.Fatalf("%s: %v", mech, err)
		}
		u, err := cu.UnwrapKey(ctx, wk.Handle, mech, w, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Decrypt: true, Label: string(mech)})
		if err != nil {
			t.Fatalf("%s: %v", mech, err)
		}
		if u.KCV != target.KCV {
			t.Fatalf("%s: unwrapped check value %s, want %s", mech, u.KCV, target.KCV)
		}
		assertInSync(t, hsms)
		for _, h := range hsms {
			if _, err := e.member(t, cfg, h.Addr, "alice").Key(ctx, u.Handle); err != nil {
				t.Fatalf("%s: member %s: %v", mech, h.Addr, err)
			}
		}
	}
	if _, err := cu.UnwrapKey(ctx, aes.Handle, hsmcore.AESKWP, nil, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Session: true}); err == nil {
		t.Fatal("a session key unwrapped through the cluster")
	}
}
