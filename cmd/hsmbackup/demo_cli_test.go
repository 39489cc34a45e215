package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// End-to-end tests of the binary: the demo run as a user runs it, and the
// exit codes and messages of main's report.

func TestReport(t *testing.T) {
	for _, tc := range []struct {
		name        string
		err         error
		interrupted bool
		code        int
		stderr      string
	}{
		{"success", nil, false, 0, ""},
		{"success despite a late signal", nil, true, 0, ""},
		{"failure", errors.New("export image: disk full"), false, 1, "hsmbackup: export image: disk full\n"},
		{"multi-line error", errors.Join(errors.New("a"), errors.New("b")), false, 1, "hsmbackup: a b\n"},
		{"interrupted", errors.New("demo: prepare HSM A: context canceled"), true, 130, "hsmbackup: interrupted: demo: prepare HSM A: context canceled\n"},
		{"cancelled", context.Canceled, false, 130, "hsmbackup: interrupted: context canceled\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := report(&stderr, nil, tc.err, tc.interrupted); code != tc.code {
				t.Errorf("exit code %d, want %d", code, tc.code)
			}
			if stderr.String() != tc.stderr {
				t.Errorf("stderr %q, want %q", stderr.String(), tc.stderr)
			}
		})
	}
}

// TestCLI builds the binary and runs it as a user would.
func TestCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := filepath.Join(t.TempDir(), "hsmbackup")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	t.Run("demo", func(t *testing.T) {
		tmp := t.TempDir()
		stdout, stderr, code := runBinary(t, bin, tmp, "demo")
		if code != 0 || stderr != "" {
			t.Fatalf("hsmbackup demo: exit %d, stderr %q\nstdout:\n%s", code, stderr, stdout)
		}
		checkDemoOutput(t, stdout)
		assertEmptyDir(t, tmp)
	})

	// The global --store flag works for the demo too; the store is
	// left as it was found.
	t.Run("demo with --store", func(t *testing.T) {
		tmp, storeDir := t.TempDir(), t.TempDir()
		url := "file://" + storeDir
		stdout, stderr, code := runBinary(t, bin, tmp, "--store", url, "demo")
		if code != 0 || stderr != "" {
			t.Fatalf("hsmbackup --store %s demo: exit %d, stderr %q\nstdout:\n%s", url, code, stderr, stdout)
		}
		checkDemoOutput(t, stdout)
		if !strings.Contains(stdout, "store          "+url+", this run under ") {
			t.Errorf("output does not name the store %s:\n%s", url, stdout)
		}
		assertEmptyDir(t, tmp)
	})

	for _, args := range [][]string{
		{"nosuchcommand"},
		{"demo", "--nosuchflag"},
		{"--nosuchflag"},
		{"demo", "extra"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			stdout, stderr, code := runBinary(t, bin, t.TempDir(), args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d (usage error)", code, exitUsage)
			}
			if !strings.HasPrefix(stderr, "hsmbackup: ") || strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
				t.Errorf("stderr %q, want one line starting \"hsmbackup: \"", stderr)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
		})
	}

	t.Run("help", func(t *testing.T) {
		stdout, stderr, code := runBinary(t, bin, t.TempDir(), "--help")
		if code != 0 || stderr != "" || !strings.Contains(stdout, "demo") || !strings.Contains(stdout, "--json") {
			t.Errorf("hsmbackup --help: exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
		}
	})

	t.Run("interrupt", func(t *testing.T) {
		tmp := t.TempDir()
		cmd := exec.Command(bin, "demo")
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		pipe, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Step 3 does several password hashes at full cost: interrupt
		// there, and the demo stops before step 4.
		sc := bufio.NewScanner(pipe)
		for sc.Scan() && !strings.HasPrefix(sc.Text(), fmt.Sprintf("[3/%d]", len(demoSteps))) {
		}
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		for sc.Scan() {
		}
		err = cmd.Wait()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 130 {
			t.Fatalf("interrupted demo: %v, want exit status 130; stderr %q", err, stderr.String())
		}
		if s := stderr.String(); !strings.HasPrefix(s, "hsmbackup: interrupted: ") || strings.Count(s, "\n") != 1 {
			t.Errorf("stderr %q, want one line starting \"hsmbackup: interrupted: \"", s)
		}
		assertEmptyDir(t, tmp)
	})
}

// runBinary runs bin with args and TMPDIR set to tmp, and returns its
// output and exit code.
func runBinary(t *testing.T, bin, tmp string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("run %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}
