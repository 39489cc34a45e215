package integration

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDaemonKilledMidImport: the HSM daemon a backup is being restored
// into is killed (SIGKILL) mid-import, at random moments and at the moment
// its new sealed state is being written, and started again. Every time it
// opens with its old state (empty) or its new one (every key of the
// backup), never a mix; no temporary file of the killed write is left in
// its directory; and a restore run again afterwards succeeds.
func TestDaemonKilledMidImport(t *testing.T) {
	t.Parallel()
	const keys, trials = 6000, 12
	c := newCluster(t, "--capacity", "8192")
	fillKeys(t, c, keys)
	s := newService(t, c, "file://"+t.TempDir())
	id := s.create(t)
	source := c.health(t, c.addr)

	start := time.Now()
	ref := c.newHSM(t, "reference", filepath.Join(c.dir, "op"), testFirmware, "--capacity", "8192")
	if res := s.cliRes(t, c.restoreArgs(id, ref)...); res.Code != 0 {
		t.Fatalf("restore: %s", res)
	}
	whole := time.Since(start)

	var old, restored, left, leftAfter int
	for i := range trials {
		name := "target-" + string(rune('a'+i))
		dir := filepath.Join(c.dir, name)
		target := c.newHSM(t, name, filepath.Join(c.dir, "op"), testFirmware, "--capacity", "8192")
		before := c.health(t, target)
		done := make(chan Result, 1)
		go func() { done <- s.cliRes(t, c.restoreArgs(id, target)...) }()
		if i%2 == 0 { // at a random moment of the restore
			time.Sleep(time.Duration(rand.Int64N(int64(whole))))
		} else if !waitForTemp(t, dir, whole*3) { // as the new state is being written
			t.Errorf("trial %d: the restore wrote no state file to kill it in: the trial tests nothing", i)
		}
		Kill(t, target)
		<-done
		left += len(temps(t, dir))
		RestartDaemon(t, target)
		if n := len(temps(t, dir)); n > 0 {
			leftAfter += n
			t.Errorf("trial %d: %d temporary files left in the device directory after it opened again", i, n)
		}
		h := c.health(t, target)
		switch {
		case h.StateDigest == before.StateDigest && h.KeyCount == 0:
			old++
			if res := s.cliRes(t, c.restoreArgs(id, target)...); res.Code != 0 {
				t.Errorf("trial %d: the restore run again after the kill: %s", i, res)
			} else if h := c.health(t, target); h.KeyCount != source.KeyCount {
				t.Errorf("trial %d: %d keys after the second restore, want %d", i, h.KeyCount, source.KeyCount)
			}
		case h.ClusterInitialized && h.KeyCount == source.KeyCount:
			restored++
		default:
			t.Errorf("trial %d: after the kill the HSM holds %d keys (cluster initialized %t): neither its old state nor the backup's (%d keys)",
				i, h.KeyCount, h.ClusterInitialized, source.KeyCount)
		}
	}
	t.Logf("RELIABILITY kill-mid-import: %d kills; reopened with the old state %d, with the new %d, with a mix %d; temporary files found after a kill %d, left after reopening %d",
		trials, old, restored, trials-old-restored, left, leftAfter)
}

// temps are the temporary files of atomic writes in dir.
func temps(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// waitForTemp reports whether dir held a temporary file of the state
// within the given time, returning as soon as it does.
func waitForTemp(t *testing.T, dir string, within time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if m, _ := filepath.Glob(filepath.Join(dir, ".device.sealed.tmp-*")); len(m) > 0 {
			return true
		}
		time.Sleep(time.Millisecond)
	}
	return false
}
