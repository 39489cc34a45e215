package backup

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/backup/backuptest"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/file"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// newKeyring returns a keyring whose one master key is named id, so that
// its stanzas are told apart from those of backuptest.Keys' ("master").
func newKeyring(tb testing.TB, id string) *wrap.Keyring {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "keyring")
	if _, err := wrap.GenerateMasterKey(path, id); err != nil {
		tb.Fatal(err)
	}
	kr, err := wrap.LoadKeyring(path)
	if err != nil {
		tb.Fatal(err)
	}
	return kr
}

// filesUnder lists every file under dir (a file store's root, its
// temporary directory included).
func filesUnder(tb testing.TB, dir string) []string {
	tb.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			out = append(out, path)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

const dstPrefix = "region-b/"

// TestCopy copies a backup to a second store for a new recipient: a new
// backup of the same cluster and inner image, naming its source, whose
// envelope only the new recipients open and whose body is the source's,
// byte for byte.
func TestCopy(t *testing.T) {
	ctx := context.Background()
	member := newMember(t, 300) // a body of several 64 KiB packages
	kr, pub, priv := backuptest.Keys(t)
	src := backuptest.FileStore(t)
	dst := backuptest.FileStore(t)
	created := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	sm, err := Create(ctx, member, Repo{Store: src, Prefix: testPrefix}, CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv,
		Now: fixedClock(created), Tags: map[string]string{"env": "prod"}, RetentionDays: 90})
	if err != nil {
		t.Fatal(err)
	}
	srcBefore := snapshot(t, src)
	srcObject := srcBefore[Repo{Prefix: testPrefix}.ObjectKey(testCluster, sm.ID, ImageObject)]

	krB := newKeyring(t, "region-b")
	_, pubB, privB := backuptest.Keys(t)
	copied := created.Add(time.Hour)
	opts := CopyOptions{PublicKey: pub, Identities: []wrap.Identity{kr}, Recipients: []wrap.Recipient{krB}, SigningKey: privB,
		Now: fixedClock(copied)}
	cm, err := Copy(ctx, Repo{Store: src, Prefix: testPrefix}, testCluster, sm.ID, Repo{Store: dst, Prefix: dstPrefix}, opts)
	if err != nil {
		t.Fatal(err)
	}

	if cm.ID == sm.ID || !strings.HasPrefix(cm.ID, "backup-20261124T180000Z-") || !cm.Created.Equal(copied) {
		t.Errorf("copy id %s created %v; source %s", cm.ID, cm.Created, sm.ID)
	}
	if cm.ClusterID != testCluster || cm.SourceBackupID != sm.ID || cm.SourceClusterID != testCluster || cm.State != StateReady {
		t.Errorf("copy cluster %s, source %s of %s, state %s", cm.ClusterID, cm.SourceBackupID, cm.SourceClusterID, cm.State)
	}
	if cm.ImageID != sm.ImageID || cm.ImageSize != sm.ImageSize || cm.Source != sm.Source ||
		!maps.Equal(cm.Tags, sm.Tags) || cm.RetentionDays != sm.RetentionDays {
		t.Errorf("copy describes another image:\n%+v\nsource\n%+v", cm, sm)
	}
	if cm.ObjectSHA256 == sm.ObjectSHA256 || bytes.Equal(cm.OuterHeader, sm.OuterHeader) || slices.Equal(cm.Recipients, sm.Recipients) {
		t.Error("the copy's envelope header, hash or recipients are the source's")
	}
	if len(cm.Recipients) != 1 || !strings.Contains(cm.Recipients[0], "region-b") {
		t.Errorf("copy recipients %q", cm.Recipients)
	}

	dstObject := readObject(t, dst, Repo{Prefix: dstPrefix}.ObjectKey(testCluster, cm.ID, ImageObject))
	sum := sha256.Sum256(dstObject)
	if int64(len(dstObject)) != cm.ObjectSize || hex.EncodeToString(sum[:]) != cm.ObjectSHA256 || !bytes.HasPrefix(dstObject, cm.OuterHeader) {
		t.Fatal("the stored copy does not match its manifest")
	}
	if !bytes.Equal(dstObject[len(cm.OuterHeader):], srcObject[len(sm.OuterHeader):]) {
		t.Fatal("the copy's body differs from the source's")
	}
	if want, _ := cm.Marshal(); !bytes.Equal(readObject(t, dst, Repo{Prefix: dstPrefix}.ObjectKey(testCluster, cm.ID, ManifestObject)), want) {
		t.Fatal("stored manifest differs from the returned one")
	}
	wantKeys := []string{Repo{Prefix: dstPrefix}.ObjectKey(testCluster, cm.ID, ImageObject), Repo{Prefix: dstPrefix}.ObjectKey(testCluster, cm.ID, ManifestObject)}
	if keys := allKeys(t, dst); !slices.Equal(keys, wantKeys) {
		t.Fatalf("destination holds %v, want %v", keys, wantKeys)
	}
	if ms, err := List(ctx, Repo{Store: dst, Prefix: dstPrefix}, Filter{}); err != nil || len(ms) != 1 || ms[0].ID != cm.ID {
		t.Fatalf("List of the destination: %v", err)
	}

	deep := func(st store.Store, prefix, id string, pub ed25519.PublicKey, ids ...wrap.Identity) error {
		return Verify(ctx, Repo{Store: st, Prefix: prefix}, testCluster, id, VerifyOptions{PublicKey: pub, Identities: ids, Deep: true})
	}
	if err := deep(dst, dstPrefix, cm.ID, pubB, krB); err != nil {
		t.Fatalf("deep verify of the copy: %v", err)
	}
	if err := deep(dst, dstPrefix, cm.ID, pubB, kr); !errors.Is(err, ErrOuterLayer) {
		t.Fatalf("the old keyring on the copy: %v, want ErrOuterLayer", err)
	}
	if err := deep(dst, dstPrefix, cm.ID, pub, krB); !errors.Is(err, ErrManifest) {
		t.Fatalf("the copy under the source's signing key: %v, want ErrManifest", err)
	}
	if !maps.EqualFunc(srcBefore, snapshot(t, src), bytes.Equal) {
		t.Fatal("Copy changed the source store")
	}
	if err := deep(src, testPrefix, sm.ID, pub, kr); err != nil {
		t.Fatalf("deep verify of the source: %v", err)
	}

	// With the old keyring among the recipients both open the copy.
	opts.Recipients = []wrap.Recipient{krB, kr}
	cm2, err := Copy(ctx, Repo{Store: src, Prefix: testPrefix}, testCluster, sm.ID, Repo{Store: dst, Prefix: dstPrefix}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if cm2.ID == cm.ID || len(cm2.Recipients) != 2 {
		t.Fatalf("second copy %s, recipients %q", cm2.ID, cm2.Recipients)
	}
	for _, id := range []wrap.Identity{kr, krB} {
		if err := deep(dst, dstPrefix, cm2.ID, pubB, id); err != nil {
			t.Fatalf("deep verify of the second copy with %v: %v", id, err)
		}
	}
	dstObject2 := readObject(t, dst, Repo{Prefix: dstPrefix}.ObjectKey(testCluster, cm2.ID, ImageObject))
	if !bytes.Equal(dstObject2[len(cm2.OuterHeader):], srcObject[len(sm.OuterHeader):]) {
		t.Fatal("the second copy's body differs from the source's")
	}

	// A copy of the copy names its own source.
	cm3, err := Copy(ctx, Repo{Store: dst, Prefix: dstPrefix}, testCluster, cm.ID, Repo{Store: dst, Prefix: "region-c"}, CopyOptions{PublicKey: pubB, Identities: []wrap.Identity{krB},
		Recipients: []wrap.Recipient{kr}, SigningKey: priv})
	if err != nil {
		t.Fatal(err)
	}
	if cm3.SourceBackupID != cm.ID || cm3.SourceClusterID != testCluster || cm3.ImageID != sm.ImageID {
		t.Fatalf("copy of the copy: source %s, image %s", cm3.SourceBackupID, cm3.ImageID)
	}
	if err := deep(dst, "region-c/", cm3.ID, pub, kr); err != nil {
		t.Fatalf("deep verify of the copy of the copy: %v", err)
	}
}

// TestCopyRefuses: Copy refuses a source that is not READY, whose
// manifest does not verify, or whose image does not open or match its
// manifest, and then stores nothing at all in the destination.
func TestCopyRefuses(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	src := backuptest.FileStore(t)
	dstDir := t.TempDir()
	dst, err := file.New(dstDir)
	if err != nil {
		t.Fatal(err)
	}
	_, otherPub, otherPriv := backuptest.Keys(t)

	good := f.create(t, src, 20, CreateOptions{Tags: map[string]string{"env": "prod"}})
	other := f.create(t, src, 19, CreateOptions{})
	pending := f.create(t, src, 18, CreateOptions{})
	if _, err := Delete(ctx, Repo{Store: src, Prefix: testPrefix}, testCluster, pending.ID, f.opts(daysBefore(lifecycleNow, 1))); err != nil {
		t.Fatal(err)
	}
	deleted := f.create(t, src, 17, CreateOptions{})
	if _, err := Delete(ctx, Repo{Store: src, Prefix: testPrefix}, testCluster, deleted.ID, f.opts(daysBefore(lifecycleNow, 10))); err != nil {
		t.Fatal(err)
	}
	if _, err := Prune(ctx, Repo{Store: src, Prefix: testPrefix}, PruneOptions{LifecycleOptions: f.opts(lifecycleNow), Policy: func(string) Policy { return Policy{} }}); err != nil {
		t.Fatal(err)
	}
	if d, err := Describe(ctx, Repo{Store: src, Prefix: testPrefix}, testCluster, deleted.ID); err != nil || d.State != StateDeleted {
		t.Fatalf("fixture: %v", err)
	}

	imageKey := Repo{Prefix: testPrefix}.ObjectKey(testCluster, good.ID, ImageObject)
	manifestKey := Repo{Prefix: testPrefix}.ObjectKey(testCluster, good.ID, ManifestObject)
	image := readObject(t, src, imageKey)
	hdr := len(good.OuterHeader)
	setImage := func(b []byte) func(*testing.T) { return func(t *testing.T) { putObject(t, src, imageKey, b) } }
	flip := func(off int) []byte { b := bytes.Clone(image); b[off] ^= 0x01; return b }
	srcBefore := snapshot(t, src)

	valid := CopyOptions{PublicKey: f.pub, Identities: []wrap.Identity{f.kr}, Recipients: []wrap.Recipient{newKeyring(t, "region-b")}, SigningKey: f.priv,
		Now: fixedClock(lifecycleNow)}
	layer := []error{ErrOuterLayer, ErrObjectHash}
	type copyCase struct {
		name    string
		id      string
		prepare func(*testing.T)
		opts    func(*CopyOptions)
		dst     string // the destination prefix, if not dstPrefix
		ctx     context.Context
		want    []error // the error wraps one of these; nil: any error
	}
	cases := []copyCase{
		{name: "pending deletion", id: pending.ID, want: []error{ErrState}},
		{name: "deleted", id: deleted.ID, want: []error{ErrState}},
		{name: "unknown backup", id: "backup-20261124T180000Z-aaaaaaaaaa", want: []error{store.ErrNotFound}},
		{name: "manifest re-signed with another key", id: good.ID, want: []error{ErrManifest},
			prepare: func(t *testing.T) {
				resign(t, Repo{Store: src, Prefix: testPrefix}, testCluster, good.ID, otherPriv, nil)
			}},
		{name: "manifest tag byte flipped", id: good.ID, want: []error{ErrManifest},
			prepare: func(t *testing.T) {
				b := readObject(t, src, manifestKey)
				b[bytes.Index(b, []byte(`"prod"`))+2] ^= 0x01
				putObject(t, src, manifestKey, b)
			}},
		{name: "another public key", id: good.ID, want: []error{ErrManifest},
			opts: func(o *CopyOptions) { o.PublicKey = otherPub }},
		{name: "identity that cannot open the envelope", id: good.ID, want: []error{ErrOuterLayer},
			opts: func(o *CopyOptions) { o.Identities = []wrap.Identity{newKeyring(t, "stranger")} }},
		{name: "image swapped for another backup's", id: good.ID, want: []error{ErrObjectHash},
			prepare: setImage(readObject(t, src, Repo{Prefix: testPrefix}.ObjectKey(testCluster, other.ID, ImageObject)))},
		{name: "image truncated by 1 byte", id: good.ID, want: layer, prepare: setImage(image[:len(image)-1])},
		{name: "image truncated to its header", id: good.ID, want: layer, prepare: setImage(image[:hdr])},
		{name: "image with a byte appended", id: good.ID, want: layer, prepare: setImage(append(bytes.Clone(image), 0))},
		{name: "image missing", id: good.ID, want: []error{ErrObjectHash},
			prepare: func(t *testing.T) {
				if err := src.Delete(ctx, imageKey); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "cancelled context", id: good.ID, want: []error{context.Canceled},
			ctx: func() context.Context { c, cancel := context.WithCancel(ctx); cancel(); return c }()},
		{name: "no identity", id: good.ID, opts: func(o *CopyOptions) { o.Identities = nil }},
		{name: "no recipients", id: good.ID, opts: func(o *CopyOptions) { o.Recipients = nil }},
		{name: "no signing key", id: good.ID, opts: func(o *CopyOptions) { o.SigningKey = nil }},
		{name: "bad destination prefix", id: good.ID, dst: "../x/"},
	}
	for _, off := range []int{0, hdr / 2, hdr - 1, hdr, hdr + 1, len(image) / 2, len(image) - 1} {
		cases = append(cases, copyCase{name: fmt.Sprintf("image byte flipped at %d of %d", off, len(image)),
			id: good.ID, want: layer, prepare: setImage(flip(off))})
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.prepare != nil {
				tc.prepare(t)
			}
			t.Cleanup(func() {
				for k, b := range srcBefore {
					putObject(t, src, k, b)
				}
			})
			o := valid
			if tc.opts != nil {
				tc.opts(&o)
			}
			c := ctx
			if tc.ctx != nil {
				c = tc.ctx
			}
			m, err := Copy(c, Repo{Store: src, Prefix: testPrefix}, testCluster, tc.id, Repo{Store: dst, Prefix: cmp.Or(tc.dst, dstPrefix)}, o)
			if err == nil || m != nil {
				t.Fatalf("Copy = %v, %v; want an error", m, err)
			}
			if tc.want != nil && !slices.ContainsFunc(tc.want, func(e error) bool { return errors.Is(err, e) }) {
				t.Fatalf("Copy = %v, want one of %v", err, tc.want)
			}
			if files := filesUnder(t, dstDir); len(files) != 0 {
				t.Fatalf("the destination holds %v", files)
			}
		})
	}

	// The fixture was sound: with everything restored the copy is made.
	if !maps.EqualFunc(srcBefore, snapshot(t, src), bytes.Equal) {
		t.Fatal("source not restored")
	}
	m, err := Copy(ctx, Repo{Store: src, Prefix: testPrefix}, testCluster, good.ID, Repo{Store: dst, Prefix: dstPrefix}, valid)
	if err != nil {
		t.Fatal(err)
	}
	if files := filesUnder(t, dstDir); len(files) != 2 {
		t.Fatalf("the destination holds %v, want the copy's two objects", files)
	}
	if m.SourceBackupID != good.ID {
		t.Fatalf("copy of %s", m.SourceBackupID)
	}
}

// TestFind finds a backup's cluster from its id alone.
func TestFind(t *testing.T) {
	ctx := context.Background()
	f := newLifecycleFixture(t)
	st := backuptest.FileStore(t)
	m := f.create(t, st, 1, CreateOptions{})
	orphan := "backup-20261124T180000Z-aaaaaaaaaa"
	putObject(t, st, Repo{Prefix: testPrefix}.ObjectKey(testCluster, orphan, ImageObject), []byte("an image without a manifest"))

	for _, p := range []string{testPrefix, strings.TrimSuffix(testPrefix, "/")} {
		if c, err := Find(ctx, Repo{Store: st, Prefix: p}, m.ID); err != nil || c != testCluster {
			t.Errorf("Find(%q, %s) = %q, %v; want %q", p, m.ID, c, err, testCluster)
		}
	}
	for name, tc := range map[string]struct{ prefix, id string }{
		"unknown id":           {testPrefix, "backup-20261124T190000Z-bbbbbbbbbb"},
		"image, no manifest":   {testPrefix, orphan},
		"other prefix":         {"tenant-b/", m.ID},
		"no prefix":            {"", m.ID},
		"id with another time": {testPrefix, strings.Replace(m.ID, "T12", "T13", 1)},
	} {
		if c, err := Find(ctx, Repo{Store: st, Prefix: tc.prefix}, tc.id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s: Find = %q, %v; want ErrNotFound", name, c, err)
		}
	}
	for name, tc := range map[string]struct{ prefix, id string }{
		"empty id":       {testPrefix, ""},
		"not an id":      {testPrefix, "nope"},
		"path traversal": {testPrefix, "../" + m.ID},
		"upper case":     {testPrefix, strings.ToUpper(m.ID)},
		"bad prefix":     {"../x/", m.ID},
	} {
		if c, err := Find(ctx, Repo{Store: st, Prefix: tc.prefix}, tc.id); err == nil || c != "" {
			t.Errorf("%s: Find = %q, %v; want an error", name, c, err)
		}
	}

	// The same id in two clusters: Find cannot choose.
	putObject(t, st, Repo{Prefix: testPrefix}.ObjectKey("cluster-2", m.ID, ManifestObject), readObject(t, st, Repo{Prefix: testPrefix}.ObjectKey(testCluster, m.ID, ManifestObject)))
	c, err := Find(ctx, Repo{Store: st, Prefix: testPrefix}, m.ID)
	if !errors.Is(err, ErrAmbiguous) || errors.Is(err, store.ErrNotFound) || c != "" || !strings.Contains(err.Error(), "cluster-2") {
		t.Fatalf("Find of an id in two clusters = %q, %v", c, err)
	}
}

// TestCopyIdempotent: a second copy of the same backup to the same keys
// stores nothing and returns the first; to other keys, it copies.
func TestCopyIdempotent(t *testing.T) {
	ctx := context.Background()
	member := newMember(t, 1)
	kr, pub, priv := backuptest.Keys(t)
	src, dst := Repo{Store: backuptest.FileStore(t), Prefix: testPrefix}, Repo{Store: backuptest.FileStore(t)}
	sm, err := Create(ctx, member, src, CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv})
	if err != nil {
		t.Fatal(err)
	}
	opts := CopyOptions{PublicKey: pub, Identities: []wrap.Identity{kr}, Recipients: []wrap.Recipient{kr}, SigningKey: priv}
	first, copied, err := CopyOnce(ctx, src, testCluster, sm.ID, dst, opts)
	if err != nil || !copied || first.SourceObjectSHA256 != sm.ObjectSHA256 {
		t.Fatalf("first copy: %v, copied %v", err, copied)
	}
	again, copied, err := CopyOnce(ctx, src, testCluster, sm.ID, dst, opts)
	if err != nil || copied || again.ID != first.ID {
		t.Fatalf("second copy: %v, copied %v, id %s want %s", err, copied, again.ID, first.ID)
	}
	opts.Recipients = []wrap.Recipient{newKeyring(t, "other")}
	other, copied, err := CopyOnce(ctx, src, testCluster, sm.ID, dst, opts)
	if err != nil || !copied || other.ID == first.ID {
		t.Fatalf("copy to other keys: %v, copied %v", err, copied)
	}
	if ms, err := List(ctx, dst, Filter{}); err != nil || len(ms) != 2 {
		t.Fatalf("destination holds %d backups, %v; want 2", len(ms), err)
	}
}
