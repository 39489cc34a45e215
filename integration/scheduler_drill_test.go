package integration

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/hsmbackup/hsmbackup/backup"
)

// TestSchedulerDrills: the daemon runs a cluster's drill on its schedule:
// it restores the newest backup into the scratch HSM, checks it, zeroizes
// it and records the restore time, and the cluster is green; when the
// newest backup is corrupted, the next drill fails, the scratch HSM is
// left new, and the status page and `scheduler status` show the cluster
// red with the reason.
func TestSchedulerDrills(t *testing.T) {
	c := newCluster(t)
	c.addAppKeys(t)
	s := newService(t, c, "file://"+filepath.Join(c.dir, "store"))
	good := s.create(t)
	scratch := c.newHSM(t, "scratch", filepath.Join(c.dir, "op"), testFirmware)
	cfg := s.drillConfig(t, "drill.yaml", scratch)
	// Drills only (no backup schedule, so that no new backup hides the
	// corrupted one), every two seconds.
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m["clusters"].(map[string]any)[testCluster].(map[string]any)["drill"].(map[string]any)["schedule"] = "*/2 * * * * *"
	m["scheduler"] = map[string]any{"lease_duration": "3s", "jitter": "0s"}
	if b, err = yaml.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}

	listen := freeAddr(t)
	logs := new(syncBuffer)
	cmd := exec.Command(Binary(t), "--config", cfg, "scheduler", "run", "--listen", listen)
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
	waitFor(t, "a passing drill", exited, logs, func() bool { return strings.Contains(logs.String(), `"msg":"drill passed"`) })
	passed := logs.String()
	if !strings.Contains(passed, `"backup":"`+good+`"`) || !strings.Contains(passed, `"restore_seconds":`) {
		t.Errorf("the passing drill does not name the backup and its restore time")
	}
	c.wantNew(t, scratch)

	// The newest backup is corrupted (a byte of its image flipped): the
	// next drill fails and the cluster turns red.
	path := s.object(good, backup.ImageObject)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x10
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a failed drill", exited, logs, func() bool { return strings.Contains(logs.String(), `"msg":"drill failed"`) })
	c.wantNew(t, scratch)
	var page string
	deadline := time.Now().Add(20 * time.Second)
	for ; time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		resp, err := http.Get("http://" + listen + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if page = string(body); strings.Contains(page, `<tr class="red" id="cluster-`+testCluster+`">`) {
			break
		}
	}
	if !strings.Contains(page, `<tr class="red" id="cluster-`+testCluster+`">`) || !strings.Contains(page, "image object does not match its manifest") {
		t.Fatalf("the status page does not show the failed drill red:\n%s", page)
	}
	if code := func() int { cmd.Process.Signal(syscall.SIGTERM); <-exited; return cmd.ProcessState.ExitCode() }(); code != 0 { //nolint:errcheck
		t.Errorf("exit %d after SIGTERM", code)
	}
	out := s.ok(t, "--config", cfg, "scheduler", "status")
	if !regexp.MustCompile(`(?m)^` + testCluster + `\s+RED\s`).MatchString(out) {
		t.Errorf("scheduler status does not show the cluster red:\n%s", out)
	}
	if !strings.Contains(out, "last drill failed") {
		t.Errorf("scheduler status does not say why:\n%s", out)
	}
}
