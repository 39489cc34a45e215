package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cheapPasswords is a PBKDF2 cost that keeps in-process demo runs fast;
// the end-to-end test runs the binary with hsmcore's default.
const cheapPasswords = 1000

// demoWants are lines, or parts of lines, every successful demo prints:
// one or more per step, the refusals included.
var demoWants = []string{
	"[1/8] workspace, manufacturer and operators",
	"manufacturer   acme-hsm",
	"operator       example-cloud",
	"operator       other-cloud",
	"[2/8] HSM A: manufacture, initialize, generate keys",
	"class hsm2m.medium, firmware 2.1.0, operator example-cloud",
	"HANDLE  TYPE      LABEL             KCV",
	"AES-256", "EC P-384", "RSA-2048",
	"[3/8] HSM A: encrypt and sign",
	"encrypted      with key 1 (AES-256-GCM)",
	"signed         with key 2 (ECDSA P-384, SHA-384)",
	"signed         with key 3 (RSA-PSS, SHA-256)",
	"[4/8] HSM A: export its image",
	"image          hsm-a.img, ",
	"image id       ",
	"source         serial HSM-",
	"PBK            fingerprint ",
	"[5/8] HSM B (same class, manufacturer, operator): attest, restore, use",
	"attestation verified: serial HSM-",
	"into uninitialized HSM B",
	"decrypted      A's ciphertext with key 1",
	"verified       A's signature with key 2",
	"verified       A's signature with key 3",
	"restored keys work on HSM B: 3 keys",
	"[6/8] HSM C (operator other-cloud): restore refused",
	"attestation    rejected: ",
	"hardware identity mismatch",
	"HSM C unchanged: still uninitialized",
	"[7/8] tampered image: restore refused",
	"tampered copy  hsm-a-tampered.img: byte ",
	"data tampered or corrupted",
	"HSM D unchanged: still uninitialized",
	"[8/8] HSM A: verify the audit log",
	"entries verified: hash chain intact",
	"demo complete",
}

func checkDemoOutput(t *testing.T, out string) {
	t.Helper()
	for _, want := range demoWants {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

// assertEmptyDir fails unless dir holds nothing: the demo cleaned up.
func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("left behind in %s: %s", dir, e.Name())
	}
}

func TestRunDemo(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if err := runDemo(context.Background(), &out, demoOptions{Dir: dir, PasswordIterations: cheapPasswords}); err != nil {
		t.Fatalf("runDemo: %v\noutput:\n%s", err, out.String())
	}
	checkDemoOutput(t, out.String())
	if strings.Contains(out.String(), "workspace kept") {
		t.Error("workspace reported kept without Keep")
	}
	assertEmptyDir(t, dir)
}

func TestRunDemoKeep(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if err := runDemo(context.Background(), &out, demoOptions{Dir: dir, Keep: true, PasswordIterations: cheapPasswords}); err != nil {
		t.Fatalf("runDemo: %v", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 1 {
		t.Fatalf("want one kept workspace in %s, got %v, %v", dir, ents, err)
	}
	ws := filepath.Join(dir, ents[0].Name())
	if !strings.Contains(out.String(), "workspace kept: "+ws+"\n") {
		t.Errorf("output does not name the kept workspace %s:\n%s", ws, out.String())
	}
	for _, name := range []string{demoImage, demoTampered, "hsm-a", "hsm-b", "authorities"} {
		if _, err := os.Stat(filepath.Join(ws, name)); err != nil {
			t.Errorf("kept workspace: %v", err)
		}
	}
}

func TestRunDemoCancelled(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out bytes.Buffer
	err := runDemo(ctx, &out, demoOptions{Dir: dir, PasswordIterations: cheapPasswords})
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "set up workspace: ") {
		t.Fatalf("runDemo with a cancelled context: %v; want the first step's name and context.Canceled", err)
	}
	assertEmptyDir(t, dir)
}

// failingWriter fails every write.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestRunDemoWriteError(t *testing.T) {
	dir := t.TempDir()
	err := runDemo(context.Background(), failingWriter{}, demoOptions{Dir: dir, PasswordIterations: cheapPasswords})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("runDemo into a failing writer: %v; want the write error", err)
	}
	assertEmptyDir(t, dir)
}

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
			if code := report(&stderr, tc.err, tc.interrupted); code != tc.code {
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

	for _, args := range [][]string{
		{"nosuchcommand"},
		{"demo", "--nosuchflag"},
		{"--nosuchflag"},
		{"demo", "extra"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			stdout, stderr, code := runBinary(t, bin, t.TempDir(), args...)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
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
		// Step 2 does several password hashes at full cost: interrupt
		// there, and the demo stops before step 3.
		sc := bufio.NewScanner(pipe)
		for sc.Scan() && !strings.HasPrefix(sc.Text(), "[2/8]") {
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
