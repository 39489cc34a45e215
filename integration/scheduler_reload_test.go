package integration

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// TestSchedulerReload: SIGHUP makes a running `scheduler run` take a new
// config (a faster schedule takes effect at once); an invalid new config
// is reported, every fault with its line, and the old one keeps running;
// SIGTERM then drains and exits 0.
func TestSchedulerReload(t *testing.T) {
	c := newCluster(t)
	s := newService(t, c, "file://"+t.TempDir())
	writeSchedule := func(schedule string) {
		t.Helper()
		b, err := os.ReadFile(s.config)
		if err != nil {
			t.Fatal(err)
		}
		var cfg map[string]any
		if err := yaml.Unmarshal(b, &cfg); err != nil {
			t.Fatal(err)
		}
		cfg["clusters"].(map[string]any)[testCluster].(map[string]any)["schedule"] = schedule
		cfg["scheduler"] = map[string]any{"lease_duration": "3s", "jitter": "0s", "drain_timeout": "10s"}
		if b, err = yaml.Marshal(cfg); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(s.config, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	backups := func() int { return len(s.list(t, "--cluster", testCluster)) }

	writeSchedule("@yearly")
	cmd := exec.Command(Binary(t), "--config", s.config, "scheduler", "run", "--listen", "")
	logs := new(syncBuffer)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }() //nolint:errcheck // the exit code is read below
	t.Cleanup(func() {
		cmd.Process.Kill() //nolint:errcheck // already gone if it exited
		<-exited
		if t.Failed() {
			t.Logf("scheduler log:\n%s", logs)
		}
	})
	waitFor(t, "the catch-up backup", exited, logs, func() bool { return strings.Count(logs.String(), `"msg":"backup done"`) == 1 })
	time.Sleep(2 * time.Second)
	if n := backups(); n != 1 {
		t.Fatalf("%d backups on a yearly schedule, want the one catch-up", n)
	}

	writeSchedule("*/2 * * * * *")
	cmd.Process.Signal(syscall.SIGHUP) //nolint:errcheck
	waitFor(t, "backups on the new schedule", exited, logs, func() bool { return strings.Count(logs.String(), `"msg":"backup done"`) >= 3 })
	if !strings.Contains(logs.String(), `"msg":"scheduler configuration reloaded"`) {
		t.Error("no reload logged")
	}

	// An invalid config: reported with its line, the old one kept.
	b, _ := os.ReadFile(s.config)
	if err := os.WriteFile(s.config, []byte(strings.Replace(string(b), "*/2 * * * * *", "TZ=UTC 0 0 * * *", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGHUP) //nolint:errcheck
	waitFor(t, "the refused reload", exited, logs, func() bool { return strings.Contains(logs.String(), "config not reloaded: the old one stays") })
	if !strings.Contains(logs.String(), "config.yaml:9: clusters."+testCluster+".schedule: ") || !strings.Contains(logs.String(), "TZ= prefix is not supported") {
		t.Errorf("the refused reload does not name the fault")
	}
	before := strings.Count(logs.String(), `"msg":"backup done"`)
	waitFor(t, "backups after the refused reload", exited, logs, func() bool {
		return strings.Count(logs.String(), `"msg":"backup done"`) >= before+2
	})

	cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Fatal("no exit within 20 s of SIGTERM")
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d after a drain, want 0", code)
	}
	writeSchedule("*/2 * * * * *") // listable again
	if n := backups(); n < 4 {
		t.Errorf("%d backups listed", n)
	}
	if strings.Contains(logs.String(), c.password) {
		t.Error("the officer's password is in the log")
	}
}
