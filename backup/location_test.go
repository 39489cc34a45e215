package backup

import (
	"context"
	"crypto/ed25519"
	"errors"
	"maps"
	"testing"

	"github.com/hsmbackup/hsmbackup/backup/backuptest"
	"github.com/hsmbackup/hsmbackup/internal/miniotest"
	"github.com/hsmbackup/hsmbackup/store/s3"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// copyByHand copies backup id's two objects from one repo to another, as
// anyone who may write to the store can, without the signing key.
func copyByHand(t *testing.T, from, to Repo, fromCluster, toCluster, id string) {
	t.Helper()
	for _, obj := range []string{ImageObject, ManifestObject} {
		putObject(t, to.Store, to.ObjectKey(toCluster, id, obj), readObject(t, from.Store, from.ObjectKey(fromCluster, id, obj)))
	}
}

// locationFixture is a backup and the keys that made it.
type locationFixture struct {
	kr   *wrap.Keyring
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
	m    *Manifest
}

func (f *locationFixture) verifyOptions() VerifyOptions {
	return VerifyOptions{PublicKey: f.pub, Identities: []wrap.Identity{f.kr}, Deep: true}
}

// newLocationFixture makes a backup in repo.
func newLocationFixture(t *testing.T, repo Repo) *locationFixture {
	t.Helper()
	ctx := context.Background()
	f := &locationFixture{}
	f.kr, f.pub, f.priv = backuptest.Keys(t)
	var err error
	if f.m, err = Create(ctx, newMember(t, 1), repo, CreateOptions{Recipients: []wrap.Recipient{f.kr}, SigningKey: f.priv}); err != nil {
		t.Fatal(err)
	}
	if err := Verify(ctx, repo, f.m.ClusterID, f.m.ID, f.verifyOptions()); err != nil {
		t.Fatalf("where it was written: %v", err)
	}
	return f
}

// refusedThere checks that backup id of cluster, copied by hand into
// repo, is refused there by every reader of manifests (verify, which
// restore runs first; describe; list; copy), and that the refusals
// change nothing in the store.
func (f *locationFixture) refusedThere(t *testing.T, repo Repo, cluster string) {
	t.Helper()
	ctx := context.Background()
	id := f.m.ID
	before := snapshot(t, repo.Store)
	if err := Verify(ctx, repo, cluster, id, f.verifyOptions()); !errors.Is(err, ErrManifest) {
		t.Errorf("Verify of a backup copied by hand: got %v, want ErrManifest", err)
	}
	if _, err := Describe(ctx, repo, cluster, id); !errors.Is(err, ErrManifest) {
		t.Errorf("Describe of a backup copied by hand: got %v, want ErrManifest", err)
	}
	if ms, err := List(ctx, repo, Filter{ClusterID: cluster}); !errors.Is(err, ErrManifest) {
		t.Errorf("List with a backup copied by hand: %d backups, %v; want ErrManifest", len(ms), err)
	}
	dst := Repo{Store: backuptest.FileStore(t)}
	if _, err := Copy(ctx, repo, cluster, id, dst, CopyOptions{PublicKey: f.pub, Identities: []wrap.Identity{f.kr},
		Recipients: []wrap.Recipient{f.kr}, SigningKey: f.priv}); !errors.Is(err, ErrManifest) {
		t.Errorf("Copy of a backup copied by hand: got %v, want ErrManifest", err)
	}
	if after := snapshot(t, repo.Store); !maps.EqualFunc(before, after, func(a, b []byte) bool { return string(a) == string(b) }) {
		t.Error("refusals changed the store")
	}
}

// The attack: a backup's manifest and image, copied by hand to another
// prefix of the same file store (another tenant's, the store's root, a
// prefix below its own), verify there as if they had been written there.
// They must be refused: the manifest signs where it was written.
func TestBackupCopiedByHandToAnotherPrefixRefused(t *testing.T) {
	ctx := context.Background()
	st := backuptest.FileStore(t)
	src := Repo{Store: st, Prefix: "tenant-a/"}
	f := newLocationFixture(t, src)
	for _, prefix := range []string{"tenant-b/", "", "tenant-a/old/"} {
		t.Run("to "+prefix, func(t *testing.T) {
			dst := Repo{Store: st, Prefix: prefix}
			copyByHand(t, src, dst, f.m.ClusterID, f.m.ClusterID, f.m.ID)
			f.refusedThere(t, dst, f.m.ClusterID)
			for _, obj := range []string{ImageObject, ManifestObject} {
				if err := st.Delete(ctx, dst.ObjectKey(f.m.ClusterID, f.m.ID, obj)); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	if err := Verify(ctx, src, f.m.ClusterID, f.m.ID, f.verifyOptions()); err != nil {
		t.Fatalf("the original, after: %v", err)
	}
}

// Copied into another cluster's directory of the same prefix, a backup
// is refused, as it always was: the manifest names its cluster.
func TestBackupCopiedByHandToAnotherClusterRefused(t *testing.T) {
	repo := Repo{Store: backuptest.FileStore(t), Prefix: "tenant-a/"}
	f := newLocationFixture(t, repo)
	copyByHand(t, repo, repo, f.m.ClusterID, "cluster-2", f.m.ID)
	f.refusedThere(t, repo, "cluster-2")
}

// s3Stores returns S3 stores at the given prefixes of one fresh bucket of
// the shared MinIO, as s3://BUCKET/PREFIX names them.
func s3Stores(t *testing.T, prefixes ...string) []*s3.Store {
	t.Helper()
	srv := miniotest.Shared(t)
	bucket := srv.NewBucket(t, miniotest.BucketOptions{})
	var out []*s3.Store
	for _, p := range prefixes {
		st, err := s3.New(s3.Config{Bucket: bucket, Prefix: p, Endpoint: srv.URL(), Region: "us-east-1", Credentials: srv.Credentials(), MaxRetries: 1})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, st)
	}
	return out
}

// The same attack on S3 (MinIO): stores at two prefixes of one bucket. The
// objects are copied within the bucket to the same keys under the other
// store's prefix, and refused there.
func TestBackupCopiedByHandToAnotherS3PrefixRefused(t *testing.T) {
	sts := s3Stores(t, "tenant-a", "tenant-b", "")
	src := Repo{Store: sts[0]}
	f := newLocationFixture(t, src)
	for _, dst := range []Repo{{Store: sts[1]}, {Store: sts[2]}, {Store: sts[2], Prefix: "tenant-b/"}} {
		copyByHand(t, src, dst, f.m.ClusterID, f.m.ClusterID, f.m.ID)
		f.refusedThere(t, dst, f.m.ClusterID)
	}
}

// Copy, unlike a copy by hand, writes and signs a manifest of its own,
// bound to its destination, where it verifies: another prefix of the same
// store, or another S3 store's prefix.
func TestCopyToAnotherPrefixVerifies(t *testing.T) {
	ctx := context.Background()
	st := backuptest.FileStore(t)
	src := Repo{Store: st, Prefix: "tenant-a/"}
	f := newLocationFixture(t, src)
	if want := "tenant-a/clusters/" + f.m.ClusterID + "/backups/" + f.m.ID + "/"; f.m.Location != want || !f.m.Bound() {
		t.Fatalf("location %q, want %q", f.m.Location, want)
	}
	sts := s3Stores(t, "tenant-b")
	for _, dst := range []Repo{{Store: st, Prefix: "tenant-b/"}, {Store: sts[0]}} {
		cm, err := Copy(ctx, src, f.m.ClusterID, f.m.ID, dst, CopyOptions{PublicKey: f.pub, Identities: []wrap.Identity{f.kr},
			Recipients: []wrap.Recipient{f.kr}, SigningKey: f.priv})
		if err != nil {
			t.Fatal(err)
		}
		if want := "tenant-b/clusters/" + cm.ClusterID + "/backups/" + cm.ID + "/"; cm.Location != want {
			t.Fatalf("copy's location %q, want %q", cm.Location, want)
		}
		if err := Verify(ctx, dst, cm.ClusterID, cm.ID, f.verifyOptions()); err != nil {
			t.Fatalf("the copy, where Copy wrote it: %v", err)
		}
	}
}

// unbind rewrites backup id's manifest as one written before manifests
// named their location, signed with priv.
func unbind(t *testing.T, repo Repo, cluster, id string, priv ed25519.PrivateKey) {
	t.Helper()
	resign(t, repo, cluster, id, priv, func(m *Manifest) { m.Location = "" })
}

// A manifest written before manifests named their location (none) still
// verifies where it is, and is reported unbound; as before, it also
// verifies wherever it is copied, which is why Copy binds its copy.
func TestUnboundManifestVerifies(t *testing.T) {
	ctx := context.Background()
	st := backuptest.FileStore(t)
	src := Repo{Store: st, Prefix: "tenant-a/"}
	f := newLocationFixture(t, src)
	unbind(t, src, f.m.ClusterID, f.m.ID, f.priv)
	m, err := Describe(ctx, src, f.m.ClusterID, f.m.ID)
	if err != nil || m.Bound() {
		t.Fatalf("unbound manifest: bound %t, %v", m != nil && m.Bound(), err)
	}
	if err := Verify(ctx, src, f.m.ClusterID, f.m.ID, f.verifyOptions()); err != nil {
		t.Fatalf("unbound manifest where it is: %v", err)
	}
	dst := Repo{Store: st, Prefix: "tenant-b/"}
	cm, err := Copy(ctx, src, f.m.ClusterID, f.m.ID, dst, CopyOptions{PublicKey: f.pub, Identities: []wrap.Identity{f.kr},
		Recipients: []wrap.Recipient{f.kr}, SigningKey: f.priv})
	if err != nil {
		t.Fatal(err)
	}
	if !cm.Bound() {
		t.Fatal("the copy of an unbound backup is unbound")
	}
	if err := Verify(ctx, dst, cm.ClusterID, cm.ID, f.verifyOptions()); err != nil {
		t.Fatalf("the copy: %v", err)
	}
}

// A bound manifest whose location names another backup, or a bad prefix,
// does not parse.
func TestManifestLocationValidated(t *testing.T) {
	m := fixedManifest()
	m.Signature = make([]byte, ed25519.SignatureSize)
	for _, loc := range []string{
		"clusters/" + m.ClusterID + "/backups/" + m.ID,
		"clusters/other/backups/" + m.ID + "/",
		"x/clusters/" + m.ClusterID + "/backups/backup-20250101T000000Z-aaaaaaaaaa/",
		"../clusters/" + m.ClusterID + "/backups/" + m.ID + "/",
		"a//clusters/" + m.ClusterID + "/backups/" + m.ID + "/",
	} {
		c := *m
		c.Location = loc
		if err := c.validate(); err == nil {
			t.Errorf("location %q accepted", loc)
		}
	}
	for _, loc := range []string{"", "clusters/" + m.ClusterID + "/backups/" + m.ID + "/", "a/b/clusters/" + m.ClusterID + "/backups/" + m.ID + "/"} {
		c := *m
		c.Location = loc
		if err := c.validate(); err != nil {
			t.Errorf("location %q: %v", loc, err)
		}
	}
}
