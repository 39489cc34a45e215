package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	hsmcluster "github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/internal/miniotest"
)

// restoreArgs are the arguments of `restore` of backup id into targets,
// with the claim file of each new HSM among them (newHSM made it), as an
// operator gives them.
func (c *cluster) restoreArgs(id string, targets ...string) []string {
	args := []string{"restore", "--backup", id}
	for _, t := range targets {
		args = append(args, "--to", t)
	}
	return append(args, c.claimArgs(targets...)...)
}

// TestBackupRestoreFileStore is a backup's whole life with the embedded
// file store, through the CLI: a cluster with a crypto user's keys is
// backed up, listed, verified (deeply, and offline with the public key
// alone) and described; then restored into a new HSM and cloned into
// another, where the user's keys decrypt and verify what they did before.
// Restores into HSMs of another operator or older firmware, and restores
// of a backup with a flipped byte, are refused and leave the target as it
// was.
func TestBackupRestoreFileStore(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	keys := c.addAppKeys(t)
	s := newService(t, c, "file://"+filepath.Join(c.dir, "store"))
	src := c.status(t) // what the backup must hold

	id := s.create(t, "--tag", "env=test")
	list := s.list(t)
	if len(list) != 1 {
		t.Fatalf("backup list: %d backups, want 1: %+v", len(list), list)
	}
	if b := list[0]; b.ID != id || b.State != "READY" || b.ClusterID != testCluster || b.Source.Serial != c.serial ||
		b.Tags["env"] != "test" || b.Tags["owner"] != "payments" {
		t.Fatalf("backup list: %+v, want %s READY of cluster %s from HSM %s, tagged env=test and (from the config) owner=payments",
			b, id, testCluster, c.serial)
	}
	if out := s.cli(t, "backup", "list"); !regexp.MustCompile(`(?m)^` + id + `\s+` + testCluster + `\s+READY\s`).MatchString(out) {
		t.Fatalf("backup list (text) lacks the backup:\n%s", out)
	}

	out := s.cli(t, "backup", "verify", "--deep", id)
	wantLines(t, out, id+" of cluster "+testCluster+": OK (signature, object hash, outer layer, inner header)")
	// Offline: no config, no keyring, no signing key; the store and the
	// public key are enough.
	out = s.ok(t, "--store", s.store, "backup", "verify", "--offline", "--public-key", s.publicKey, id)
	wantLines(t, out, id+" of cluster "+testCluster+": OK (signature, object hash)")

	out = s.cli(t, "backup", "describe", id)
	if got, want := field(t, out, "source HSM:"), fmt.Sprintf("serial %s, class %s, manufacturer %s, operator %s, firmware %s, FIPS false",
		c.serial, testClass, testMfr, testOperator, testFirmware); got != want {
		t.Errorf("describe: source HSM %q, want %q", got, want)
	}
	fp := field(t, out, "PBK fingerprint:")
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(fp) || len(src.PBKFingerprint) < 16 || !strings.HasPrefix(fp, src.PBKFingerprint) {
		t.Errorf("describe: PBK fingerprint %q, want 32 bytes of hex starting with the HSM's %q", fp, src.PBKFingerprint)
	}
	if got := field(t, out, "state:"); got != "READY" {
		t.Errorf("describe: state %q", got)
	}

	// Two new HSMs of the same class, manufacturer and operator.
	op := filepath.Join(c.dir, "op")
	a := c.newHSM(t, "target-a", op, testFirmware)
	b := c.newHSM(t, "target-b", op, testFirmware)
	beforeA, beforeB := c.health(t, a), c.health(t, b)
	if beforeA.Initialized || beforeA.ClusterInitialized {
		t.Fatalf("a new HSM is initialized: %+v", beforeA)
	}

	// A dry run changes nothing, and so needs no claim file.
	out = s.cli(t, "restore", "--backup", id, "--to", a, "--dry-run")
	wantLines(t, out, id+" would restore into HSM "+beforeA.Serial+" at "+a, "dry run: every check passed; no HSM was changed")
	c.wantUnchanged(t, a, beforeA)
	// A restore does, and without the new HSM's claim file it is refused.
	wantFailure(t, s.cliRes(t, "restore", "--backup", id, "--to", a),
		"HSM "+beforeA.Serial+" is not claimed yet: a claim proof is required (the claim file hsm manufacture wrote for it): permission denied")
	c.wantUnchanged(t, a, beforeA)

	t.Run("another operator", func(t *testing.T) {
		c.run(t, "hsm", "authority", "create", "--kind", "operator", "--name", "other-cloud", "--out", filepath.Join(c.dir, "op2"))
		x := c.newHSM(t, "other-operator", filepath.Join(c.dir, "op2"), testFirmware)
		before := c.health(t, x)
		wantFailure(t, s.cliRes(t, c.restoreArgs(id, x)...), "target "+x, "attestation rejected", "operator")
		c.wantUnchanged(t, x, before)
	})
	t.Run("older firmware", func(t *testing.T) {
		x := c.newHSM(t, "old-firmware", op, "2.0.9")
		before := c.health(t, x)
		wantFailure(t, s.cliRes(t, c.restoreArgs(id, x)...), "target "+x, "attestation rejected", "firmware")
		c.wantUnchanged(t, x, before)
	})
	t.Run("flipped byte in image", func(t *testing.T) {
		var d struct {
			Manifest struct {
				OuterHeader []byte `json:"outer_header"`
				ObjectSize  int    `json:"object_size"`
			} `json:"manifest"`
		}
		err := json.Unmarshal([]byte(s.cli(t, "--json", "backup", "describe", id)), &d)
		m := d.Manifest
		if err != nil || len(m.OuterHeader) < 16 {
			t.Fatalf("describe --json: %v, outer header of %d bytes", err, len(m.OuterHeader))
		}
		h, n := len(m.OuterHeader), m.ObjectSize
		// The outer header's first bytes, middle and last byte, the body's
		// first byte, middle, last tag and last byte.
		tamper(t, s.object(id, backup.ImageObject), []int{0, 1, h / 2, h - 1, h, h + (n-h)/2, n - 17, n - 1}, func(t *testing.T) {
			wantFailure(t, s.cliRes(t, "backup", "verify", "--deep", id), "backup "+id, "image object does not match its manifest")
			wantFailure(t, s.cliRes(t, c.restoreArgs(id, a)...), "backup "+id, "image object does not match its manifest")
			c.wantUnchanged(t, a, beforeA)
		})
	})
	t.Run("flipped byte in manifest", func(t *testing.T) {
		path := s.object(id, backup.ManifestObject)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		n := int(fi.Size())
		var offsets []int
		for i := range 8 {
			offsets = append(offsets, i*(n-1)/7)
		}
		tamper(t, path, offsets, func(t *testing.T) {
			wantFailure(t, s.cliRes(t, "backup", "verify", "--deep", id), "invalid manifest")
			wantFailure(t, s.cliRes(t, c.restoreArgs(id, a)...), "invalid manifest")
			c.wantUnchanged(t, a, beforeA)
		})
	})
	if t.Failed() {
		return
	}
	out = s.cli(t, "backup", "verify", "--deep", id) // the tampering is undone
	wantLines(t, out, id+" of cluster "+testCluster+": OK")

	// The restore: into A, then B cloned from A.
	out = s.cli(t, append(c.restoreArgs(id, a, b), "--user", testOfficer, "--password-file", c.passwordFile, "--cert", c.cert, "--key", c.key)...)
	wantLines(t, out, id+" restored into HSM "+beforeA.Serial+" at "+a, id+" cloned into HSM "+beforeB.Serial+" at "+b)
	for _, addr := range []string{a, b} {
		h := c.health(t, addr)
		if !restoredFrom(h, src, c.health(t, a)) || !h.Initialized || !h.ClusterInitialized || h.ClusterID != testCluster {
			t.Fatalf("HSM %s after the restore: %+v; want cluster %s in the state of the backed-up HSM %+v", addr, h, testCluster, src)
		}
		keys.check(t, c, addr)
	}
	if h := c.health(t, a); h.Serial != beforeA.Serial {
		t.Fatalf("restored HSM reports serial %s, was %s", h.Serial, beforeA.Serial)
	}
}

// tamper flips a bit of the byte of the file at path at each offset in
// turn, runs check, and puts the original back after each.
func tamper(t *testing.T, path string, offsets []int, check func(t *testing.T)) {
	t.Helper()
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range offsets {
		t.Run(fmt.Sprintf("offset %d of %d", off, len(orig)), func(t *testing.T) {
			defer func() {
				if err := os.WriteFile(path, orig, fi.Mode().Perm()); err != nil {
					t.Fatal(err)
				}
			}()
			bad := bytes.Clone(orig)
			bad[off] ^= 0x01
			if err := os.WriteFile(path, bad, fi.Mode().Perm()); err != nil {
				t.Fatal(err)
			}
			check(t)
		})
	}
}

// TestBackupLifecycle: tags, pinning, delete and restore-deleted, prune
// (a dry run changes nothing) and copy to another store, all through the
// CLI; a backup pending deletion is not restored.
func TestBackupLifecycle(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	s := newService(t, c, "file://"+filepath.Join(c.dir, "store"))
	id := s.create(t, "--tag", "team=payments")
	wantFailure(t, s.cliRes(t, "backup", "create", "--cluster", testCluster, "--never-expires", "--retention-days", "30"), "exclude each other")

	out := s.cli(t, "backup", "tag", id, "--set", "env=prod", "--remove", "team")
	wantLines(t, out, "tagged "+id+": READY, expiry cluster policy, tags env=prod,owner=payments")
	if got := s.list(t, "--tag", "env=prod"); len(got) != 1 || got[0].ID != id || got[0].Tags["team"] != "" {
		t.Fatalf("list --tag env=prod after tagging: %+v", got)
	}
	if got := s.list(t, "--tag", "team=payments"); len(got) != 0 {
		t.Fatalf("list --tag team=payments after removing it: %+v", got)
	}

	out = s.cli(t, "backup", "set-never-expires", id)
	wantLines(t, out, "pinned "+id+": READY, expiry never, tags env=prod,owner=payments")
	if got := s.list(t); len(got) != 1 || !got[0].NeverExpires {
		t.Fatalf("list after set-never-expires: %+v", got)
	}

	earliest := time.Now().UTC().Add(backup.PendingDeletionPeriod)
	out = s.cli(t, "backup", "delete", id)
	latest := time.Now().UTC().Add(backup.PendingDeletionPeriod)
	if !regexp.MustCompile(`(?m)^deleted ` + id + `: PENDING_DELETION, expiry purged after (` + earliest.Format(time.DateOnly) + `|` + latest.Format(time.DateOnly) + `), tags env=prod,owner=payments$`).MatchString(out) {
		t.Fatalf("backup delete:\n%s", out)
	}
	if got := s.list(t, "--state", "PENDING_DELETION"); len(got) != 1 || got[0].ID != id || got[0].State != "PENDING_DELETION" {
		t.Fatalf("list --state PENDING_DELETION: %+v", got)
	}
	if got := s.list(t, "--state", "ready"); len(got) != 0 {
		t.Fatalf("list --state ready: %+v", got)
	}
	// A backup pending deletion is not restored, nor copied.
	x := c.newHSM(t, "target", filepath.Join(c.dir, "op"), testFirmware)
	before := c.health(t, x)
	wantFailure(t, s.cliRes(t, c.restoreArgs(id, x)...), "is PENDING_DELETION", "restore-deleted")
	c.wantUnchanged(t, x, before)
	wantFailure(t, s.cliRes(t, "backup", "copy", id, "--to", "file://"+filepath.Join(c.dir, "nowhere")), "PENDING_DELETION")

	out = s.cli(t, "backup", "restore-deleted", id)
	wantLines(t, out, "restored "+id+": READY, expiry never, tags env=prod,owner=payments")
	wantLines(t, s.cli(t, "backup", "verify", "--deep", id), id+" of cluster "+testCluster+": OK")

	t.Run("prune", func(t *testing.T) {
		// An older backup: what the store would hold had backup create run
		// 40 days ago.
		old := s.aged(t, id, 40)
		snapshot := func() map[string]string {
			files := map[string]string{}
			err := filepath.WalkDir(filepath.Join(s.storeDir, "clusters"), func(path string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				data, err := os.ReadFile(path)
				files[path] = string(data)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			return files
		}
		before := snapshot()
		out := s.cli(t, "backup", "prune", "--dry-run")
		wantLines(t, out, "dry run: nothing changed; prune would make these changes:")
		row := regexp.MustCompile(`(?m)^` + old + `\s+` + testCluster + `\s+READY\s+PENDING_DELETION\s+40 days old, retention 30 days\s+would$`)
		if !row.MatchString(out) || strings.Contains(out, id) {
			t.Fatalf("prune --dry-run: want only %s to go READY to PENDING_DELETION:\n%s", old, out)
		}
		after := snapshot()
		if len(after) != len(before) || len(before) != 4 {
			t.Fatalf("prune --dry-run: %d files in the store, was %d (want 4)", len(after), len(before))
		}
		for path, data := range before {
			if after[path] != data {
				t.Fatalf("prune --dry-run changed %s", path)
			}
		}

		out = s.cli(t, "backup", "prune")
		if !regexp.MustCompile(`(?m)^` + old + `\s+` + testCluster + `\s+READY\s+PENDING_DELETION\s+.*\sdone$`).MatchString(out) {
			t.Fatalf("prune:\n%s", out)
		}
		if got := s.list(t, "--state", "PENDING_DELETION"); len(got) != 1 || got[0].ID != old {
			t.Fatalf("after prune, pending deletion: %+v, want %s", got, old)
		}
		if got := s.list(t, "--state", "READY"); len(got) != 1 || got[0].ID != id {
			t.Fatalf("after prune, ready: %+v, want the pinned %s", got, id)
		}
	})

	t.Run("copy", func(t *testing.T) {
		other := "file://" + filepath.Join(c.dir, "dr-store")
		drKeyring := filepath.Join(s.dir, "dr.keyring")
		s.ok(t, "masterkey", "generate", "--keyring", drKeyring, "--id", "dr")
		out := s.cli(t, "backup", "copy", id, "--to", other, "--to-keyring", drKeyring)
		m := regexp.MustCompile(`(?m)^copied ` + id + ` to ` + regexp.QuoteMeta(other) + ` as (backup-\S+) \(outer layer: (.+)\)$`).FindStringSubmatch(out)
		if m == nil || m[1] == id {
			t.Fatalf("backup copy:\n%s", out)
		}
		cp := m[1]
		out = s.cli(t, "--store", other, "backup", "verify", "--deep", "--keyring", drKeyring, cp)
		wantLines(t, out, cp+" of cluster "+testCluster+": OK (signature, object hash, outer layer, inner header)")
		// Wrapped to the DR keyring only: the source's keyring cannot open it.
		wantFailure(t, s.cliRes(t, "--store", other, "backup", "verify", "--deep", cp), "outer layer does not open")
		out = s.cli(t, "--store", other, "backup", "describe", cp)
		if got := field(t, out, "copied from:"); got != id+" of cluster "+testCluster {
			t.Fatalf("describe of the copy: copied from %q, want %s of cluster %s", got, id, testCluster)
		}
		// By default the copy is wrapped to the same keyring.
		out = s.cli(t, "backup", "copy", id, "--to", other)
		m = regexp.MustCompile(`(?m)^copied ` + id + ` to ` + regexp.QuoteMeta(other) + ` as (backup-\S+) `).FindStringSubmatch(out)
		if m == nil || m[1] == cp {
			t.Fatalf("backup copy:\n%s", out)
		}
		wantLines(t, s.cli(t, "--store", other, "backup", "verify", "--deep", m[1]), m[1]+" of cluster "+testCluster+": OK")
		if got := s.list(t); len(got) != 2 {
			t.Fatalf("the source store after the copies: %+v", got)
		}
		if got := s.list(t, "--store", other); len(got) != 2 || got[0].SourceBackup != id || got[1].SourceBackup != id {
			t.Fatalf("the other store after the copies: %+v", got)
		}
	})
}

// aged stores a copy of backup id as if backup create had made it days
// earlier: the same image, under a manifest dated then and signed with the
// service's key. Only time is simulated.
func (s *service) aged(t *testing.T, id string, days int) string {
	t.Helper()
	data, err := os.ReadFile(s.object(id, backup.ManifestObject))
	if err != nil {
		t.Fatal(err)
	}
	m, err := backup.ParseManifest(data)
	if err != nil {
		t.Fatal(err)
	}
	m.Created = m.Created.Add(-time.Duration(days) * 24 * time.Hour)
	oldID := m.ID
	m.ID = "backup-" + m.Created.Format("20060102T150405Z") + "-agedcopyaa"
	m.Location = strings.Replace(m.Location, oldID, m.ID, 1) // written there, as if by backup create
	m.NeverExpires, m.RetentionDays, m.Tags = false, 0, nil
	key, err := backup.LoadSigningKey(s.signingKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Sign(key); err != nil {
		t.Fatal(err)
	}
	data, err = m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	image, err := os.ReadFile(s.object(id, backup.ImageObject))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(s.object(m.ID, backup.ImageObject)), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{backup.ImageObject: image, backup.ManifestObject: data} {
		if err := os.WriteFile(s.object(m.ID, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return m.ID
}

// s3Service is a service whose store is a fresh bucket of MinIO, reached
// at endpoint (MinIO's, or a proxy's), with the prefix "hsm".
func s3Service(t testing.TB, c *cluster, srv *miniotest.Server, bucket, endpoint string) *service {
	t.Helper()
	url := fmt.Sprintf("s3://%s/hsm?endpoint=%s&region=us-east-1", bucket, endpoint)
	s := newService(t, c, url, "AWS_ACCESS_KEY_ID="+srv.AccessKey, "AWS_SECRET_ACCESS_KEY="+srv.SecretKey)
	t.Cleanup(func() {
		for _, out := range c.outputs {
			if strings.Contains(out, srv.SecretKey) {
				t.Errorf("the S3 secret key appears in output:\n%s", out)
			}
		}
	})
	return s
}

// objects lists the objects of bucket under prefix.
func objects(t *testing.T, srv *miniotest.Server, bucket, prefix string) []string {
	t.Helper()
	var keys []string
	for oi := range srv.Client(t).ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if oi.Err != nil {
			t.Fatal(oi.Err)
		}
		keys = append(keys, oi.Key)
	}
	return keys
}

// TestBackupMinIO is the round trip against a real MinIO: create, list,
// verify --deep, restore into a new HSM where the keys work.
func TestBackupMinIO(t *testing.T) {
	t.Parallel()
	srv := miniotest.Shared(t)
	bucket := srv.NewBucket(t, miniotest.BucketOptions{})
	c := newCluster(t)
	keys := c.addAppKeys(t)
	s := s3Service(t, c, srv, bucket, srv.URL())
	src := c.status(t)

	id := s.create(t)
	if got := s.list(t); len(got) != 1 || got[0].ID != id || got[0].State != "READY" || got[0].Source.Serial != c.serial {
		t.Fatalf("backup list: %+v", got)
	}
	dir := "hsm/clusters/" + testCluster + "/backups/" + id + "/"
	if got, want := strings.Join(objects(t, srv, bucket, ""), " "), dir+"image "+dir+"manifest.json"; got != want {
		t.Fatalf("objects in the bucket: %s, want %s", got, want)
	}
	wantLines(t, s.cli(t, "backup", "verify", "--deep", id), id+" of cluster "+testCluster+": OK (signature, object hash, outer layer, inner header)")

	a := c.newHSM(t, "target", filepath.Join(c.dir, "op"), testFirmware)
	before := c.health(t, a)
	out := s.cli(t, c.restoreArgs(id, a)...)
	wantLines(t, out, id+" restored into HSM "+before.Serial+" at "+a)
	if h := c.health(t, a); h.StateDigest != src.StateDigest {
		t.Fatalf("restored HSM: state digest %s, want %s", h.StateDigest, src.StateDigest)
	}
	keys.check(t, c, a)

	t.Run("into a configured cluster", func(t *testing.T) {
		// The cluster's HSMs are lost; the config names new ones, and
		// --to names the cluster: the first is restored, the second
		// cloned, with the config's credentials. The service then backs
		// up the new cluster.
		op := filepath.Join(c.dir, "op")
		members := []string{c.newHSM(t, "new-1", op, testFirmware), c.newHSM(t, "new-2", op, testFirmware)}
		dr := *s
		dr.config = s.writeConfig(t, "dr.yaml", s.store, members...)
		dr.source = c.health(t, members[0]).Serial // the first in the config, all being equal
		out := dr.cli(t, append(c.restoreArgs(id, testCluster), c.claimArgs(members...)...)...)
		wantLines(t, out, id+" restored into HSM ", id+" cloned into HSM ")
		for _, m := range members {
			if h := c.health(t, m); !restoredFrom(h, src, c.health(t, members[0])) {
				t.Fatalf("member %s: %+v, want the state of %+v", m, h, src)
			}
			keys.check(t, c, m)
		}
		again := dr.create(t)
		// Two backups, ids sorted: within one second, not by time.
		if got := dr.list(t); len(got) != 2 || (got[0].ID != again && got[1].ID != again) || got[0].ID == got[1].ID {
			t.Fatalf("backups after backing up the restored cluster: %+v", got)
		}
	})

	t.Run("rollback", func(t *testing.T) {
		// The source HSM changes after the backup; restoring the backup
		// into it, initialized as it is, takes a crypto officer, and
		// brings it back to the backed-up state.
		ctx := context.Background()
		cu := c.client(t, c.cert, c.key)
		if _, err := cu.Login(ctx, keys.user, keys.password); err != nil {
			t.Fatal(err)
		}
		if err := cu.DeleteKey(ctx, keys.ec); err != nil {
			t.Fatal(err)
		}
		if c.status(t).StateDigest == src.StateDigest {
			t.Fatal("deleting a key left the state digest unchanged")
		}
		before := c.health(t, c.addr)
		wantFailure(t, s.cliRes(t, append(c.restoreArgs(id, c.addr), "--user", "nobody")...), "login nobody: login failed")
		c.wantUnchanged(t, c.addr, before)
		out := s.cli(t, append(c.restoreArgs(id, c.addr), "--user", testOfficer, "--password-file", c.passwordFile)...)
		wantLines(t, out, id+" restored into HSM "+c.serial+" at "+c.addr)
		if got := c.status(t).StateDigest; got != src.StateDigest {
			t.Fatalf("state digest after the rollback %s, want %s", got, src.StateDigest)
		}
		keys.check(t, c, c.addr)
	})
}

// bigImageKeys is how many 4096-bit secrets TestBackupKilledMidUpload
// puts in its HSM: an image of about 28 MB, over one 16 MiB S3 part by
// more than the HTTP/2 flow-control window (4 MiB) of the image stream,
// so that a CLI whose HSM is frozen cannot finish the upload.
const bigImageKeys = 48000

// TestBackupKilledMidUpload kills `backup create` with SIGKILL while its
// upload is in progress and its HSM frozen mid-export: no backup is listed
// and no object is left, the HSM goes on serving, and the next backup
// succeeds.
func TestBackupKilledMidUpload(t *testing.T) {
	t.Parallel()
	c := newCluster(t, "--capacity", fmt.Sprint(bigImageKeys+100))
	fillKeys(t, c, bigImageKeys)

	// start runs backup create in the background.
	start := func(t *testing.T, s *service) (*exec.Cmd, chan struct{}, *syncBuffer) {
		cmd := exec.Command(Binary(t), "--config", s.config, "backup", "create", "--cluster", testCluster)
		cmd.Env = append(os.Environ(), s.env...)
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() {
			cmd.Wait()
			close(exited)
		}()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
			c.outputs = append(c.outputs, out.String())
		})
		return cmd, exited, out
	}
	// kill freezes the HSM, kills the CLI, and lets the HSM go on.
	kill := func(t *testing.T, cmd *exec.Cmd, exited chan struct{}) {
		Signal(t, c.addr, syscall.SIGSTOP)
		cmd.Process.Signal(syscall.SIGKILL)
		<-exited
		Signal(t, c.addr, syscall.SIGCONT)
		if st := cmd.ProcessState; st.Exited() || st.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("backup create ended before it was killed: %v", st)
		}
	}
	// next checks that the next backup succeeds, is listed and verifies,
	// and returns what it logged.
	next := func(t *testing.T, s *service) string {
		res := s.cliRes(t, "backup", "create", "--cluster", testCluster)
		m := createdLine.FindStringSubmatch(res.Stdout)
		if res.Code != 0 || m == nil {
			t.Fatalf("the next backup create: %s", res)
		}
		id := m[1]
		if got := s.list(t); len(got) != 1 || got[0].ID != id || got[0].State != "READY" {
			t.Fatalf("after the next backup: %+v, want %s only", got, id)
		}
		wantLines(t, s.cli(t, "backup", "verify", "--deep", id), id+" of cluster "+testCluster+": OK")
		return res.Stderr
	}

	t.Run("file store", func(t *testing.T) {
		s := newService(t, c, "file://"+filepath.Join(c.dir, "store"))
		tmp := filepath.Join(s.storeDir, ".tmp")
		cmd, exited, log := start(t, s)
		// Wait until the image is streaming into a temporary file.
		var part string
		waitFor(t, "a temporary file of over 1 MiB in "+tmp, exited, log, func() bool {
			ents, _ := os.ReadDir(tmp)
			for _, e := range ents {
				if fi, err := e.Info(); err == nil && fi.Size() > 1<<20 {
					part = filepath.Join(tmp, e.Name())
					return true
				}
			}
			return false
		})
		kill(t, cmd, exited)

		// Nothing committed: no object at all under clusters/.
		if _, err := os.Stat(filepath.Join(s.storeDir, "clusters")); !os.IsNotExist(err) {
			var files []string
			filepath.WalkDir(filepath.Join(s.storeDir, "clusters"), func(p string, d fs.DirEntry, _ error) error {
				files = append(files, p)
				return nil
			})
			t.Fatalf("objects left by a killed backup: %v", files)
		}
		if out := s.cli(t, "backup", "list"); out != "no backups\n" {
			t.Fatalf("backup list after the kill:\n%s", out)
		}
		if got := s.list(t); len(got) != 0 {
			t.Fatalf("backup list --json after the kill: %+v", got)
		}
		// The killed upload's temporary file is left, never listed. Once
		// it has been idle for a day, the next backup removes it (the
		// day is simulated; live writers are spared however idle, which
		// store/file's tests show).
		fi, err := os.Stat(part)
		if err != nil {
			t.Fatalf("the killed upload's temporary file: %v", err)
		}
		t.Logf("the killed upload left %d bytes in %s", fi.Size(), part)
		past := time.Now().Add(-25 * time.Hour)
		if err := os.Chtimes(part, past, past); err != nil {
			t.Fatal(err)
		}
		logged := next(t, s)
		if !strings.Contains(logged, `msg="stale uploads removed" count=1`) {
			t.Errorf("the next backup did not log removing the stale upload:\n%s", logged)
		}
		if ents, err := os.ReadDir(tmp); err != nil || len(ents) != 0 {
			t.Fatalf("%s after the next backup: %v, %v; want it empty", tmp, ents, err)
		}
	})

	t.Run("MinIO", func(t *testing.T) {
		srv := miniotest.Shared(t)
		bucket := srv.NewBucket(t, miniotest.BucketOptions{})
		w := newS3Watch(t, srv.Endpoint)
		s := s3Service(t, c, srv, bucket, w.URL)
		cmd, exited, log := start(t, s)
		// The upload of the image's first part waits in the proxy until
		// the HSM is frozen, then goes to MinIO; once MinIO has it, the
		// CLI is killed waiting for the rest of the image.
		var up [2]string
		waitFor(t, "the upload of the image's first part", exited, log, func() bool {
			select {
			case up = <-w.partStarted:
				return true
			default:
				return false
			}
		})
		Signal(t, c.addr, syscall.SIGSTOP)
		close(w.release)
		waitFor(t, "MinIO's answer to the first part", exited, log, func() bool {
			select {
			case <-w.partDone:
				return true
			default:
				return false
			}
		})
		kill(t, cmd, exited)
		for _, r := range w.seen() {
			if strings.Contains(r, "partNumber=2") || (strings.HasPrefix(r, "POST ") && strings.Contains(r, "uploadId=")) {
				t.Fatalf("the upload went on past part 1 (%s): the image is too small for this test", r)
			}
		}
		if got := objects(t, srv, bucket, ""); len(got) != 0 {
			t.Fatalf("objects left by a killed backup: %v", got)
		}
		if got := s.list(t); len(got) != 0 {
			t.Fatalf("backup list after the kill: %+v", got)
		}
		// What is left is the multipart upload the kill interrupted, with
		// its first part: never an object, never listed. (MinIO lists
		// incomplete uploads for the whole bucket or one exact key, not
		// for a prefix, so the store's RemoveStaleUploads lists the
		// bucket's and keeps those under its prefix; it aborts them once
		// a day old, as one younger may be another backup's in progress:
		// store/s3 TestRemoveStaleUploads.)
		key, uploadID := strings.TrimPrefix(up[0], "/"+bucket+"/"), up[1]
		var uploads []string
		for u := range srv.Client(t).ListIncompleteUploads(context.Background(), bucket, "", true) {
			if u.Err != nil {
				t.Fatal(u.Err)
			}
			uploads = append(uploads, u.Key+" "+u.UploadID)
		}
		if len(uploads) != 1 || uploads[0] != key+" "+uploadID {
			t.Fatalf("incomplete uploads in the bucket: %q, want the killed one only, %s %s", uploads, key, uploadID)
		}

		next(t, s)
	})
}

// waitFor polls cond until it holds, failing t if the process whose
// output is out exits first or a minute passes.
func waitFor(t *testing.T, what string, exited <-chan struct{}, out *syncBuffer, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		select {
		case <-exited:
			t.Fatalf("backup create exited before %s; output:\n%s", what, out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s after a minute; output:\n%s", what, out)
		}
		time.Sleep(time.Millisecond)
	}
}

// restoredFrom reports whether h, an HSM a backup of src was restored or
// cloned into, holds src's state: its keys, users and every change, and
// the same state as first, the HSM restored first. A cluster restored
// into more than one HSM lists those in its member list, so its digest is
// src's only when one HSM was restored.
func restoredFrom(h api.Health, src status, first api.Health) bool {
	return h.StateDigest == first.StateDigest && h.KeyCount == src.KeyCount && h.UserCount == src.UserCount &&
		hsmcluster.Version(h.StateVersion).Covers(src.StateVersion)
}
