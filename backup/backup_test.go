package backup

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/backup/backuptest"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/wrap"
)

const testPrefix = "tenant-a/"

func readObject(t *testing.T, st store.Store, key string) []byte {
	t.Helper()
	rc, err := st.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func putObject(t *testing.T, st store.Store, key string, b []byte) {
	t.Helper()
	if err := st.Put(context.Background(), key, bytes.NewReader(b), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

func allKeys(t *testing.T, st store.Store) []string {
	t.Helper()
	var keys []string
	if err := st.List(context.Background(), "", func(oi store.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestCreateListDescribeVerify(t *testing.T) {
	ctx := context.Background()
	member := newMember(t, 0)
	kr, pub, priv := backuptest.Keys(t)
	st := backuptest.FileStore(t)
	health, err := member.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}

	clock := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	now := func() time.Time { clock = clock.Add(time.Second); return clock }
	opts := CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv, Now: now,
		Tags: map[string]string{"env": "prod"}, RetentionDays: 90}
	m1, err := Create(ctx, member, Repo{Store: st, Prefix: testPrefix}, opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.ClusterID, opts.Tags, opts.RetentionDays, opts.NeverExpires = testCluster, map[string]string{"env": "dev"}, 0, true
	m2, err := Create(ctx, member, Repo{Store: st, Prefix: testPrefix}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(m1.ID, "backup-20261124T170001Z-") || m1.ID >= m2.ID {
		t.Fatalf("ids %s, %s", m1.ID, m2.ID)
	}
	if m1.ClusterID != testCluster || m1.State != StateReady || m1.Source.Serial != health.Serial ||
		m1.Source.PBKFingerprint != hex.EncodeToString(health.PBKFingerprint) || m1.Source.Class != "hsm2m.medium" ||
		len(m1.Recipients) != 1 || m1.ImageSize <= 0 || m1.ObjectSize <= m1.ImageSize {
		t.Fatalf("manifest %+v", m1)
	}
	image := readObject(t, st, Repo{Prefix: testPrefix}.ObjectKey(testCluster, m1.ID, ImageObject))
	if int64(len(image)) != m1.ObjectSize || !bytes.HasPrefix(image, m1.OuterHeader) {
		t.Fatalf("stored object of %d bytes, manifest says %d", len(image), m1.ObjectSize)
	}
	stored := readObject(t, st, Repo{Prefix: testPrefix}.ObjectKey(testCluster, m1.ID, ManifestObject))
	if want, _ := m1.Marshal(); !bytes.Equal(stored, want) {
		t.Fatal("stored manifest differs from the returned one")
	}

	// An image without a manifest is not a backup.
	putObject(t, st, Repo{Prefix: testPrefix}.ObjectKey(testCluster, "backup-20261124T180000Z-aaaaaaaaaa", ImageObject), []byte("orphan"))

	ids := func(ms []*Manifest) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.ID)
		}
		return out
	}
	for _, tc := range []struct {
		f    Filter
		want []string
	}{
		{Filter{}, []string{m1.ID, m2.ID}},
		{Filter{ClusterID: testCluster}, []string{m1.ID, m2.ID}},
		{Filter{ClusterID: "cluster-2"}, nil},
		{Filter{State: StateReady}, []string{m1.ID, m2.ID}},
		{Filter{State: StateDeleted}, nil},
		{Filter{Tags: map[string]string{"env": "dev"}}, []string{m2.ID}},
		{Filter{Tags: map[string]string{"env": "qa"}}, nil},
	} {
		got, err := List(ctx, Repo{Store: st, Prefix: testPrefix}, tc.f)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids(got), tc.want) {
			t.Errorf("List(%+v) = %v, want %v", tc.f, ids(got), tc.want)
		}
	}
	if got, err := List(ctx, Repo{Store: st}, Filter{}); err != nil || len(got) != 0 {
		t.Errorf("List outside the prefix = %v, %v", ids(got), err)
	}

	d, err := Describe(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m2.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != m2.ID || !d.NeverExpires || d.Tags["env"] != "dev" {
		t.Fatalf("describe %+v", d)
	}
	if _, err := Describe(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, "backup-20261124T180000Z-aaaaaaaaaa"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("describe orphan: %v", err)
	}

	for _, vo := range []VerifyOptions{
		{PublicKey: pub},
		{PublicKey: pub, Identities: []wrap.Identity{kr}},
		{PublicKey: pub, Identities: []wrap.Identity{kr}, Deep: true},
	} {
		if err := Verify(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m1.ID, vo); err != nil {
			t.Errorf("verify (identities %d, deep %v): %v", len(vo.Identities), vo.Deep, err)
		}
	}

	// Wrong keys name the layer.
	otherKR, otherPub, _ := backuptest.Keys(t)
	if err := Verify(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m1.ID, VerifyOptions{PublicKey: otherPub}); !errors.Is(err, ErrManifest) {
		t.Errorf("verify under another public key: %v", err)
	}
	err = Verify(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m1.ID, VerifyOptions{PublicKey: pub, Identities: []wrap.Identity{otherKR}})
	if !errors.Is(err, ErrOuterLayer) || !errors.Is(err, wrap.ErrTampered) { // same key name, other key
		t.Errorf("verify with another keyring: %v", err)
	}
}

// TestVerifyInnerHeaderMismatch signs a manifest whose image id differs
// from the image's: in a manifest without the HSM's image statement (as
// written before it existed) only a deep check can see it; with the
// statement, which names the image id, the manifest's own check does.
func TestVerifyInnerHeaderMismatch(t *testing.T) {
	ctx := context.Background()
	member := newMember(t, 0)
	kr, pub, priv := backuptest.Keys(t)
	st := backuptest.FileStore(t)
	m, err := Create(ctx, member, Repo{Store: st}, CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv})
	if err != nil {
		t.Fatal(err)
	}
	m.ImageID = strings.Repeat("ab", 16)
	if err := m.Sign(priv); err != nil {
		t.Fatal(err)
	}
	if err := m.Verify(pub); !errors.Is(err, ErrManifest) {
		t.Errorf("a manifest whose statement names another image id: %v", err)
	}
	m.ImageSHA256, m.ImageStatement = "", nil // a manifest of before the statement
	if err := m.Sign(priv); err != nil {
		t.Fatal(err)
	}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	putObject(t, st, Repo{}.ObjectKey(testCluster, m.ID, ManifestObject), b)
	ids := []wrap.Identity{kr}
	if err := Verify(ctx, Repo{Store: st}, testCluster, m.ID, VerifyOptions{PublicKey: pub, Identities: ids}); err != nil {
		t.Fatalf("shallow verify: %v", err)
	}
	if err := Verify(ctx, Repo{Store: st}, testCluster, m.ID, VerifyOptions{PublicKey: pub, Identities: ids, Deep: true}); !errors.Is(err, ErrInnerHeader) {
		t.Fatalf("deep verify: %v", err)
	}
}

// sampledOffsets: every 997th byte and the first and last 64 bytes.
func sampledOffsets(n, step int) []int {
	var out []int
	for i := 0; i < n; i++ {
		if i < 64 || i >= n-64 || i%step == 0 {
			out = append(out, i)
		}
	}
	return out
}

func TestVerifyCatchesFlips(t *testing.T) {
	ctx := context.Background()
	member := newMember(t, 300) // an image of more than one 64 KiB package
	kr, pub, priv := backuptest.Keys(t)
	st := backuptest.FileStore(t)
	m, err := Create(ctx, member, Repo{Store: st, Prefix: testPrefix}, CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv,
		Tags: map[string]string{"team": "hsm"}})
	if err != nil {
		t.Fatal(err)
	}
	vo := VerifyOptions{PublicKey: pub, Identities: []wrap.Identity{kr}, Deep: true}

	for _, tc := range []struct {
		object string
		want   error
		step   int
	}{
		{ImageObject, ErrObjectHash, 997},
		{ManifestObject, ErrManifest, 97},
	} {
		key := Repo{Prefix: testPrefix}.ObjectKey(testCluster, m.ID, tc.object)
		orig := readObject(t, st, key)
		offs := sampledOffsets(len(orig), tc.step)
		for _, off := range offs {
			for _, mask := range []byte{0x01, 0x80} {
				b := bytes.Clone(orig)
				b[off] ^= mask
				putObject(t, st, key, b)
				if err := Verify(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, vo); !errors.Is(err, tc.want) {
					t.Fatalf("%s: flip %#x at %d of %d: got %v, want %v", tc.object, mask, off, len(orig), err, tc.want)
				}
			}
		}
		putObject(t, st, key, orig)
		t.Logf("%s: %d bytes, %d offsets flipped twice each", tc.object, len(orig), len(offs))
	}
	for _, cut := range []int{1, 100} {
		key := Repo{Prefix: testPrefix}.ObjectKey(testCluster, m.ID, ImageObject)
		orig := readObject(t, st, key)
		putObject(t, st, key, orig[:len(orig)-cut])
		if err := Verify(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, vo); !errors.Is(err, ErrObjectHash) {
			t.Fatalf("truncated by %d: %v", cut, err)
		}
		putObject(t, st, key, orig)
	}
	if err := Verify(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, vo); err != nil {
		t.Fatalf("restored: %v", err)
	}
}

func TestCreateFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	member := newMember(t, 300)
	kr, pub, priv := backuptest.Keys(t)
	base := backuptest.FileStore(t)
	var armed atomic.Bool
	st := &mockStore{Store: base}
	opts := CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv}

	for _, tc := range []struct {
		name   string
		suffix string
		n      int64
	}{
		{"image at 0 bytes", "/" + ImageObject, 0},
		{"image midway", "/" + ImageObject, 100_000},
		{"manifest", "/" + ManifestObject, 10},
	} {
		st.put = failAfter(base, tc.suffix, tc.n, &armed)
		armed.Store(true)
		_, err := Create(ctx, member, Repo{Store: st, Prefix: testPrefix}, opts)
		if !errors.Is(err, errInjected) {
			t.Fatalf("%s: Create = %v, want the injected error", tc.name, err)
		}
		if keys := allKeys(t, base); len(keys) != 0 {
			t.Fatalf("%s: left %v", tc.name, keys)
		}
		if ms, err := List(ctx, Repo{Store: st, Prefix: testPrefix}, Filter{}); err != nil || len(ms) != 0 {
			t.Fatalf("%s: List = %d, %v", tc.name, len(ms), err)
		}
	}

	armed.Store(false)
	m, err := Create(ctx, member, Repo{Store: st, Prefix: testPrefix}, opts)
	if err != nil {
		t.Fatalf("Create after failures: %v", err)
	}
	ms, err := List(ctx, Repo{Store: st, Prefix: testPrefix}, Filter{})
	if err != nil || len(ms) != 1 || ms[0].ID != m.ID {
		t.Fatalf("List = %v, %v", ms, err)
	}
	if err := Verify(ctx, Repo{Store: st, Prefix: testPrefix}, testCluster, m.ID, VerifyOptions{PublicKey: pub, Identities: []wrap.Identity{kr}, Deep: true}); err != nil {
		t.Fatal(err)
	}
}

// TestCreateFailureRidesOutCleanup: a manifest stored but answered with a
// transient failure (a lost answer), then deletions that fail
// transiently for a while, as the store fault goes on: Create fails, and
// removes the manifest first and then the image, so that no backup is
// listed without its image and nothing is left. Interrupted, it tries
// only for CleanupTimeout.
func TestCreateFailureRidesOutCleanup(t *testing.T) {
	ctx := context.Background()
	member := newMember(t, 300)
	kr, _, priv := backuptest.Keys(t)
	base := backuptest.FileStore(t)
	opts := CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv}
	var deletes []string
	failing := 3 // deletions that fail before the store answers again
	st := &mockStore{Store: base,
		put: func(ctx context.Context, key string, r io.Reader, o store.PutOptions) error {
			err := base.Put(ctx, key, r, o)
			if err == nil && strings.HasSuffix(key, "/"+ManifestObject) {
				return store.Transient(errors.New("connection reset after the manifest was stored"))
			}
			return err
		},
		del: func(ctx context.Context, key string) error {
			deletes = append(deletes, key[strings.LastIndexByte(key, '/')+1:])
			if failing > 0 {
				failing--
				return store.Transient(errors.New("503 SlowDown"))
			}
			return base.Delete(ctx, key)
		},
	}
	_, err := Create(ctx, member, Repo{Store: st, Prefix: testPrefix}, opts)
	if err == nil || !strings.Contains(err.Error(), "write manifest") {
		t.Fatalf("Create = %v, want the manifest's failure", err)
	}
	if keys := allKeys(t, base); len(keys) != 0 {
		t.Fatalf("left %v", keys)
	}
	want := []string{ManifestObject, ManifestObject, ManifestObject, ManifestObject, ImageObject}
	if !slices.Equal(deletes, want) {
		t.Fatalf("deletions %v, want %v (the manifest first, repeated until it went)", deletes, want)
	}

	// Interrupted: the store never answers; the cleanup gives up within
	// CleanupTimeout, leaving the image for Orphans and Prune.
	failing = 1 << 30
	deletes = nil
	ictx, cancel := context.WithCancel(ctx)
	st.put = func(ctx context.Context, key string, r io.Reader, o store.PutOptions) error {
		err := base.Put(ctx, key, r, o)
		if strings.HasSuffix(key, "/"+ImageObject) {
			cancel()
			return context.Canceled
		}
		return err
	}
	start := time.Now()
	_, err = Create(ictx, member, Repo{Store: st, Prefix: testPrefix}, opts)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted Create = %v", err)
	}
	if took := time.Since(start); took > CleanupTimeout+2*time.Second {
		t.Errorf("an interrupted Create took %v to give up its cleanup; the bound is %v", took, CleanupTimeout)
	}
	if len(deletes) == 0 {
		t.Error("no deletion of the image was tried")
	}
}

func TestCreateRejects(t *testing.T) {
	ctx := context.Background()
	member := newMember(t, 0)
	kr, _, priv := backuptest.Keys(t)
	st := backuptest.FileStore(t)
	for name, tc := range map[string]struct {
		prefix string
		o      CreateOptions
	}{
		"no recipients":  {o: CreateOptions{SigningKey: priv}},
		"no signing key": {o: CreateOptions{Recipients: []wrap.Recipient{kr}}},
		"other cluster":  {o: CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv, ClusterID: "cluster-2"}},
		"bad tag":        {o: CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv, Tags: map[string]string{"aws:x": "y"}}},
		"bad prefix":     {prefix: "../x/", o: CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv}},
	} {
		if _, err := Create(ctx, member, Repo{Store: st, Prefix: tc.prefix}, tc.o); err == nil {
			t.Errorf("%s: Create succeeded", name)
		}
	}
	if keys := allKeys(t, st); len(keys) != 0 {
		t.Fatalf("left %v", keys)
	}
	// A cancelled context leaves nothing either.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Create(cctx, member, Repo{Store: st}, CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Create: %v", err)
	}
	if keys := allKeys(t, st); len(keys) != 0 {
		t.Fatalf("left %v", keys)
	}
}

// TestCreateBeforeCommit: a BeforeCommit that fails (a scheduler that
// lost its lease) fails the backup after the image was stored, and
// leaves nothing behind; one that passes is called once, with the image
// stored and no manifest yet.
func TestCreateBeforeCommit(t *testing.T) {
	ctx := context.Background()
	member := newMember(t, 20)
	kr, _, priv := backuptest.Keys(t)
	st := backuptest.FileStore(t)
	repo := Repo{Store: st, Prefix: testPrefix}
	lost := errors.New("lease lost")
	calls := 0
	opts := CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv, BeforeCommit: func(context.Context) error {
		calls++
		keys := allKeys(t, st)
		if len(keys) != 1 || !strings.HasSuffix(keys[0], "/"+ImageObject) {
			t.Errorf("at commit the store holds %v, want the image alone", keys)
		}
		return lost
	}}
	if _, err := Create(ctx, member, repo, opts); !errors.Is(err, lost) || calls != 1 {
		t.Fatalf("Create = %v after %d calls, want the hook's error after 1", err, calls)
	}
	if keys := allKeys(t, st); len(keys) != 0 {
		t.Fatalf("a refused commit left %v", keys)
	}
	opts.BeforeCommit = func(context.Context) error { calls++; return nil }
	if _, err := Create(ctx, member, repo, opts); err != nil || calls != 2 {
		t.Fatalf("Create = %v after %d calls", err, calls)
	}
	if ms, err := List(ctx, repo, Filter{}); err != nil || len(ms) != 1 {
		t.Fatalf("List = %d, %v", len(ms), err)
	}
}

// TestVerifyMissingImage: a READY backup whose image object is gone fails
// its check as a changed one does (ErrObjectHash, the CLI's exit status
// 4), the missing object named.
func TestVerifyMissingImage(t *testing.T) {
	ctx := context.Background()
	member := newMember(t, 50)
	kr, pub, priv := backuptest.Keys(t)
	st := backuptest.FileStore(t)
	repo := Repo{Store: st, Prefix: testPrefix}
	m, err := Create(ctx, member, repo, CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, repo.ObjectKey(testCluster, m.ID, ImageObject)); err != nil {
		t.Fatal(err)
	}
	for _, deep := range []bool{false, true} {
		err := Verify(ctx, repo, testCluster, m.ID, VerifyOptions{PublicKey: pub, Identities: []wrap.Identity{kr}, Deep: deep})
		if !errors.Is(err, ErrObjectHash) || !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "image object is missing") {
			t.Errorf("verify (deep %t) of a backup without its image: %v; want ErrObjectHash, the object missing", deep, err)
		}
	}
	if err := CheckObject(ctx, repo, m); !errors.Is(err, ErrObjectHash) {
		t.Errorf("CheckObject of a backup without its image: %v; want ErrObjectHash", err)
	}
}
