package backup

import (
	"bytes"
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/backup/backuptest"
)

// TestOrphans: an image object without a manifest (what a backup create
// killed between its two writes leaves) and other stray objects in backup
// directories are found; backups and objects outside backup directories
// are not. Prune removes only those past the grace period, and backup
// List never shows them.
func TestOrphans(t *testing.T) {
	ctx := context.Background()
	st := backuptest.FileStore(t)
	repo := Repo{Store: st, Prefix: testPrefix}
	priv := fixedKey()
	m := fixedManifest()
	if err := m.Sign(priv); err != nil {
		t.Fatal(err)
	}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	const lost = "backup-20250101T000000Z-aaaaaaaaaa"
	putObject(t, st, repo.ObjectKey(m.ClusterID, m.ID, ManifestObject), b)
	putObject(t, st, repo.ObjectKey(m.ClusterID, m.ID, ImageObject), []byte("image"))
	putObject(t, st, repo.ObjectKey(m.ClusterID, m.ID, "image.old"), []byte("stray"))
	putObject(t, st, repo.ObjectKey(m.ClusterID, lost, ImageObject), []byte("orphan image"))
	putObject(t, st, testPrefix+"clusters/cluster-1/notes.txt", []byte("not a backup directory"))
	putObject(t, st, "other-tenant/clusters/cluster-1/backups/"+lost+"/image", []byte("another prefix"))

	got, err := Orphans(ctx, repo, "", time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, o := range got {
		if o.Stale || o.ClusterID != "cluster-1" || o.Size == 0 || o.Modified.IsZero() {
			t.Errorf("orphan %+v: want young, of cluster-1, with size and time", o)
		}
		keys = append(keys, o.BackupID+"/"+strings.TrimPrefix(o.Key, repo.ObjectKey(o.ClusterID, o.BackupID, "")))
	}
	if want := lost + "/image " + m.ID + "/image.old"; strings.Join(keys, " ") != want {
		t.Fatalf("orphans %q, want %q", keys, want)
	}
	if got[0].Reason != "image object without a manifest" {
		t.Errorf("reason %q", got[0].Reason)
	}
	if got, err := Orphans(ctx, repo, "cluster-2", time.Now()); err != nil || len(got) != 0 {
		t.Errorf("orphans of another cluster: %+v, %v", got, err)
	}
	if got, err := Orphans(ctx, repo, "", time.Now().Add(time.Hour)); err != nil || len(got) != 2 || !got[0].Stale || !got[1].Stale {
		t.Errorf("orphans older than an hour from now: %+v, %v; want both stale", got, err)
	}
	if ms, err := List(ctx, repo, Filter{}); err != nil || len(ms) != 1 {
		t.Fatalf("List: %d manifests, %v; want the one backup", len(ms), err)
	}

	// Within the grace period (the default, or set) prune leaves them;
	// a dry run past it changes nothing either.
	policy := func(string) Policy { return Policy{} }
	before := snapshot(t, st)
	for name, po := range map[string]PruneOptions{
		"default grace": {},
		"1h grace":      {OrphanGrace: time.Hour},
		"dry run":       {OrphanGrace: NoOrphanGrace, DryRun: true},
	} {
		po.LifecycleOptions, po.Policy = LifecycleOptions{SigningKey: priv}, policy
		acts, err := Prune(ctx, repo, po)
		if err != nil || (name != "dry run" && len(acts) != 0) || (name == "dry run" && len(acts) != 2) {
			t.Errorf("%s: Prune = %+v, %v", name, acts, err)
		}
		if !maps.EqualFunc(before, snapshot(t, st), bytes.Equal) {
			t.Fatalf("%s: store changed", name)
		}
	}
	// Past it, they go, each an action naming its object.
	acts, err := Prune(ctx, repo, PruneOptions{LifecycleOptions: LifecycleOptions{SigningKey: priv}, Policy: policy, OrphanGrace: NoOrphanGrace})
	if err != nil || len(acts) != 2 || acts[0].Object != got[0].Key || acts[1].Object != got[1].Key || acts[0].BackupID != lost {
		t.Fatalf("Prune past the grace: %+v, %v", acts, err)
	}
	if !strings.HasPrefix(acts[0].Reason, "image object without a manifest, ") {
		t.Errorf("reason %q", acts[0].Reason)
	}
	after := snapshot(t, st)
	for k := range before {
		_, kept := after[k]
		if removed := k == got[0].Key || k == got[1].Key; removed == kept {
			t.Errorf("%s: kept %t after the prune", k, kept)
		}
	}
	if got, err := Orphans(ctx, repo, "", time.Now()); err != nil || len(got) != 0 {
		t.Errorf("orphans after the prune: %+v, %v", got, err)
	}
}
