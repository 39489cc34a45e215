package cluster_test

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
)

// imageOf exports the image of the HSM behind cl.
func imageOf(t *testing.T, cl *client.Client) []byte {
	t.Helper()
	img, err := cl.ExportImage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	raw, err := io.ReadAll(img)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// A member restored from an older backup is brought forward by the
// cluster: the others' state covers its version, so the next Refresh
// re-syncs it from the newest and the key made since the backup is kept
// everywhere. Rolling the whole cluster back, every member restored, is
// the explicit act that returns to the old state.
func TestMemberRestoredFromOlderBackupBroughtForward(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	hsms, cfg := e.threeMembers(t)
	officers := make([]*client.Client, len(hsms))
	old := imageOf(t, e.member(t, cfg, hsms[0].Addr, "admin"))
	oldDigest := hsms[0].Dev.StateDigest()

	cu, err := cluster.Open(ctx, cfg, "alice", password)
	if err != nil {
		t.Fatal(err)
	}
	defer cu.Close()
	ks, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true}})
	if err != nil {
		t.Fatal(err)
	}
	assertInSync(t, hsms)

	restore := func(t *testing.T, members ...int) {
		t.Helper()
		for _, i := range members {
			// A fresh login: an image import, the cluster's re-sync too, ends
			// the member's sessions.
			officers[i] = e.member(t, cfg, hsms[i].Addr, "admin")
			if _, err := officers[i].ImportImage(ctx, bytes.NewReader(old)); err != nil {
				t.Fatalf("restore the older backup into member %d: %v", i, err)
			}
			if hsms[i].Dev.StateDigest() != oldDigest {
				t.Fatalf("member %d does not hold the older backup's state", i)
			}
		}
	}
	hasKey := func(t *testing.T, h *hsmtest.Daemon, want bool) {
		t.Helper()
		c := e.member(t, cfg, h.Addr, "alice")
		_, err := c.Key(ctx, ks[0].Handle)
		if got := err == nil; got != want {
			t.Fatalf("member %s holds the key made after the backup: %t (%v), want %t", h.Addr, got, err, want)
		}
	}

	restore(t, 2)
	co, err := cluster.Open(ctx, cfg, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	assertInSync(t, hsms)
	for _, h := range hsms {
		hasKey(t, h, true)
	}

	restore(t, 0, 1, 2)
	if err := co.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	assertInSync(t, hsms)
	if hsms[0].Dev.StateDigest() != oldDigest {
		t.Fatal("the cluster rolled back as a whole does not hold the backup's state")
	}
	for _, h := range hsms {
		hasKey(t, h, false)
	}
}
