package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
)

// Each member counts its own failed logins; Cluster.UnlockUser lifts the
// lock on every member, and leaves the members in sync.
func TestClusterUnlockUser(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	hsms, cfg := e.threeMembers(t)
	clients := make([]*client.Client, len(hsms))
	for i, h := range hsms {
		cc := cfg.Client
		cc.Addr = h.Addr
		c, err := client.New(cc)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients[i] = c
		for j := range device.DefaultMaxLoginFailures {
			if _, err := c.Login(ctx, "alice", fmt.Sprint("wrong guess ", j)); !errors.Is(err, hsmcore.ErrAuth) {
				t.Fatalf("member %d: wrong guess: %v", i, err)
			}
		}
		if _, err := c.Login(ctx, "alice", password); !errors.Is(err, hsmcore.ErrAuth) {
			t.Fatalf("member %d: locked user logged in: %v", i, err)
		}
	}
	if _, err := cluster.Open(ctx, cfg, "alice", password); err == nil {
		t.Fatal("a locked user opened the cluster")
	}
	co, err := cluster.Open(ctx, cfg, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	if err := co.UnlockUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	for i, c := range clients {
		if _, err := c.Login(ctx, "alice", password); err != nil {
			t.Fatalf("member %d: after the unlock: %v", i, err)
		}
	}
	assertInSync(t, hsms)
}
