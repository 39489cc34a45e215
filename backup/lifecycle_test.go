package backup

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/backup/backuptest"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// lifecycleNow is the lifecycle tests' clock: backups are made some days
// before it and pruned at it.
var lifecycleNow = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

func daysBefore(t time.Time, days int) time.Time { return t.Add(-time.Duration(days) * 24 * time.Hour) }

// lifecycleFixture is one HSM member and the service's keys.
type lifecycleFixture struct {
	member *client.Client
	kr     *wrap.Keyring
	pub    ed25519.PublicKey
	priv   ed25519.PrivateKey
}

func newLifecycleFixture(tb testing.TB) *lifecycleFixture {
	tb.Helper()
	kr, pub, priv := backuptest.Keys(tb)
	return &lifecycleFixture{member: newMember(tb, 0), kr: kr, pub: pub, priv: priv}
}

// create makes a real backup under testPrefix, ageDays before lifecycleNow.
func (f *lifecycleFixture) create(tb testing.TB, st store.Store, ageDays int, o CreateOptions) *Manifest {
	tb.Helper()
	o.Recipients, o.SigningKey = []wrap.Recipient{f.kr}, f.priv
	o.Now = fixedClock(daysBefore(lifecycleNow, ageDays))
	m, err := Create(context.Background(), f.member, Repo{Store: st, Prefix: testPrefix}, o)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

func (f *lifecycleFixture) opts(now time.Time) LifecycleOptions {
	return LifecycleOptions{SigningKey: f.priv, Now: fixedClock(now)}
}

func manifestBytes(t *testing.T, st store.Store, id string) []byte {
	t.Helper()
	return readObject(t, st, Repo{Prefix: testPrefix}.ObjectKey(testCluster, id, ManifestObject))
}

func listIDs(t *testing.T, st store.Store, f Filter) []string {
	t.Helper()
	ms, err := List(context.Background(), Repo{Store: st, Prefix: testPrefix}, f)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.ID)
	}
	return ids
}

// countingStore counts the Puts that reach st.
func countingStore(st store.Store, puts *atomic.Int64) *mockStore {
	return &mockStore{Store: st, put: func(ctx context.Context, key string, r io.Reader, opts store.PutOptions) error {
		puts.Add(1)
		return st.Put(ctx, key, r, opts)
	}}
}

// TestDeleteRestoreDeleted: Delete moves a READY backup to PENDING_DELETION
// at the clock's time, signed and still verifiable; RestoreDeleted moves it
// back to the manifest it had; other transitions are ErrState.
func TestDeleteRestoreDeleted(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	st := backuptest.FileStore(t)
	m := f.create(t, st, 3, CreateOptions{Tags: map[string]string{"env": "prod"}})
	other := f.create(t, st, 1, CreateOptions{})
	created := manifestBytes(t, st, m.ID)

	clock := lifecycleNow.Add(1234 * time.Millisecond)
	d, err := Delete(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, f.opts(clock))
	if err != nil {
		t.Fatal(err)
	}
	if d.State != StatePendingDeletion || !d.DeletionRequested.Equal(clock) || d.DeletionRequested.Location() != time.UTC {
		t.Fatalf("after Delete: state %s, deletion requested %v; want %s, %v", d.State, d.DeletionRequested, StatePendingDeletion, clock)
	}
	if want, _ := d.Marshal(); !bytes.Equal(manifestBytes(t, st, m.ID), want) {
		t.Fatal("stored manifest differs from the one Delete returned")
	}
	stored, err := Describe(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.State != StatePendingDeletion || !stored.DeletionRequested.Equal(clock) || stored.Tags["env"] != "prod" {
		t.Fatalf("stored manifest %+v", stored)
	}
	if got := listIDs(t, st, Filter{State: StatePendingDeletion}); !slices.Equal(got, []string{m.ID}) {
		t.Fatalf("List(PENDING_DELETION) = %v, want [%s]", got, m.ID)
	}
	if got := listIDs(t, st, Filter{State: StateReady}); !slices.Equal(got, []string{other.ID}) {
		t.Fatalf("List(READY) = %v, want [%s]", got, other.ID)
	}
	vo := VerifyOptions{PublicKey: f.pub, Identities: []wrap.Identity{f.kr}, Deep: true}
	if err := Verify(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, vo); err != nil {
		t.Fatalf("verify a PENDING_DELETION backup: %v", err)
	}

	pending := manifestBytes(t, st, m.ID)
	if _, err := Delete(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, f.opts(clock.Add(time.Hour))); !errors.Is(err, ErrState) {
		t.Fatalf("second Delete = %v, want ErrState", err)
	}
	if !bytes.Equal(manifestBytes(t, st, m.ID), pending) {
		t.Fatal("a refused Delete changed the manifest")
	}

	r, err := RestoreDeleted(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, f.opts(clock.Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	if r.State != StateReady || !r.DeletionRequested.IsZero() {
		t.Fatalf("after RestoreDeleted: state %s, deletion requested %v", r.State, r.DeletionRequested)
	}
	// Back to the manifest as created, byte for byte (Ed25519 signatures
	// are deterministic), with no deletion time in it.
	if got := manifestBytes(t, st, m.ID); !bytes.Equal(got, created) || bytes.Contains(got, []byte("deletion_requested")) {
		t.Fatalf("restored manifest differs from the one created:\n got %s\nwant %s", got, created)
	}
	if err := Verify(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, vo); err != nil {
		t.Fatalf("verify the restored backup: %v", err)
	}
	if got := listIDs(t, st, Filter{State: StatePendingDeletion}); len(got) != 0 {
		t.Fatalf("List(PENDING_DELETION) after restore = %v", got)
	}
	if _, err := RestoreDeleted(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, f.opts(clock)); !errors.Is(err, ErrState) {
		t.Fatalf("RestoreDeleted of a READY backup = %v, want ErrState", err)
	}
	if !bytes.Equal(manifestBytes(t, st, m.ID), created) {
		t.Fatal("a refused RestoreDeleted changed the manifest")
	}

	// Missing backups and keys.
	missing := "backup-20261124T180000Z-aaaaaaaaaa"
	if _, err := Delete(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, missing, f.opts(clock)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Delete of a missing backup = %v, want ErrNotFound", err)
	}
	if _, err := Delete(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, LifecycleOptions{}); err == nil {
		t.Fatal("Delete without a signing key succeeded")
	}
	if !bytes.Equal(manifestBytes(t, st, m.ID), created) {
		t.Fatal("a refused Delete changed the manifest")
	}
}

// TestLifecycleRefusesBadManifest: every change verifies the stored
// manifest first; one that does not verify is refused with ErrManifest and
// nothing is written, so that a forgery is never given a valid signature.
func TestLifecycleRefusesBadManifest(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	base := backuptest.FileStore(t)
	var puts atomic.Int64
	st := countingStore(base, &puts)
	_, _, otherPriv := backuptest.Keys(t)

	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, id string) []byte
	}{
		{"tag value byte flipped", func(t *testing.T, id string) []byte {
			b := manifestBytes(t, base, id)
			i := bytes.Index(b, []byte(`"env":"prod"`))
			if i < 0 {
				t.Fatalf("no tag in %s", b)
			}
			b[i+len(`"env":"p`)] ^= 0x01 // "prod" → "psod"
			if _, err := ParseManifest(b); err != nil {
				t.Fatalf("the tampered manifest must still parse: %v", err)
			}
			putObject(t, base, Repo{Prefix: testPrefix}.ObjectKey(testCluster, id, ManifestObject), b)
			return b
		}},
		{"re-signed with another key", func(t *testing.T, id string) []byte {
			return resign(t, Repo{Store: base, Prefix: testPrefix}, testCluster, id, otherPriv, func(m *Manifest) { m.Tags["env"] = "dev" })
		}},
		{"state changed and re-signed with another key", func(t *testing.T, id string) []byte {
			return resign(t, Repo{Store: base, Prefix: testPrefix}, testCluster, id, otherPriv, func(m *Manifest) {
				m.State, m.DeletionRequested = StatePendingDeletion, lifecycleNow
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := f.create(t, base, 2, CreateOptions{Tags: map[string]string{"env": "prod"}})
			tampered := tc.tamper(t, m.ID)
			puts.Store(0)
			opts := f.opts(lifecycleNow)
			for op, change := range map[string]func() error{
				"Delete": func() error {
					_, err := Delete(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, opts)
					return err
				},
				"RestoreDeleted": func() error {
					_, err := RestoreDeleted(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, opts)
					return err
				},
				"SetTags": func() error {
					_, err := SetTags(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, map[string]string{"owner": "ops"}, []string{"env"}, opts)
					return err
				},
				"SetNeverExpires": func() error {
					_, err := SetNeverExpires(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, true, opts)
					return err
				},
			} {
				if err := change(); !errors.Is(err, ErrManifest) {
					t.Errorf("%s = %v, want ErrManifest", op, err)
				}
				if got := manifestBytes(t, base, m.ID); !bytes.Equal(got, tampered) {
					t.Fatalf("%s changed the stored manifest:\n got %s\nwant %s", op, got, tampered)
				}
			}
			if n := puts.Load(); n != 0 {
				t.Fatalf("%d objects written", n)
			}
		})
	}
}

// TestSetTagsAndNeverExpires: tags are added, replaced and removed; a
// result that breaks the tag rules is refused without a write; pinning
// keeps an old backup from retention and unpinning gives it back.
func TestSetTagsAndNeverExpires(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	base := backuptest.FileStore(t)
	var puts atomic.Int64
	st := countingStore(base, &puts)
	opts := f.opts(lifecycleNow)
	m := f.create(t, base, 60, CreateOptions{Tags: map[string]string{"env": "prod", "team": "hsm"}, RetentionDays: 30})
	newest := f.create(t, base, 1, CreateOptions{})

	check := func(t *testing.T, got *Manifest, want map[string]string) {
		t.Helper()
		if !maps.Equal(got.Tags, want) {
			t.Fatalf("returned tags %v, want %v", got.Tags, want)
		}
		d, err := Describe(ctx, Repo{Store: base, Prefix: testPrefix}, testCluster, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Verify(f.pub); err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(d.Tags, want) {
			t.Fatalf("stored tags %v, want %v", d.Tags, want)
		}
		if b, _ := got.Marshal(); !bytes.Equal(b, manifestBytes(t, base, m.ID)) {
			t.Fatal("stored manifest differs from the returned one")
		}
	}

	got, err := SetTags(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, map[string]string{"env": "dev", "owner": "ops"}, []string{"team", "absent"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	check(t, got, map[string]string{"env": "dev", "owner": "ops"})
	if got := listIDs(t, base, Filter{Tags: map[string]string{"env": "dev"}}); !slices.Equal(got, []string{m.ID}) {
		t.Fatalf("List(env=dev) = %v", got)
	}
	got, err = SetTags(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, nil, []string{"env", "owner"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	check(t, got, nil)
	if bytes.Contains(manifestBytes(t, base, m.ID), []byte(`"tags"`)) {
		t.Fatal("a manifest without tags stores a tags member")
	}
	got, err = SetTags(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, map[string]string{"env": "prod"}, nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	check(t, got, map[string]string{"env": "prod"})

	tooMany := map[string]string{}
	for i := range MaxTags { // with "env", one over the limit
		tooMany["k"+strings.Repeat("x", i)] = "v"
	}
	for name, set := range map[string]map[string]string{
		"aws: prefix":              {"aws:x": "y"},
		"AWS: prefix":              {"AWS:x": "y"},
		"51 tags":                  tooMany,
		"bad character":            {"k": "a;b"},
		"value too long":           {"k": strings.Repeat("v", MaxTagValueLen+1)},
		"empty key":                {"": "v"},
		"valid tag with a bad one": {"ok": "fine", "aws:x": "y"},
	} {
		before := manifestBytes(t, base, m.ID)
		puts.Store(0)
		if _, err := SetTags(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, set, nil, opts); err == nil {
			t.Errorf("SetTags %s succeeded", name)
		}
		if n := puts.Load(); n != 0 || !bytes.Equal(manifestBytes(t, base, m.ID), before) {
			t.Fatalf("SetTags %s: %d writes, manifest changed %v", name, n, !bytes.Equal(manifestBytes(t, base, m.ID), before))
		}
	}
	// Exactly MaxTags is allowed.
	delete(tooMany, "k")
	if len(tooMany) != MaxTags-1 {
		t.Fatalf("fixture: %d tags", len(tooMany))
	}
	got, err = SetTags(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, tooMany, nil, opts)
	if err != nil || len(got.Tags) != MaxTags {
		t.Fatalf("SetTags to %d tags: %d, %v", MaxTags, len(got.Tags), err)
	}

	// Pin the 60-day-old backup: retention (its own 30 days) leaves it.
	prune := func() []PruneAction {
		t.Helper()
		acts, err := Prune(ctx, Repo{Store: base, Prefix: testPrefix}, PruneOptions{LifecycleOptions: opts, Policy: func(string) Policy { return Policy{RetentionDays: 30} }, DryRun: true})
		if err != nil {
			t.Fatal(err)
		}
		return acts
	}
	if acts := prune(); len(acts) != 1 || acts[0].BackupID != m.ID || acts[0].To != StatePendingDeletion {
		t.Fatalf("unpinned: prune plans %+v", acts)
	}
	got, err = SetNeverExpires(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, true, opts)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Describe(ctx, Repo{Store: base, Prefix: testPrefix}, testCluster, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !got.NeverExpires || !d.NeverExpires || d.RetentionDays != 0 || d.Verify(f.pub) != nil || len(d.Tags) != MaxTags {
		t.Fatalf("after SetNeverExpires(true): %+v", d)
	}
	if acts := prune(); len(acts) != 0 {
		t.Fatalf("pinned: prune plans %+v", acts)
	}
	got, err = SetNeverExpires(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, false, opts)
	if err != nil {
		t.Fatal(err)
	}
	d, err = Describe(ctx, Repo{Store: base, Prefix: testPrefix}, testCluster, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.NeverExpires || d.NeverExpires || d.Verify(f.pub) != nil {
		t.Fatalf("after SetNeverExpires(false): %+v", d)
	}
	if acts := prune(); len(acts) != 1 || acts[0].BackupID != m.ID || acts[0].To != StatePendingDeletion {
		t.Fatalf("unpinned again: prune plans %+v", acts)
	}
	if d, err := Describe(ctx, Repo{Store: base, Prefix: testPrefix}, testCluster, newest.ID); err != nil || d.State != StateReady {
		t.Fatalf("newest: %v", err)
	}
}

// backupSpec is one backup of a Prune test case.
type backupSpec struct {
	age       int  // days before lifecycleNow it was made
	retention int  // its own retention_days (0: the policy's)
	never     bool // never expires
	deleted   int  // > 0: Delete'd this many days before lifecycleNow
}

// TestPrune runs Prune at a fixed clock over real backups, a dry run
// first: the dry run must plan exactly the wanted actions and change
// nothing, the real run must make the same ones, and a second run none.
func TestPrune(t *testing.T) {
	const (
		R  = StateReady
		PD = StatePendingDeletion
		D  = StateDeleted
	)
	ctx := context.Background()
	f := newLifecycleFixture(t)
	for _, tc := range []struct {
		name    string
		policy  Policy
		backups []backupSpec
		want    []State // after the prune, one per backup
	}{
		{"retention 30 keep-last 2",
			Policy{RetentionDays: 30, KeepLast: 2},
			[]backupSpec{{age: 60}, {age: 50}, {age: 40}, {age: 10}, {age: 1}},
			[]State{PD, PD, PD, R, R}},
		{"keep-last 4 keeps two past retention",
			Policy{RetentionDays: 30, KeepLast: 4},
			[]backupSpec{{age: 60}, {age: 50}, {age: 40}, {age: 10}, {age: 1}},
			[]State{PD, R, R, R, R}},
		{"keep-last covers old backups",
			Policy{RetentionDays: 30, KeepLast: 2},
			[]backupSpec{{age: 60}, {age: 50}, {age: 40}},
			[]State{PD, R, R}},
		{"never-expires backup kept",
			Policy{RetentionDays: 30, KeepLast: 2},
			[]backupSpec{{age: 60, never: true}, {age: 50}, {age: 40}, {age: 10}, {age: 1}},
			[]State{R, PD, PD, R, R}},
		{"newest READY kept when all are past retention, keep-last 0",
			Policy{RetentionDays: 7, KeepLast: 0},
			[]backupSpec{{age: 60}, {age: 50}, {age: 40}, {age: 10}},
			[]State{PD, PD, PD, R}},
		{"only READY backups count as newest",
			Policy{RetentionDays: 7, KeepLast: 0},
			[]backupSpec{{age: 60}, {age: 40}, {age: 1, deleted: 1}},
			[]State{PD, R, PD}},
		{"never-expires backups count among the newest",
			Policy{RetentionDays: 7, KeepLast: 1},
			[]backupSpec{{age: 60}, {age: 40}, {age: 10, never: true}},
			[]State{PD, PD, R}},
		{"own retention overrides the policy's",
			Policy{RetentionDays: 30, KeepLast: 1},
			[]backupSpec{{age: 60}, {age: 40, retention: 90}, {age: 10, retention: 7}, {age: 1}},
			[]State{PD, R, PD, R}},
		{"policy retention 0 expires nothing by age",
			Policy{RetentionDays: 0, KeepLast: 0},
			[]backupSpec{{age: 300}, {age: 100, retention: 7}, {age: 60}, {age: 1}},
			[]State{R, PD, R, R}},
		{"retention boundary: exactly 30 days old stays",
			Policy{RetentionDays: 30, KeepLast: 1},
			[]backupSpec{{age: 31}, {age: 30}, {age: 1}},
			[]State{PD, R, R}},
		{"pending deletion: 6 days stays, 7 and more purged",
			Policy{},
			[]backupSpec{{age: 40, deleted: 30}, {age: 30, deleted: 7}, {age: 20, deleted: 6}, {age: 1}},
			[]State{D, D, PD, R}},
		{"purge and expiry together",
			Policy{RetentionDays: 30, KeepLast: 1},
			[]backupSpec{{age: 90, deleted: 8}, {age: 60}, {age: 50, never: true, deleted: 2}, {age: 1}},
			[]State{D, PD, PD, R}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.want) != len(tc.backups) {
				t.Fatal("bad test case")
			}
			st := backuptest.FileStore(t)
			ms := make([]*Manifest, len(tc.backups))
			var want []PruneAction
			for i, b := range tc.backups {
				m := f.create(t, st, b.age, CreateOptions{RetentionDays: b.retention, NeverExpires: b.never})
				if b.deleted > 0 {
					var err error
					if m, err = Delete(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, f.opts(daysBefore(lifecycleNow, b.deleted))); err != nil {
						t.Fatal(err)
					}
				}
				ms[i] = m
				if m.State != tc.want[i] {
					want = append(want, PruneAction{ClusterID: testCluster, BackupID: m.ID, From: m.State, To: tc.want[i]})
				}
			}
			slices.SortFunc(want, func(a, b PruneAction) int { return strings.Compare(a.BackupID, b.BackupID) })
			po := PruneOptions{LifecycleOptions: f.opts(lifecycleNow), DryRun: true, Policy: func(c string) Policy {
				if c != testCluster {
					t.Errorf("policy asked for cluster %q", c)
				}
				return tc.policy
			}}

			before := snapshot(t, st)
			dry, err := Prune(ctx, Repo{Store: st, Prefix: testPrefix}, po)
			if err != nil {
				t.Fatalf("dry run: %v", err)
			}
			checkActions(t, "dry run", dry, want)
			if after := snapshot(t, st); !maps.EqualFunc(before, after, bytes.Equal) {
				t.Fatal("the dry run changed the store")
			}

			po.DryRun = false
			got, err := Prune(ctx, Repo{Store: st, Prefix: testPrefix}, po)
			if err != nil {
				t.Fatalf("prune: %v", err)
			}
			if !slices.Equal(got, dry) {
				t.Fatalf("prune made\n%+v\nthe dry run planned\n%+v", got, dry)
			}
			for i, m := range ms {
				checkPruned(t, f, st, before, m, tc.want[i])
			}

			again, err := Prune(ctx, Repo{Store: st, Prefix: testPrefix}, po)
			if err != nil || len(again) != 0 {
				t.Fatalf("second prune at the same clock: %+v, %v", again, err)
			}
		})
	}
}

// checkActions compares actions, all of which must have succeeded and
// given a reason, with want (whose reasons are ignored).
func checkActions(t *testing.T, what string, got, want []PruneAction) {
	t.Helper()
	g := slices.Clone(got)
	for i := range g {
		if g[i].Reason == "" || g[i].Error != "" {
			t.Errorf("%s: action %+v: no reason, or an error", what, g[i])
		}
		g[i].Reason = ""
	}
	if !slices.Equal(g, want) {
		t.Fatalf("%s: actions\n%+v\nwant\n%+v", what, g, want)
	}
}

// checkPruned checks backup m (as it was before the prune, whose store
// snapshot is before) after a prune that was to leave it in state want.
func checkPruned(t *testing.T, f *lifecycleFixture, st store.Store, before map[string][]byte, m *Manifest, want State) {
	t.Helper()
	ctx := context.Background()
	d, err := Describe(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d.State != want {
		t.Fatalf("%s: state %s, want %s", m.ID, d.State, want)
	}
	if err := d.Verify(f.pub); err != nil {
		t.Fatalf("%s: %v", m.ID, err)
	}
	mkey := Repo{Prefix: testPrefix}.ObjectKey(testCluster, m.ID, ManifestObject)
	ikey := Repo{Prefix: testPrefix}.ObjectKey(testCluster, m.ID, ImageObject)
	switch {
	case want == StateDeleted:
		if !d.DeletionRequested.Equal(m.DeletionRequested) {
			t.Errorf("%s: deletion time %v, was %v", m.ID, d.DeletionRequested, m.DeletionRequested)
		}
		if _, err := st.Stat(ctx, ikey); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s: image of a DELETED backup: Stat = %v, want ErrNotFound", m.ID, err)
		}
		opts := f.opts(lifecycleNow)
		if _, err := RestoreDeleted(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, opts); !errors.Is(err, ErrState) {
			t.Errorf("%s: RestoreDeleted of a DELETED backup = %v, want ErrState", m.ID, err)
		}
		if _, err := SetTags(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, map[string]string{"k": "v"}, nil, opts); !errors.Is(err, ErrState) {
			t.Errorf("%s: SetTags on a DELETED backup = %v, want ErrState", m.ID, err)
		}
		if _, err := Delete(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, opts); !errors.Is(err, ErrState) {
			t.Errorf("%s: Delete of a DELETED backup = %v, want ErrState", m.ID, err)
		}
		if err := Verify(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, VerifyOptions{PublicKey: f.pub}); !errors.Is(err, ErrState) {
			t.Errorf("%s: Verify of a DELETED backup = %v, want ErrState", m.ID, err)
		}
	case want == m.State: // left alone
		if !bytes.Equal(readObject(t, st, mkey), before[mkey]) || !bytes.Equal(readObject(t, st, ikey), before[ikey]) {
			t.Errorf("%s: changed", m.ID)
		}
	default: // READY → PENDING_DELETION
		if !d.DeletionRequested.Equal(lifecycleNow) {
			t.Errorf("%s: deletion time %v, want the clock's %v", m.ID, d.DeletionRequested, lifecycleNow)
		}
		if !bytes.Equal(readObject(t, st, ikey), before[ikey]) {
			t.Errorf("%s: image changed", m.ID)
		}
	}
	if want != StateDeleted {
		if err := Verify(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, VerifyOptions{PublicKey: f.pub}); err != nil {
			t.Errorf("%s: %v", m.ID, err)
		}
	}
}

// TestPruneInterruptedPurge: a purge whose image delete fails leaves a
// DELETED manifest (never a restorable backup without its image); the
// next prune removes the image.
func TestPruneInterruptedPurge(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	base := backuptest.FileStore(t)
	var failDelete atomic.Bool
	st := &mockStore{Store: base, del: func(ctx context.Context, key string) error {
		if strings.HasSuffix(key, "/"+ImageObject) && failDelete.CompareAndSwap(true, false) {
			return errInjected
		}
		return base.Delete(ctx, key)
	}}
	old := f.create(t, base, 30, CreateOptions{})
	if _, err := Delete(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, old.ID, f.opts(daysBefore(lifecycleNow, 8))); err != nil {
		t.Fatal(err)
	}
	f.create(t, base, 1, CreateOptions{})
	po := PruneOptions{LifecycleOptions: f.opts(lifecycleNow), Policy: func(string) Policy { return Policy{RetentionDays: 30} }}
	imageKey := Repo{Prefix: testPrefix}.ObjectKey(testCluster, old.ID, ImageObject)
	manifestKey := Repo{Prefix: testPrefix}.ObjectKey(testCluster, old.ID, ManifestObject)

	failDelete.Store(true)
	acts, err := Prune(ctx, Repo{Store: st, Prefix: testPrefix}, po)
	if err == nil {
		t.Fatal("prune with a failed image delete returned no error")
	}
	if len(acts) != 1 || acts[0].BackupID != old.ID || acts[0].From != StatePendingDeletion || acts[0].To != StateDeleted ||
		!strings.Contains(acts[0].Error, errInjected.Error()) {
		t.Fatalf("actions %+v", acts)
	}
	d, err := Describe(ctx, Repo{Store: base, Prefix: testPrefix}, testCluster, old.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d.State != StateDeleted || d.Verify(f.pub) != nil {
		t.Fatalf("after the failed purge: state %s, verify %v", d.State, d.Verify(f.pub))
	}
	if _, err := base.Stat(ctx, imageKey); err != nil {
		t.Fatalf("image after the failed delete: %v", err)
	}
	if _, err := RestoreDeleted(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, old.ID, po.LifecycleOptions); !errors.Is(err, ErrState) {
		t.Fatalf("RestoreDeleted of a half-purged backup = %v, want ErrState", err)
	}
	deleted := readObject(t, base, manifestKey)

	wantNext := []PruneAction{{ClusterID: testCluster, BackupID: old.ID, From: StateDeleted, To: StateDeleted}}
	po.DryRun = true
	dry, err := Prune(ctx, Repo{Store: st, Prefix: testPrefix}, po)
	if err != nil {
		t.Fatal(err)
	}
	checkActions(t, "dry run", dry, wantNext)
	if _, err := base.Stat(ctx, imageKey); err != nil {
		t.Fatalf("image after the dry run: %v", err)
	}

	po.DryRun = false
	acts, err = Prune(ctx, Repo{Store: st, Prefix: testPrefix}, po)
	if err != nil {
		t.Fatal(err)
	}
	checkActions(t, "next prune", acts, wantNext)
	if _, err := base.Stat(ctx, imageKey); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("image after the next prune: Stat = %v, want ErrNotFound", err)
	}
	if !bytes.Equal(readObject(t, base, manifestKey), deleted) {
		t.Fatal("the next prune rewrote the DELETED manifest")
	}
	if acts, err := Prune(ctx, Repo{Store: st, Prefix: testPrefix}, po); err != nil || len(acts) != 0 {
		t.Fatalf("third prune: %+v, %v", acts, err)
	}
}

// TestPruneLeavesBadManifests: a manifest in the listing whose signature
// does not verify is reported once, with an error, and left as it is
// (image too), while the others are pruned.
func TestPruneLeavesBadManifests(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	st := backuptest.FileStore(t)
	_, _, otherPriv := backuptest.Keys(t)

	forgedReady := f.create(t, st, 60, CreateOptions{})
	resign(t, Repo{Store: st, Prefix: testPrefix}, testCluster, forgedReady.ID, otherPriv, nil)
	flipped := f.create(t, st, 55, CreateOptions{Tags: map[string]string{"env": "prod"}})
	b := manifestBytes(t, st, flipped.ID)
	i := bytes.Index(b, []byte(`"prod"`))
	b[i+2] ^= 0x01
	putObject(t, st, Repo{Prefix: testPrefix}.ObjectKey(testCluster, flipped.ID, ManifestObject), b)
	forgedPending := f.create(t, st, 50, CreateOptions{})
	resign(t, Repo{Store: st, Prefix: testPrefix}, testCluster, forgedPending.ID, otherPriv, func(m *Manifest) {
		m.State, m.DeletionRequested = StatePendingDeletion, daysBefore(lifecycleNow, 10)
	})
	forgedDeleted := f.create(t, st, 48, CreateOptions{}) // its image still there
	resign(t, Repo{Store: st, Prefix: testPrefix}, testCluster, forgedDeleted.ID, otherPriv, func(m *Manifest) {
		m.State, m.DeletionRequested = StateDeleted, daysBefore(lifecycleNow, 20)
	})
	expired := f.create(t, st, 45, CreateOptions{})
	f.create(t, st, 1, CreateOptions{})
	bad := []*Manifest{forgedReady, flipped, forgedPending, forgedDeleted}
	fromState := []State{StateReady, StateReady, StatePendingDeletion, StateDeleted}

	before := snapshot(t, st)
	po := PruneOptions{LifecycleOptions: f.opts(lifecycleNow), Policy: func(string) Policy { return Policy{RetentionDays: 30, KeepLast: 1} }}
	check := func(what string, acts []PruneAction, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: no error", what)
		}
		if len(acts) != len(bad)+1 {
			t.Fatalf("%s: %d actions, want %d: %+v", what, len(acts), len(bad)+1, acts)
		}
		for i, m := range bad {
			a := acts[i]
			if a.BackupID != m.ID || a.From != fromState[i] || a.To != fromState[i] || !strings.Contains(a.Error, ErrManifest.Error()) {
				t.Errorf("%s: action %+v, want %s left %s with a manifest error", what, a, m.ID, fromState[i])
			}
		}
		if a := acts[len(bad)]; a.BackupID != expired.ID || a.To != StatePendingDeletion || a.Error != "" {
			t.Errorf("%s: action %+v, want %s to PENDING_DELETION", what, a, expired.ID)
		}
	}
	po.DryRun = true
	dry, err := Prune(ctx, Repo{Store: st, Prefix: testPrefix}, po)
	check("dry run", dry, err)
	po.DryRun = false
	acts, err := Prune(ctx, Repo{Store: st, Prefix: testPrefix}, po)
	check("prune", acts, err)
	if !slices.Equal(acts, dry) {
		t.Errorf("prune made\n%+v\nthe dry run planned\n%+v", acts, dry)
	}
	after := snapshot(t, st)
	for _, m := range bad {
		for _, obj := range []string{ManifestObject, ImageObject} {
			k := Repo{Prefix: testPrefix}.ObjectKey(testCluster, m.ID, obj)
			if !bytes.Equal(after[k], before[k]) {
				t.Errorf("%s changed", k)
			}
		}
	}
	if d, err := Describe(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, expired.ID); err != nil || d.State != StatePendingDeletion {
		t.Fatalf("expired backup: %v", err)
	}
}

func TestPolicyValidate(t *testing.T) {
	for _, tc := range []struct {
		p  Policy
		ok bool
	}{
		{Policy{}, true},
		{Policy{RetentionDays: 1}, false},
		{Policy{RetentionDays: 6}, false},
		{Policy{RetentionDays: 7}, true},
		{Policy{RetentionDays: 379}, true},
		{Policy{RetentionDays: 380}, false},
		{Policy{RetentionDays: -1}, false},
		{Policy{RetentionDays: 30, KeepLast: 0}, true},
		{Policy{RetentionDays: 30, KeepLast: 1000}, true},
		{Policy{RetentionDays: 30, KeepLast: -1}, false},
	} {
		if err := tc.p.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v.Validate() = %v, want ok %v", tc.p, err, tc.ok)
		}
	}
}

// TestPruneOptions: Prune needs a signing key and a policy, refuses an
// invalid policy before changing anything, and prunes only the cluster
// asked for. The manifest is signed but has no image: Prune reads
// manifests only until it acts.
func TestPruneOptions(t *testing.T) {
	ctx := context.Background()
	st := backuptest.FileStore(t)
	priv := fixedKey()
	m := fixedManifest() // cluster-1, made 2026-11-24, retention 30 days
	if err := m.Sign(priv); err != nil {
		t.Fatal(err)
	}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	putObject(t, st, Repo{Prefix: testPrefix}.ObjectKey(m.ClusterID, m.ID, ManifestObject), b)
	putObject(t, st, Repo{Prefix: testPrefix}.ObjectKey(m.ClusterID, "backup-20250101T000000Z-aaaaaaaaaa", ImageObject), []byte("orphan"))
	later := m.Created.Add(400 * 24 * time.Hour)
	policy := func(string) Policy { return Policy{RetentionDays: 30} }
	before := snapshot(t, st)

	for name, po := range map[string]PruneOptions{
		"no signing key": {Policy: policy},
		"no policy":      {LifecycleOptions: LifecycleOptions{SigningKey: priv}},
		"invalid policy": {LifecycleOptions: LifecycleOptions{SigningKey: priv, Now: fixedClock(later)},
			Policy: func(string) Policy { return Policy{RetentionDays: 6} }},
		"bad cluster id": {LifecycleOptions: LifecycleOptions{SigningKey: priv, Now: fixedClock(later)}, Policy: policy, ClusterID: "../x"},
	} {
		if acts, err := Prune(ctx, Repo{Store: st, Prefix: testPrefix}, po); err == nil || len(acts) != 0 {
			t.Errorf("%s: Prune = %+v, %v", name, acts, err)
		}
	}
	acts, err := Prune(ctx, Repo{Store: st, Prefix: testPrefix}, PruneOptions{LifecycleOptions: LifecycleOptions{SigningKey: priv, Now: fixedClock(later)},
		Policy: policy, ClusterID: "cluster-2"})
	if err != nil || len(acts) != 0 {
		t.Errorf("prune of another cluster: %+v, %v", acts, err)
	}
	acts, err = Prune(ctx, Repo{Store: st, Prefix: "other-tenant/"}, PruneOptions{LifecycleOptions: LifecycleOptions{SigningKey: priv, Now: fixedClock(later)}, Policy: policy})
	if err != nil || len(acts) != 0 {
		t.Errorf("prune of another prefix: %+v, %v", acts, err)
	}
	if !maps.EqualFunc(before, snapshot(t, st), bytes.Equal) {
		t.Fatal("store changed")
	}
	// The only READY backup of its cluster stays however old, even with
	// keep-last 0.
	acts, err = Prune(ctx, Repo{Store: st, Prefix: testPrefix}, PruneOptions{LifecycleOptions: LifecycleOptions{SigningKey: priv, Now: fixedClock(later)},
		Policy: func(string) Policy { return Policy{RetentionDays: 7} }})
	if err != nil || len(acts) != 0 {
		t.Errorf("prune of the only backup: %+v, %v", acts, err)
	}
}

// TestPruneSameSecond: backups made within one second (their ids carry
// the time only to the second) are ordered by creation time, so the one
// kept as the newest is the newest, whatever the random part of the ids.
func TestPruneSameSecond(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	st := backuptest.FileStore(t)
	a := f.create(t, st, 40, CreateOptions{})
	b := f.create(t, st, 40, CreateOptions{})
	// Whichever id sorts first is made the later one.
	first, second := a, b
	if b.ID < a.ID {
		first, second = b, a
	}
	t0 := first.Created
	resign(t, Repo{Store: st, Prefix: testPrefix}, testCluster, first.ID, f.priv, func(m *Manifest) { m.Created = t0.Add(500 * time.Millisecond) })
	resign(t, Repo{Store: st, Prefix: testPrefix}, testCluster, second.ID, f.priv, func(m *Manifest) { m.Created = t0 })

	ms, err := List(ctx, Repo{Store: st, Prefix: testPrefix}, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].ID != second.ID || ms[1].ID != first.ID {
		t.Fatalf("List order %v, %v; want oldest first (%s, %s)", ms[0].ID, ms[1].ID, second.ID, first.ID)
	}
	actions, err := Prune(ctx, Repo{Store: st, Prefix: testPrefix}, PruneOptions{
		LifecycleOptions: f.opts(lifecycleNow),
		Policy:           func(string) Policy { return Policy{RetentionDays: 30} },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(actions) != 1 || actions[0].BackupID != second.ID || actions[0].To != StatePendingDeletion {
		t.Fatalf("actions %+v; want only the older %s expired", actions, second.ID)
	}
}

// TestConcurrentChangesNotLost: changes racing on one manifest each land
// (compare-and-swap on the store's ETag, then a fresh read), none
// overwriting another's.
func TestConcurrentChangesNotLost(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	st := backuptest.FileStore(t)
	m := f.create(t, st, 1, CreateOptions{})
	const writers = 4
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			_, errs[i] = SetTags(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, map[string]string{fmt.Sprintf("writer-%d", i): "x"}, nil, f.opts(lifecycleNow))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	got, err := Describe(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Tags) != writers {
		t.Fatalf("tags %v: %d of %d changes kept", got.Tags, len(got.Tags), writers)
	}
	if err := got.Verify(f.pub); err != nil {
		t.Fatal(err)
	}
}
