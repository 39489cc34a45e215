package backup

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/hsmbackup/hsmbackup/backup/backuptest"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/internal/miniotest"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/s3"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// TestMain stops the MinIO server the object-lock tests share, if one
// was started.
func TestMain(m *testing.M) { miniotest.Main(m) }

// s3Store returns the S3 store of a fresh bucket of the shared MinIO,
// made with object lock if locking, logged in as root: what an attacker
// holding the service's store credential holds too.
func s3Store(t *testing.T, locking bool) *s3.Store {
	t.Helper()
	srv := miniotest.Shared(t)
	st, err := s3.New(s3.Config{
		Bucket: srv.NewBucket(t, miniotest.BucketOptions{ObjectLocking: locking}), Endpoint: srv.URL(),
		Region: "us-east-1", Credentials: srv.Credentials(), MaxRetries: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// wantRetention fails t unless every version of the object at key has
// retention lock.
func wantRetention(t *testing.T, st *s3.Store, key string, lock *Lock) {
	t.Helper()
	ctx := context.Background()
	name := st.ObjectName(key)
	n := 0
	for v := range st.Client().ListObjects(ctx, st.Bucket(), minio.ListObjectsOptions{Prefix: name, WithVersions: true}) {
		if v.Err != nil {
			t.Fatal(v.Err)
		}
		if v.Key != name {
			continue
		}
		n++
		mode, until, err := st.Client().GetObjectRetention(ctx, st.Bucket(), name, v.VersionID)
		if err != nil || mode == nil || string(*mode) != string(lock.Mode) || until == nil || !until.Equal(lock.Until) {
			t.Errorf("%s version %s: retention %v until %v, %v; want %s until %v", key, v.VersionID, mode, until, err, lock.Mode, lock.Until)
		}
	}
	if n == 0 {
		t.Errorf("%s: no versions", key)
	}
}

// countingSource counts what Create asks of the member.
type countingSource struct {
	ImageSource
	calls atomic.Int32
}

func (s *countingSource) Health(ctx context.Context) (api.Health, error) {
	s.calls.Add(1)
	return s.ImageSource.Health(ctx)
}

func (s *countingSource) ExportImage(ctx context.Context) (hsmcore.ImageStream, error) {
	s.calls.Add(1)
	return s.ImageSource.ExportImage(ctx)
}

// TestCreateLocked is the attack object lock is for, against a real MinIO
// bucket with object lock: a backup made with a COMPLIANCE lock stores
// its image and manifest under it, until its creation plus the days; a
// Delete through the store, as anyone holding the store credential could
// send, fails with ErrLocked and the backup still verifies. Lifecycle
// changes still work: each new version of the manifest is locked too.
func TestCreateLocked(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	st := s3Store(t, true)
	repo := Repo{Store: st, Prefix: testPrefix}
	created := time.Now().UTC()
	m, err := Create(ctx, f.member, repo, CreateOptions{Recipients: []wrap.Recipient{f.kr}, SigningKey: f.priv,
		RetentionDays: 7, Lock: ObjectLock{Mode: store.Compliance, Days: 30}, Now: fixedClock(created)})
	if err != nil {
		t.Fatal(err)
	}
	want := created.Round(0).Add(30 * 24 * time.Hour)
	if m.Lock == nil || m.Lock.Mode != store.Compliance || m.Lock.Until.Before(want) || m.Lock.Until.Sub(want) >= time.Second ||
		!m.Lock.Until.Equal(m.Lock.Until.Truncate(time.Second)) {
		t.Fatalf("manifest lock %+v, want COMPLIANCE until %v rounded up to a second", m.Lock, want)
	}
	if d, err := Describe(ctx, repo, testCluster, m.ID); err != nil || d.Lock == nil || *d.Lock != *m.Lock {
		t.Fatalf("stored manifest's lock: %+v, %v", d, err)
	}
	imageKey, manifestKey := repo.ObjectKey(testCluster, m.ID, ImageObject), repo.ObjectKey(testCluster, m.ID, ManifestObject)
	wantRetention(t, st, imageKey, m.Lock)
	wantRetention(t, st, manifestKey, m.Lock)

	// The attacker's deletes fail, and leave the backup whole.
	for _, key := range []string{imageKey, manifestKey} {
		if err := st.Delete(ctx, key); !errors.Is(err, store.ErrLocked) {
			t.Errorf("delete %s: %v, want ErrLocked", key, err)
		}
	}
	vopts := VerifyOptions{PublicKey: f.pub, Identities: []wrap.Identity{f.kr}}
	if err := Verify(ctx, repo, testCluster, m.ID, vopts); err != nil {
		t.Fatalf("after the refused deletes: %v", err)
	}
	// Nor can a plain overwrite hide it: it adds a version on top, and
	// the locked one stays (an attacker cannot remove the new one either
	// without the old one coming back).

	// Lifecycle changes rewrite the manifest: each version is locked.
	lo := f.opts(time.Now())
	if _, err := Delete(ctx, repo, testCluster, m.ID, lo); err != nil {
		t.Fatal(err)
	}
	if _, err := SetTags(ctx, repo, testCluster, m.ID, map[string]string{"case": "ransom"}, nil, lo); err != nil {
		t.Fatal(err)
	}
	back, err := RestoreDeleted(ctx, repo, testCluster, m.ID, lo)
	if err != nil {
		t.Fatal(err)
	}
	if back.State != StateReady || back.Tags["case"] != "ransom" || *back.Lock != *m.Lock {
		t.Fatalf("after the changes: %+v", back)
	}
	wantRetention(t, st, manifestKey, m.Lock)
	if err := st.Delete(ctx, manifestKey); !errors.Is(err, store.ErrLocked) {
		t.Errorf("delete the rewritten manifest: %v, want ErrLocked", err)
	}
	if err := Verify(ctx, repo, testCluster, m.ID, vopts); err != nil {
		t.Fatal(err)
	}
}

// TestPruneLocked: past its retention, a locked backup is not deleted:
// prune (its clock moved on 10 days, within the 30-day lock) reports it
// Locked, with the date, and goes on with the others; it is no failure.
// A locked backup deleted by hand is likewise not purged after its 7
// days, while an unlocked one is. A dry run reports the same.
func TestPruneLocked(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	st := s3Store(t, true)
	repo := Repo{Store: st, Prefix: testPrefix}
	t0 := time.Now().UTC()
	mk := func(at time.Time, lock ObjectLock) *Manifest {
		t.Helper()
		m, err := Create(ctx, f.member, repo, CreateOptions{Recipients: []wrap.Recipient{f.kr}, SigningKey: f.priv, Lock: lock, Now: fixedClock(at)})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	locked := mk(t0, ObjectLock{Mode: store.Governance, Days: 30})
	free := mk(t0.Add(time.Second), ObjectLock{})
	newest := mk(t0.Add(2*time.Second), ObjectLock{Mode: store.Compliance, Days: 30})
	policy := func(string) Policy { return Policy{RetentionDays: 7} }
	prune := func(at time.Time, dry bool) map[string]PruneAction {
		t.Helper()
		actions, err := Prune(ctx, repo, PruneOptions{LifecycleOptions: f.opts(at), Policy: policy, DryRun: dry})
		if err != nil {
			t.Fatalf("prune at +%s (dry run %t): %v; actions %+v", at.Sub(t0), dry, err, actions)
		}
		got := map[string]PruneAction{}
		for _, a := range actions {
			got[a.BackupID] = a
		}
		return got
	}
	state := func(id string) State {
		t.Helper()
		m, err := Describe(ctx, repo, testCluster, id)
		if err != nil {
			t.Fatal(err)
		}
		return m.State
	}

	day10 := t0.Add(10 * 24 * time.Hour)
	for _, dry := range []bool{true, false} {
		got := prune(day10, dry)
		if len(got) != 2 {
			t.Fatalf("dry run %t: actions %+v, want the two older backups'", dry, got)
		}
		a := got[locked.ID]
		if !a.Locked || !a.LockedUntil.Equal(locked.Lock.Until) || a.Error != "" || a.From != StateReady || a.To != StatePendingDeletion {
			t.Errorf("dry run %t: action on the locked backup %+v, want Locked until %v", dry, a, locked.Lock.Until)
		}
		if !strings.Contains(a.Reason, "10 days old, retention 7 days") || a.LockText() != "locked until "+locked.Lock.Until.Format(time.RFC3339) {
			t.Errorf("dry run %t: reason %q, lock %q", dry, a.Reason, a.LockText())
		}
		if b := got[free.ID]; b.Locked || b.Error != "" || b.To != StatePendingDeletion {
			t.Errorf("dry run %t: action on the unlocked backup %+v", dry, b)
		}
	}
	if s := state(locked.ID); s != StateReady {
		t.Errorf("locked backup is %s after prune, want READY", s)
	}
	if s := state(free.ID); s != StatePendingDeletion {
		t.Errorf("unlocked backup is %s after prune, want PENDING_DELETION", s)
	}
	if s := state(newest.ID); s != StateReady {
		t.Errorf("newest is %s", s)
	}

	// Deleted by hand on day 10, the locked backup is due to be purged on
	// day 17, as the unlocked one: only the unlocked one is.
	if _, err := Delete(ctx, repo, testCluster, locked.ID, f.opts(day10)); err != nil {
		t.Fatal(err)
	}
	day18 := t0.Add(18 * 24 * time.Hour)
	for _, dry := range []bool{true, false} {
		got := prune(day18, dry)
		a := got[locked.ID]
		if !a.Locked || !a.LockedUntil.Equal(locked.Lock.Until) || a.Error != "" || a.From != StatePendingDeletion || a.To != StateDeleted {
			t.Errorf("dry run %t: purge of the locked backup %+v, want Locked", dry, a)
		}
		if b := got[free.ID]; b.Locked || b.Error != "" || b.To != StateDeleted {
			t.Errorf("dry run %t: purge of the unlocked backup %+v", dry, b)
		}
	}
	if s := state(locked.ID); s != StatePendingDeletion {
		t.Errorf("locked backup is %s after the purge, want PENDING_DELETION (restorable)", s)
	}
	if _, err := st.Stat(ctx, repo.ObjectKey(testCluster, locked.ID, ImageObject)); err != nil {
		t.Errorf("the locked backup's image: %v", err)
	}
	if s := state(free.ID); s != StateDeleted {
		t.Errorf("unlocked backup is %s, want DELETED", s)
	}
	if _, err := st.Stat(ctx, repo.ObjectKey(testCluster, free.ID, ImageObject)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the unlocked backup's image after the purge: %v, want ErrNotFound", err)
	}
	// The locked one can still come back.
	if _, err := RestoreDeleted(ctx, repo, testCluster, locked.ID, f.opts(day18)); err != nil {
		t.Fatal(err)
	}
}

// TestLockRefused: on a store that cannot lock (the file store, an S3
// bucket made without object lock) Create with a lock fails before it
// asks the member anything, with ErrUnsupported, and stores nothing.
func TestLockRefused(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	for name, st := range map[string]store.Store{"file": backuptest.FileStore(t), "s3 without object lock": s3Store(t, false)} {
		src := &countingSource{ImageSource: f.member}
		_, err := Create(ctx, src, Repo{Store: st}, CreateOptions{Recipients: []wrap.Recipient{f.kr}, SigningKey: f.priv,
			Lock: ObjectLock{Mode: store.Compliance, Days: 7}})
		if !errors.Is(err, store.ErrUnsupported) {
			t.Errorf("%s: %v, want ErrUnsupported", name, err)
		}
		if !strings.Contains(err.Error(), "cannot lock objects") && !strings.Contains(err.Error(), "has no object lock") {
			t.Errorf("%s: the error does not say the store cannot lock: %v", name, err)
		}
		if n := src.calls.Load(); n != 0 {
			t.Errorf("%s: %d calls to the member before the refusal", name, n)
		}
		if keys := allKeys(t, st); len(keys) != 0 {
			t.Errorf("%s: objects left: %q", name, keys)
		}
	}
	// And a lock shorter than the backup's own retention is refused.
	_, err := Create(ctx, f.member, Repo{Store: s3Store(t, true)}, CreateOptions{Recipients: []wrap.Recipient{f.kr}, SigningKey: f.priv,
		RetentionDays: 30, Lock: ObjectLock{Mode: store.Compliance, Days: 7}})
	if err == nil || !strings.Contains(err.Error(), "shorter than the backup's retention") {
		t.Errorf("a 7-day lock on a 30-day backup: %v", err)
	}
}

// TestLockedLeftovers: a backup whose manifest write failed leaves its
// locked image behind, and says so; prune reports the stray image as
// locked (with the store's date), not as a failure. A delete refused with
// ErrLocked that no check foresaw (a lock the manifest does not record,
// from a store that does not report it) is Locked too.
func TestLockedLeftovers(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	st := s3Store(t, true)
	failing := &mockStore{Store: st}
	failing.put = func(ctx context.Context, key string, r io.Reader, opts store.PutOptions) error {
		if strings.HasSuffix(key, "/"+ManifestObject) {
			return errInjected
		}
		return st.Put(ctx, key, r, opts)
	}
	// mockStore hides the ObjectLocker: reach it as a decorator would.
	repo := Repo{Store: &lockerStore{mockStore: failing, locker: st}}
	_, err := Create(ctx, f.member, repo, CreateOptions{Recipients: []wrap.Recipient{f.kr}, SigningKey: f.priv,
		Lock: ObjectLock{Mode: store.Governance, Days: 1}})
	if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), "stays until its object lock ends") {
		t.Fatalf("create with a failing manifest write: %v", err)
	}
	orphans, err := Orphans(ctx, Repo{Store: st}, "", time.Now().Add(time.Minute))
	if err != nil || len(orphans) != 1 || orphans[0].Reason != "image object without a manifest" {
		t.Fatalf("orphans %+v, %v; want the locked image", orphans, err)
	}
	actions, err := Prune(ctx, Repo{Store: st}, PruneOptions{LifecycleOptions: f.opts(time.Now()), Policy: func(string) Policy { return Policy{} },
		OrphanGrace: NoOrphanGrace})
	if err != nil || len(actions) != 1 || !actions[0].Locked || actions[0].Object != orphans[0].Key || actions[0].Error != "" ||
		actions[0].LockedUntil.Before(time.Now().Add(23*time.Hour)) {
		t.Fatalf("prune of the locked stray image: %+v, %v", actions, err)
	}
	if _, err := st.Stat(ctx, orphans[0].Key); err != nil {
		t.Errorf("the stray image after prune: %v", err)
	}

	// A file store refusing deletes with ErrLocked, with nothing to say
	// why beforehand.
	fs := backuptest.FileStore(t)
	refusing := &mockStore{Store: fs, del: func(context.Context, string) error { return store.ErrLocked }}
	frepo := Repo{Store: refusing, Prefix: testPrefix}
	m := f.create(t, fs, 20, CreateOptions{})
	f.create(t, fs, 1, CreateOptions{})
	if _, err := Delete(ctx, frepo, testCluster, m.ID, f.opts(daysBefore(lifecycleNow, 10))); err != nil {
		t.Fatal(err)
	}
	putObject(t, fs, frepo.ObjectKey(testCluster, "backup-20250101T000000Z-aaaaaaaaaa", ImageObject), []byte("stray"))
	for range 2 { // the second time, the DELETED backup's image is left over
		actions, err = Prune(ctx, frepo, PruneOptions{LifecycleOptions: f.opts(lifecycleNow), Policy: func(string) Policy { return Policy{} },
			OrphanGrace: NoOrphanGrace})
		if err != nil || len(actions) != 2 {
			t.Fatalf("prune: %+v, %v", actions, err)
		}
		for _, a := range actions {
			if !a.Locked || !a.LockedUntil.IsZero() || a.Error != "" || a.LockText() != "locked" {
				t.Errorf("action %+v: want Locked, no date", a)
			}
		}
	}
}

// lockerStore is a mockStore that is also the store.ObjectLocker of a
// store it decorates.
type lockerStore struct {
	*mockStore
	locker store.ObjectLocker
}

func (s *lockerStore) CheckObjectLock(ctx context.Context) error {
	return s.locker.CheckObjectLock(ctx)
}

func (s *lockerStore) ObjectLock(ctx context.Context, key string) (store.Retention, bool, error) {
	return s.locker.ObjectLock(ctx, key)
}

// TestPruneLockEnded: a lock the manifest records whose date has passed
// (by the real clock) holds nothing back.
func TestPruneLockEnded(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	st := backuptest.FileStore(t)
	repo := Repo{Store: st, Prefix: testPrefix}
	old := f.create(t, st, 40, CreateOptions{})
	f.create(t, st, 1, CreateOptions{})
	record := func(until time.Time) {
		resign(t, repo, testCluster, old.ID, f.priv, func(m *Manifest) {
			m.Lock = &Lock{Mode: store.Compliance, Until: until.UTC().Truncate(time.Second)}
		})
	}
	policy := func(string) Policy { return Policy{RetentionDays: 30} }
	record(time.Now().Add(time.Hour))
	actions, err := Prune(ctx, repo, PruneOptions{LifecycleOptions: f.opts(lifecycleNow), Policy: policy})
	if err != nil || len(actions) != 1 || !actions[0].Locked {
		t.Fatalf("prune with the lock in force: %+v, %v", actions, err)
	}
	record(time.Now().Add(-time.Hour))
	actions, err = Prune(ctx, repo, PruneOptions{LifecycleOptions: f.opts(lifecycleNow), Policy: policy})
	if err != nil || len(actions) != 1 || actions[0].Locked || actions[0].To != StatePendingDeletion {
		t.Fatalf("prune after the lock ended: %+v, %v", actions, err)
	}
	if d, err := Describe(ctx, repo, testCluster, old.ID); err != nil || d.State != StatePendingDeletion || d.Lock == nil {
		t.Fatalf("after prune: %+v, %v", d, err)
	}
}

// TestCopyLeavesLock: a copy of a locked backup is stored without a lock
// (the destination need not lock) and its manifest records none.
func TestCopyLeavesLock(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	src := Repo{Store: s3Store(t, true)}
	m, err := Create(ctx, f.member, src, CreateOptions{Recipients: []wrap.Recipient{f.kr}, SigningKey: f.priv,
		Lock: ObjectLock{Mode: store.Governance, Days: 1}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Copy(ctx, src, testCluster, m.ID, Repo{Store: backuptest.FileStore(t)}, CopyOptions{PublicKey: f.pub,
		Identities: []wrap.Identity{f.kr}, Recipients: []wrap.Recipient{f.kr}, SigningKey: f.priv})
	if err != nil {
		t.Fatal(err)
	}
	if c.Lock != nil {
		t.Errorf("the copy records the source's lock %+v", c.Lock)
	}
}

func TestObjectLockValidate(t *testing.T) {
	for _, l := range []ObjectLock{{}, {Mode: store.Governance, Days: 1}, {Mode: store.Compliance, Days: MaxLockDays}} {
		if err := l.Validate(); err != nil {
			t.Errorf("%+v: %v", l, err)
		}
	}
	for _, l := range []ObjectLock{{Days: 3}, {Mode: "governance", Days: 3}, {Mode: store.Governance}, {Mode: store.Compliance, Days: MaxLockDays + 1}, {Mode: store.Compliance, Days: -1}} {
		if err := l.Validate(); err == nil {
			t.Errorf("%+v accepted", l)
		}
	}
	if got := (ObjectLock{Mode: store.Governance, Days: 7}).Covering(30); got.Days != 30 {
		t.Errorf("a 7-day lock covering 30 days: %+v", got)
	}
	if got := (ObjectLock{Mode: store.Governance, Days: 60}).Covering(30); got.Days != 60 {
		t.Errorf("a 60-day lock covering 30 days: %+v", got)
	}
	if got := (ObjectLock{}).Covering(30); got.Mode != "" || got.Days != 0 {
		t.Errorf("no lock covering 30 days: %+v", got)
	}
}

const vectorLock = "testdata/manifest-v1-lock.json"

// TestManifestLockKnownAnswer pins the encoding of object_lock, added to
// version 1 as an optional member; without it a manifest encodes as
// before (TestManifestKnownAnswer). Out-of-range locks are refused.
func TestManifestLockKnownAnswer(t *testing.T) {
	m := fixedManifest()
	m.Lock = &Lock{Mode: store.Compliance, Until: time.Date(2026, 12, 24, 17, 0, 2, 0, time.UTC)}
	priv := fixedKey()
	if err := m.Sign(priv); err != nil {
		t.Fatal(err)
	}
	stored, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("BACKUP_WRITE_VECTORS") == "1" {
		if err := os.WriteFile(vectorLock, stored, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(vectorLock)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stored, want) {
		t.Fatalf("stored manifest changed:\n got %s\nwant %s", stored, want)
	}
	if !bytes.Contains(want, []byte(`"retention_days":30,"object_lock":{"mode":"COMPLIANCE","until":"2026-12-24T17:00:02Z"},"cluster_certificate"`)) {
		t.Errorf("object_lock not where FORMATS.md 9.1 puts it: %s", want)
	}
	parsed, err := ParseManifest(want)
	if err != nil {
		t.Fatal(err)
	}
	if err := parsed.Verify(priv.Public().(ed25519.PublicKey)); err != nil {
		t.Fatal(err)
	}
	if parsed.Lock == nil || *parsed.Lock != *m.Lock || !parsed.LockedAt(m.Lock.Until.Add(-time.Second)) || parsed.LockedAt(m.Lock.Until) {
		t.Fatalf("parsed lock %+v", parsed.Lock)
	}
	// The lock is signed.
	parsed.Lock.Until = parsed.Lock.Until.Add(-24 * time.Hour)
	if err := parsed.Verify(priv.Public().(ed25519.PublicKey)); !errors.Is(err, ErrManifest) {
		t.Fatalf("changed lock verified: %v", err)
	}
	s := string(want)
	for name, b := range map[string]string{
		"bad mode":         strings.Replace(s, `"mode":"COMPLIANCE"`, `"mode":"compliance"`, 1),
		"before creation":  strings.Replace(s, `"until":"2026-12-24T17:00:02Z"`, `"until":"2026-11-24T17:00:00Z"`, 1),
		"fractional":       strings.Replace(s, `"until":"2026-12-24T17:00:02Z"`, `"until":"2026-12-24T17:00:02.5Z"`, 1),
		"not utc":          strings.Replace(s, `"until":"2026-12-24T17:00:02Z"`, `"until":"2026-12-24T18:00:02+01:00"`, 1),
		"too far":          strings.Replace(s, `"until":"2026-12-24T17:00:02Z"`, `"until":"2226-12-24T17:00:02Z"`, 1),
		"unknown member":   strings.Replace(s, `"mode":"COMPLIANCE"`, `"mode":"COMPLIANCE","hold":true`, 1),
		"missing date":     strings.Replace(s, `,"until":"2026-12-24T17:00:02Z"`, ``, 1),
		"empty lock":       strings.Replace(s, `{"mode":"COMPLIANCE","until":"2026-12-24T17:00:02Z"}`, `{}`, 1),
		"null lock (form)": strings.Replace(s, `{"mode":"COMPLIANCE","until":"2026-12-24T17:00:02Z"}`, `null`, 1),
	} {
		if b == s {
			t.Fatalf("%s: replacement did not apply", name)
		}
		if _, err := ParseManifest([]byte(b)); !errors.Is(err, ErrManifest) {
			t.Errorf("%s: ParseManifest = %v", name, err)
		}
	}
}
