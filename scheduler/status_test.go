package scheduler

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/backup/backuptest"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// TestCollectColours: a cluster is green while its newest READY backup
// covers the last slot, amber within the slot's grace, red after it; a
// truncated manifest is reported (amber) without hiding the cluster's
// good backups or touching the other cluster.
func TestCollectColours(t *testing.T) {
	ctx := context.Background()
	st := backuptest.FileStore(t)
	f := newFleet(t, st, "c1", "c2")
	var newest *backup.Manifest
	for _, id := range []string{"c1", "c1", "c2"} {
		m, err := backup.Create(ctx, f.members[id], f.repo, backup.CreateOptions{ClusterID: id, Recipients: []wrap.Recipient{f.kr}, SigningKey: f.priv})
		if err != nil {
			t.Fatal(err)
		}
		if id == "c1" {
			if newest != nil { // truncate the older c1 manifest
				key := f.repo.ObjectKey("c1", newest.ID, backup.ManifestObject)
				b := readAll(t, st, key)
				if err := st.Put(ctx, key, bytes.NewReader(b[:len(b)/2]), store.PutOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			newest = m
		}
	}
	hourly := mustParse(t, "@hourly")
	cs := []Cluster{{ID: "c1", Backup: hourly}, {ID: "c2", Backup: hourly}}
	created := newest.Created
	nextSlot := Next(hourly, created)
	for _, tc := range []struct {
		name string
		now  time.Time
		c1   Colour // amber at best: it has an invalid manifest
		c2   Colour
	}{
		{"covered", created.Add(time.Second), Amber, Green},
		{"due, within the grace", nextSlot.Add(time.Minute), Amber, Amber},
		{"late", nextSlot.Add(20 * time.Minute), Red, Red},
	} {
		st, err := Collect(ctx, f.repo, f.pub, cs, DefaultSettings, tc.now)
		if err != nil || len(st) != 2 {
			t.Fatalf("%s: Collect = %v, %v", tc.name, st, err)
		}
		c1, c2 := st[0], st[1]
		if c2.Colour != tc.c2 || c2.NewestReady == nil || c2.PeriodSeconds != 3600 {
			t.Errorf("%s: c2 %s %+v, want %s", tc.name, c2.Colour, c2, tc.c2)
		}
		if c1.NewestBackup != newest.ID || !strings.Contains(strings.Join(c1.Problems, "\n"), "INVALID manifest") {
			t.Errorf("%s: c1 newest %s, problems %q", tc.name, c1.NewestBackup, c1.Problems)
		}
		if c1.Colour != tc.c1 {
			t.Errorf("%s: c1 %s, want %s", tc.name, c1.Colour, tc.c1)
		}
	}
}

func readAll(t *testing.T, st store.Store, key string) []byte {
	t.Helper()
	rc, err := st.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(rc); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
