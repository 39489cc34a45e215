package backup

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/file"
)

// TestResolve: full ids, "latest" per cluster (READY only), unique
// prefixes; ambiguous and unknown references are refused, naming the
// candidates.
func TestResolve(t *testing.T) {
	ctx := context.Background()
	st, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	repo := Repo{Store: st, Prefix: "p"}
	put := func(cluster, id string, created time.Time, state State) {
		m := fixedManifest()
		m.ID, m.ClusterID, m.Created, m.State = id, cluster, created, state
		if state != StateReady {
			m.DeletionRequested = created.Add(time.Hour)
		}
		if err := m.Sign(fixedKey()); err != nil {
			t.Fatal(err)
		}
		b, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Put(ctx, repo.ObjectKey(cluster, id, ManifestObject), bytes.NewReader(b), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	a1, a2, a3 := "backup-20261124T100000Z-aaaaaaaaaa", "backup-20261124T110000Z-bbbbbbbbbb", "backup-20261124T120000Z-cccccccccc"
	put("a", a1, t0, StateReady)
	put("a", a2, t0.Add(time.Hour), StateReady)
	put("a", a3, t0.Add(2*time.Hour), StatePendingDeletion)

	for _, tc := range []struct{ cluster, ref, wantCluster, wantID string }{
		{"", a1, "a", a1},
		{"a", a2, "a", a2},
		{"", "latest", "a", a2}, // a3 is not READY
		{"a", "latest", "a", a2},
		{"", "backup-20261124T12", "a", a3},
		{"a", "backup-20261124T10", "a", a1},
	} {
		cl, id, err := Resolve(ctx, repo, tc.cluster, tc.ref)
		if err != nil || cl != tc.wantCluster || id != tc.wantID {
			t.Errorf("Resolve(%q, %q) = %s, %s, %v; want %s, %s", tc.cluster, tc.ref, cl, id, err, tc.wantCluster, tc.wantID)
		}
	}
	if _, _, err := Resolve(ctx, repo, "", "backup-20261124T1"); !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), "3 backups match: "+a1+" (a), "+a2+" (a), "+a3+" (a)") {
		t.Errorf("ambiguous prefix: %v", err)
	}
	if _, _, err := Resolve(ctx, repo, "", "backup-1999"); !errors.Is(err, store.ErrNotFound) || err.Error() != `no backup id starts with "backup-1999"` {
		t.Errorf("no match: %v", err)
	}
	if _, _, err := Resolve(ctx, repo, "", "not-a-backup"); !errors.Is(err, store.ErrNotFound) || err.Error() != `bad backup id "not-a-backup": object not found` {
		t.Errorf("not an id: %v", err)
	}
	if _, _, err := Resolve(ctx, repo, "", "backup-20200101T000000Z-aaaaaaaaaa"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown full id: %v", err)
	}
	if _, _, err := Resolve(ctx, repo, "b", "latest"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("latest of a cluster without backups: %v", err)
	}

	b1 := "backup-20261124T130000Z-dddddddddd"
	put("b", b1, t0.Add(3*time.Hour), StateReady)
	if _, _, err := Resolve(ctx, repo, "", "latest"); !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), "clusters a, b: name the cluster") {
		t.Errorf("latest of two clusters: %v", err)
	}
	if cl, id, err := Resolve(ctx, repo, "b", "latest"); err != nil || cl != "b" || id != b1 {
		t.Errorf("latest of b: %s %s %v", cl, id, err)
	}
	if cl, id, err := Resolve(ctx, repo, "a", "backup-20261124T1"); !errors.Is(err, ErrAmbiguous) {
		t.Errorf("prefix within a: %s %s %v", cl, id, err)
	}
	if cl, id, err := Resolve(ctx, repo, "", "backup-20261124T13"); err != nil || cl != "b" || id != b1 {
		t.Errorf("prefix of b's: %s %s %v", cl, id, err)
	}
}
