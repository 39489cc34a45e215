package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/hsmbackup/hsmbackup/backup"
)

// TestSchedulerBadObjects: a store holding a corrupted newest backup, a
// truncated manifest and an image whose manifest was deleted does not stop
// the fleet: scheduled runs keep backing up, the retention after each
// prunes nothing good, list and prune work for every other backup, and
// each bad object is reported. (That prune never counts a corrupt backup
// nor expires one still needed is backup's TestInvalidManifestsSkipped and
// TestPruneCorruptNewest.)
func TestSchedulerBadObjects(t *testing.T) {
	c := newCluster(t)
	s := newService(t, c, "file://"+filepath.Join(c.dir, "store"))
	orphaned, truncated, corrupt := s.create(t), s.create(t), s.create(t)
	if err := os.Remove(s.object(orphaned, backup.ManifestObject)); err != nil {
		t.Fatal(err)
	}
	m, err := os.ReadFile(s.object(truncated, backup.ManifestObject))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.object(truncated, backup.ManifestObject), m[:len(m)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(s.object(corrupt, backup.ImageObject))
	if err != nil {
		t.Fatal(err)
	}
	img[len(img)/3] ^= 1
	if err := os.WriteFile(s.object(corrupt, backup.ImageObject), img, 0o600); err != nil {
		t.Fatal(err)
	}

	b, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["clusters"].(map[string]any)[testCluster].(map[string]any)["schedule"] = "*/2 * * * * *"
	cfg["scheduler"] = map[string]any{"lease_duration": "3s", "jitter": "0s"}
	if b, err = yaml.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.config, b, 0o600); err != nil {
		t.Fatal(err)
	}
	logs := new(syncBuffer)
	cmd := exec.Command(Binary(t), "--config", s.config, "scheduler", "run", "--listen", "")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }() //nolint:errcheck
	t.Cleanup(func() {
		cmd.Process.Kill() //nolint:errcheck
		<-exited
		if t.Failed() {
			t.Logf("scheduler log:\n%s", logs)
		}
	})
	waitFor(t, "three scheduled backups", exited, logs, func() bool { return strings.Count(logs.String(), `"msg":"backup done"`) >= 3 })
	cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
	<-exited
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(logs.String(), `"msg":"maintenance after the backup failed"`) || !strings.Contains(logs.String(), truncated) {
		t.Error("the retention after a backup does not report the invalid manifest")
	}

	// list: every good backup, the truncated one INVALID, exit 0.
	res := s.cliRes(t, "backup", "list")
	if res.Code != 0 {
		t.Fatalf("backup list: %s", res)
	}
	if !strings.Contains(res.Stdout, truncated+" ") || !strings.Contains(res.Stdout, "INVALID") {
		t.Errorf("backup list does not report the truncated manifest:\n%s", res.Stdout)
	}
	if n := strings.Count(res.Stdout, " READY "); n < 4 { // the corrupt one and the three new
		t.Errorf("%d READY backups listed:\n%s", n, res.Stdout)
	}
	// The orphaned image, and the corrupt backup by verify.
	if out := s.cli(t, "backup", "list", "--orphans"); !strings.Contains(out, orphaned) {
		t.Errorf("the orphaned image is not reported:\n%s", out)
	}
	if res := s.cliRes(t, "backup", "verify", corrupt); res.Code != 4 {
		t.Errorf("verify of the corrupted backup: %s", res)
	}
	// prune: reports the bad ones, touches no good one.
	res = s.cliRes(t, "backup", "prune", "--dry-run")
	if !strings.Contains(res.Stdout, truncated) {
		t.Errorf("prune does not report the invalid manifest:\n%s", res)
	}
	for _, l := range strings.Split(res.Stdout, "\n") {
		if strings.Contains(l, "PENDING_DELETION") && !strings.Contains(l, corrupt) {
			t.Errorf("prune would expire a good backup: %s", l)
		}
	}
}
