package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/internal/miniotest"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/s3"
)

// setObjectLock sets the cluster's object_lock in the config file.
func setObjectLock(t *testing.T, config, mode string, days int) {
	t.Helper()
	data, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["clusters"].(map[string]any)[testCluster].(map[string]any)["object_lock"] = map[string]any{"mode": mode, "days": days}
	if data, err = yaml.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(config, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

var lockedLine = regexp.MustCompile(`(?m)^locked (backup-\S+): (GOVERNANCE|COMPLIANCE) until (\S+)$`)

// TestObjectLockMinIO is object lock end to end, the real binary against
// a real MinIO: backup init makes the bucket with object lock; backup
// create locks the image and the manifest as the cluster's object_lock
// says (extended to the cluster's 30-day retention), or as the flags say;
// the store credential alone cannot delete them; a backup past its
// retention, and a deleted one past its 7 days, are left by prune as
// locked, which is no failure. A bucket without object lock is refused,
// by init and by create, before anything is stored.
func TestObjectLockMinIO(t *testing.T) {
	t.Parallel()
	srv := miniotest.Shared(t)
	ctx := context.Background()
	name := make([]byte, 6)
	rand.Read(name)
	bucket := "lock-" + hex.EncodeToString(name)
	c := newCluster(t)
	s := s3Service(t, c, srv, bucket, srv.URL())
	setObjectLock(t, s.config, "COMPLIANCE", 10)

	out := s.cli(t, "backup", "init", "--create-bucket", "--object-lock")
	wantLines(t, out, "created store s3://"+bucket+"/hsm, with object lock")
	out = s.cli(t, "backup", "init", "--object-lock")
	wantLines(t, out, "store s3://"+bucket+"/hsm exists, with object lock")

	// The attacker's view: the service's store, with its credential.
	st, err := s3.New(s3.Config{Bucket: bucket, Prefix: "hsm", Endpoint: srv.URL(), Region: "us-east-1",
		Credentials: srv.Credentials(), MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	repo := backup.Repo{Store: st}
	create := func(mode string, days int, extra ...string) string {
		t.Helper()
		before := time.Now().UTC().Truncate(time.Second)
		out := s.cli(t, append([]string{"backup", "create", "--cluster", testCluster}, extra...)...)
		m, l := createdLine.FindStringSubmatch(out), lockedLine.FindStringSubmatch(out)
		if m == nil || l == nil || l[1] != m[1] || l[2] != mode {
			t.Fatalf("backup create %s printed no \"created\" and \"locked ID: %s until DATE\" lines:\n%s", strings.Join(extra, " "), mode, out)
		}
		id := m[1]
		until, err := time.Parse(time.RFC3339, l[3])
		if lo, hi := before.Add(time.Duration(days)*24*time.Hour), time.Now().Add(time.Duration(days)*24*time.Hour+time.Second); err != nil || until.Before(lo) || until.After(hi) {
			t.Fatalf("locked until %s, %v; want %d days from now", l[3], err, days)
		}
		for _, obj := range []string{backup.ImageObject, backup.ManifestObject} {
			key := repo.ObjectKey(testCluster, id, obj)
			r, hold, err := st.ObjectLock(ctx, key)
			if err != nil || hold || string(r.Mode) != mode || !r.Until.Equal(until) {
				t.Errorf("%s: lock %+v (hold %t), %v; want %s until %s", key, r, hold, err, mode, until)
			}
		}
		return id
	}
	// The config's 10 days, extended to the cluster's 30-day retention;
	// then the flags beat the config.
	old := create("COMPLIANCE", 30)
	newer := create("GOVERNANCE", 45, "--lock-mode", "governance", "--lock-days", "45")

	// A Delete sent with the store credential, as a thief would, fails.
	for _, id := range []string{old, newer} {
		for _, obj := range []string{backup.ImageObject, backup.ManifestObject} {
			if err := st.Delete(ctx, repo.ObjectKey(testCluster, id, obj)); !errors.Is(err, store.ErrLocked) {
				t.Errorf("delete %s of %s: %v, want ErrLocked", obj, id, err)
			}
		}
		wantLines(t, s.cli(t, "backup", "verify", id), id+" of cluster "+testCluster+": OK")
	}
	out = s.cli(t, "backup", "describe", old)
	if !regexp.MustCompile(`(?m)^object lock: +COMPLIANCE until \S+Z$`).MatchString(out) {
		t.Errorf("describe shows no lock:\n%s", out)
	}

	// Forty days on (the manifest moved into the past and re-signed, as
	// only the service could), the old backup is past its retention but
	// still locked: prune leaves it, says so, and succeeds.
	key, err := backup.LoadSigningKey(s.signingKey)
	if err != nil {
		t.Fatal(err)
	}
	backdate := func(id string, days int) {
		t.Helper()
		m, err := backup.Describe(ctx, repo, testCluster, id)
		if err != nil {
			t.Fatal(err)
		}
		shift := -time.Duration(days) * 24 * time.Hour
		m.Created = m.Created.Add(shift)
		if !m.DeletionRequested.IsZero() {
			m.DeletionRequested = m.DeletionRequested.Add(shift)
		}
		if err := m.Sign(key); err != nil {
			t.Fatal(err)
		}
		b, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		lock := store.Retention{Mode: m.Lock.Mode, Until: m.Lock.Until}
		if err := st.Put(ctx, repo.ObjectKey(testCluster, id, backup.ManifestObject), bytes.NewReader(b), store.PutOptions{Retention: lock}); err != nil {
			t.Fatal(err)
		}
	}
	backdate(old, 40)
	lockedRow := regexp.MustCompile(`(?m)^` + old + ` +` + testCluster + ` +(\S+) +(\S+) +.* locked until (\S+), not deleted$`)
	out = s.cli(t, "backup", "prune")
	if m := lockedRow.FindStringSubmatch(out); m == nil || m[1] != "READY" || m[2] != "PENDING_DELETION" {
		t.Fatalf("prune does not report the expired backup as locked:\n%s", out)
	}
	if got := s.list(t, "--state", "READY"); len(got) != 2 {
		t.Fatalf("READY backups after prune: %+v, want both", got)
	}

	// Deleted by hand ten days ago, it is due to be purged: it is not.
	s.cli(t, "backup", "delete", old)
	backdate(old, 10)
	out = s.cli(t, "backup", "prune")
	if m := lockedRow.FindStringSubmatch(out); m == nil || m[1] != "PENDING_DELETION" || m[2] != "DELETED" {
		t.Fatalf("prune does not report the deleted backup as locked:\n%s", out)
	}
	if got := s.list(t, "--state", "PENDING_DELETION"); len(got) != 1 || got[0].ID != old {
		t.Fatalf("PENDING_DELETION backups after prune: %+v", got)
	}
	if _, err := st.Stat(ctx, repo.ObjectKey(testCluster, old, backup.ImageObject)); err != nil {
		t.Errorf("the locked image after prune: %v", err)
	}
	s.cli(t, "backup", "restore-deleted", old)

	// A bucket without object lock: init --object-lock refuses it, and a
	// locked backup create fails before anything is stored.
	plain := srv.NewBucket(t, miniotest.BucketOptions{})
	url := fmt.Sprintf("s3://%s/hsm?endpoint=%s&region=us-east-1", plain, srv.URL())
	wantFailure(t, s.cliRes(t, "backup", "init", "--store", url, "--object-lock"), "bucket "+plain+" has no object lock")
	wantFailure(t, s.cliRes(t, "backup", "create", "--store", url, "--cluster", testCluster), "bucket "+plain+" has no object lock")
	if objs := objects(t, srv, plain, ""); len(objs) != 0 {
		t.Errorf("objects in the bucket without object lock: %q", objs)
	}
}
