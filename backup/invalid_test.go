package backup

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/hsmbackup/hsmbackup/backup/backuptest"
	"github.com/hsmbackup/hsmbackup/store"
)

// TestInvalidManifestsSkipped: a truncated manifest, one edited in the
// store (no longer verifies) and one stored under another backup's key are
// each reported as invalid, with a reason; Scan lists, and Prune prunes,
// every other backup.
func TestInvalidManifestsSkipped(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	st := backuptest.FileStore(t)
	repo := Repo{Store: st, Prefix: testPrefix}

	truncated := f.create(t, st, 60, CreateOptions{})
	b := manifestBytes(t, st, truncated.ID)
	putObject(t, st, repo.ObjectKey(testCluster, truncated.ID, ManifestObject), b[:len(b)/2])
	edited := f.create(t, st, 55, CreateOptions{Tags: map[string]string{"env": "prod"}})
	b = manifestBytes(t, st, edited.ID)
	i := bytes.Index(b, []byte(`"prod"`))
	b[i+2] ^= 0x01
	putObject(t, st, repo.ObjectKey(testCluster, edited.ID, ManifestObject), b)
	expired := f.create(t, st, 45, CreateOptions{})
	const misplaced = "backup-20250101T000000Z-aaaaaaaaaa"
	putObject(t, st, repo.ObjectKey(testCluster, misplaced, ManifestObject), manifestBytes(t, st, expired.ID))
	newest := f.create(t, st, 1, CreateOptions{})

	l, err := Scan(ctx, repo, ListOptions{PublicKey: f.pub})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(l.Backups); strings.Join(got, " ") != expired.ID+" "+newest.ID || !l.SignaturesChecked {
		t.Fatalf("Scan: backups %v (signatures checked %t), want %s %s", got, l.SignaturesChecked, expired.ID, newest.ID)
	}
	want := map[string]string{
		misplaced:    "it describes backup " + expired.ID,
		truncated.ID: "invalid manifest",
		edited.ID:    "invalid manifest: bad signature",
	}
	if len(l.Invalid) != len(want) {
		t.Fatalf("Scan: invalid %+v, want %d", l.Invalid, len(want))
	}
	for _, inv := range l.Invalid {
		if w, ok := want[inv.BackupID]; !ok || !strings.Contains(inv.Reason, w) || strings.Contains(inv.Reason, inv.Key) ||
			!errors.Is(inv.Err, ErrManifest) || inv.ClusterID != testCluster || inv.Key != repo.ObjectKey(testCluster, inv.BackupID, ManifestObject) {
			t.Errorf("invalid %+v: want reason with %q", inv, w)
		}
	}
	// Without a public key, the edited manifest lists: signatures are not
	// checked, and the listing says so.
	l, err = Scan(ctx, repo, ListOptions{Filter: Filter{State: StateReady}})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Backups) != 3 || len(l.Invalid) != 2 || l.SignaturesChecked {
		t.Fatalf("Scan without a key: %v, invalid %+v, checked %t", ids(l.Backups), l.Invalid, l.SignaturesChecked)
	}
	// List keeps failing on them (its callers need every backup).
	if _, err := List(ctx, repo, Filter{}); !errors.Is(err, ErrManifest) {
		t.Fatalf("List = %v, want ErrManifest", err)
	}

	before := snapshot(t, st)
	po := PruneOptions{LifecycleOptions: f.opts(lifecycleNow), Policy: func(string) Policy { return Policy{RetentionDays: 30, KeepLast: 1} }}
	acts, err := Prune(ctx, repo, po)
	if err == nil {
		t.Error("Prune: no error for the invalid manifests")
	}
	got := map[string]PruneAction{}
	for _, a := range acts {
		got[a.BackupID] = a
	}
	if len(acts) != 4 {
		t.Fatalf("Prune: %+v, want 4 actions", acts)
	}
	for id, st := range map[string]State{truncated.ID: StateInvalid, misplaced: StateInvalid, edited.ID: StateReady} {
		if a := got[id]; a.From != st || a.To != st || a.Error == "" || a.Reason != "left alone" {
			t.Errorf("action %+v: want %s left alone with an error", a, id)
		}
	}
	if a := got[expired.ID]; a.To != StatePendingDeletion || a.Error != "" {
		t.Errorf("action %+v: want %s expired", a, expired.ID)
	}
	after := snapshot(t, st)
	for _, id := range []string{truncated.ID, edited.ID, misplaced} {
		for _, obj := range []string{ManifestObject, ImageObject} {
			k := repo.ObjectKey(testCluster, id, obj)
			if !bytes.Equal(after[k], before[k]) {
				t.Errorf("%s changed", k)
			}
		}
	}
}

// readyVerified returns the READY backups of testCluster that Verify
// passes.
func readyVerified(t *testing.T, f *lifecycleFixture, repo Repo) []string {
	t.Helper()
	ctx := context.Background()
	l, err := Scan(ctx, repo, ListOptions{Filter: Filter{State: StateReady}, PublicKey: f.pub})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range l.Backups {
		if Verify(ctx, repo, m.ClusterID, m.ID, VerifyOptions{PublicKey: f.pub}) == nil {
			out = append(out, m.ID)
		}
	}
	return out
}

// TestPruneCorruptNewest: with one byte flipped in the newest backup's
// image, prune does not count it (it reports it and leaves it) and keeps
// the next one, which verifies; a second prune, later, still leaves it.
func TestPruneCorruptNewest(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	st := backuptest.FileStore(t)
	repo := Repo{Store: st, Prefix: testPrefix}
	old := f.create(t, st, 40, CreateOptions{})
	mid := f.create(t, st, 20, CreateOptions{})
	newest := f.create(t, st, 1, CreateOptions{})
	ikey := repo.ObjectKey(testCluster, newest.ID, ImageObject)
	img := readObject(t, st, ikey)
	img[len(img)/2] ^= 0x01
	putObject(t, st, ikey, img)

	po := PruneOptions{LifecycleOptions: f.opts(lifecycleNow), Policy: func(string) Policy { return Policy{RetentionDays: 7, KeepLast: 1} }}
	for round, now := range []int{0, 30} {
		po.LifecycleOptions = f.opts(daysBefore(lifecycleNow, -now))
		acts, err := Prune(ctx, repo, po)
		if err == nil {
			t.Errorf("round %d: no error for the corrupt backup", round)
		}
		var corrupt bool
		for _, a := range acts {
			if a.BackupID == mid.ID && a.To != StateReady {
				t.Fatalf("round %d: %+v: the only good READY backup acted on", round, a)
			}
			if a.BackupID == newest.ID {
				corrupt = a.Reason == "corrupt: not counted" && a.From == StateReady && a.To == StateReady && strings.Contains(a.Error, ErrObjectHash.Error())
			}
		}
		if !corrupt {
			t.Errorf("round %d: %+v: want %s reported corrupt", round, acts, newest.ID)
		}
		if got := readyVerified(t, f, repo); len(got) != 1 || got[0] != mid.ID {
			t.Fatalf("round %d: READY backups that verify: %v, want %s", round, got, mid.ID)
		}
		if !bytes.Equal(readObject(t, st, ikey), img) {
			t.Fatalf("round %d: corrupt image changed", round)
		}
	}
	if d, err := Describe(ctx, repo, testCluster, old.ID); err != nil || d.State == StateReady {
		t.Errorf("old backup: %v, %v; want it expired", d, err)
	}
}

// getHookStore calls get before every Get.
type getHookStore struct {
	store.Store
	get func(key string)
}

func (s *getHookStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	s.get(key)
	return s.Store.Get(ctx, key)
}

// TestPruneRacingDelete: the backup prune checked and kept is deleted
// just after its check; prune then does not expire the older one, so a
// READY backup remains.
func TestPruneRacingDelete(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	base := backuptest.FileStore(t)
	old := f.create(t, base, 40, CreateOptions{})
	newest := f.create(t, base, 1, CreateOptions{})
	var once sync.Once
	st := &getHookStore{Store: base}
	st.get = func(key string) {
		if key == (Repo{Prefix: testPrefix}).ObjectKey(testCluster, newest.ID, ImageObject) {
			once.Do(func() {
				if _, err := Delete(ctx, Repo{Store: base, Prefix: testPrefix}, testCluster, newest.ID, f.opts(lifecycleNow)); err != nil {
					t.Error(err)
				}
			})
		}
	}
	repo := Repo{Store: st, Prefix: testPrefix}
	acts, err := Prune(ctx, repo, PruneOptions{LifecycleOptions: f.opts(lifecycleNow), Policy: func(string) Policy { return Policy{RetentionDays: 7, KeepLast: 1} }})
	if err == nil || len(acts) != 1 || acts[0].BackupID != old.ID || !strings.Contains(acts[0].Error, "no newer checked READY backup remains") {
		t.Fatalf("Prune = %+v, %v; want the expiry of %s refused", acts, err, old.ID)
	}
	if got := readyVerified(t, f, repo); len(got) != 1 || got[0] != old.ID {
		t.Fatalf("READY backups that verify: %v, want %s", got, old.ID)
	}
}

func ids(ms []*Manifest) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.ID)
	}
	return out
}
