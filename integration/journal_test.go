package integration

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// TestJournalSurvivesSIGKILL: a crypto user creates keys one by one while
// the HSM daemon is killed (SIGKILL) at random moments, eight times; each
// time it comes back on the same device, every key it acknowledged is
// there, with its check value, it opens (no torn state), and it goes on.
// A key whose answer the kill cut may or may not be there; nothing else
// is.
func TestJournalSurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	fillKeysOf(t, c, 2000, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true})
	ctx := context.Background()
	acked := map[uint64]string{} // every key the HSM has answered for
	{
		cu := c.client(t, c.cert, c.key)
		if _, err := cu.Login(ctx, "app", c.password+"-app"); err != nil {
			t.Fatal(err)
		}
		keys, err := cu.Keys(ctx)
		if err != nil || len(keys) != 2000 {
			t.Fatalf("%d keys, %v", len(keys), err)
		}
		for _, k := range keys {
			acked[k.Handle] = k.KCV
		}
		cu.Close()
	}
	for round := range 8 {
		cu := c.client(t, c.cert, c.key)
		if _, err := cu.Login(ctx, "app", c.password+"-app"); err != nil {
			t.Fatalf("round %d: login: %v", round, err)
		}
		var mu sync.Mutex
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				keys, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Encrypt: true, Label: "during kills"}})
				if err != nil {
					return // the kill
				}
				mu.Lock()
				acked[keys[0].Handle] = keys[0].KCV
				mu.Unlock()
			}
		}()
		time.Sleep(time.Duration(50+rand.IntN(250)) * time.Millisecond)
		Kill(t, c.addr)
		close(stop)
		<-done
		cu.Close()
		RestartDaemon(t, c.addr)

		cu = c.client(t, c.cert, c.key)
		if _, err := cu.Login(ctx, "app", c.password+"-app"); err != nil {
			t.Fatalf("round %d: login after the kill: %v", round, err)
		}
		keys, err := cu.Keys(ctx)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		held := map[uint64]string{}
		for _, k := range keys {
			held[k.Handle] = k.KCV
		}
		mu.Lock()
		for h, kcv := range acked {
			if held[h] != kcv {
				t.Fatalf("round %d: key %d acknowledged (check value %s) is %q after the kill", round, h, kcv, held[h])
			}
		}
		n := len(acked)
		mu.Unlock()
		if len(keys) < n || len(keys) > n+1 {
			t.Fatalf("round %d: %d keys held, %d acknowledged: at most one unacknowledged may be there", round, len(keys), n)
		}
		// Keys the kill cut but the HSM kept count as acknowledged now.
		for _, k := range keys {
			acked[k.Handle] = k.KCV
		}
		cu.Close()
	}
	if len(acked) < 2000+8 {
		t.Fatalf("only %d keys made in eight rounds", len(acked)-2000)
	}
}
