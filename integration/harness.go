// Package integration runs hsmbackup end to end, as its users do: the real
// binary, HSM daemons as separate processes on loopback ports, and outside
// tools (OpenSSL) where a customer would use them.
//
// This file is the harness the tests share. The binary is built once per
// test binary (Binary); Run runs one command and captures its output and
// exit code; StartDaemon starts `hsmbackup hsm serve` on a device
// directory and returns its address, and Stop and Kill end it, so a test
// can take a member down and start it again on the same directory.
package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestPasswordIterations is the PBKDF2 cost every daemon in these tests
// uses: cheap, so that logins take microseconds, not a second.
const TestPasswordIterations = 1000

// Timeouts of the harness.
const (
	// StartTimeout bounds how long a daemon may take to print its
	// "listening on" line.
	StartTimeout = 10 * time.Second
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL.
	StopGrace = 5 * time.Second
	// RunTimeout bounds one command run by Run.
	RunTimeout = time.Minute
)

// builds are the binaries built for the tests: plain (Binary) and with
// the race detector (RaceBinary), in one temporary directory.
var builds struct {
	mu          sync.Mutex
	dir         string
	plain, race builtBinary
}

type builtBinary struct {
	once sync.Once
	path string
	err  error
}

// Binary returns the path of hsmbackup built from this checkout. The first
// call builds it into a temporary directory, which CleanupBinary removes.
func Binary(tb testing.TB) string {
	tb.Helper()
	return builtOnce(tb, &builds.plain, "hsmbackup")
}

// RaceBinary is Binary built with the race detector: a process that meets
// a data race prints "WARNING: DATA RACE" on stderr (and exits 66 at
// the end).
func RaceBinary(tb testing.TB) string {
	tb.Helper()
	return builtOnce(tb, &builds.race, "hsmbackup-race", "-race")
}

func builtOnce(tb testing.TB, b *builtBinary, name string, flags ...string) string {
	tb.Helper()
	b.once.Do(func() {
		b.path, b.err = buildBinary(name, flags...)
	})
	if b.err != nil {
		tb.Fatalf("build %s: %v", name, b.err)
	}
	return b.path
}

func buildBinary(name string, flags ...string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the hsmbackup module")
	}
	builds.mu.Lock()
	if builds.dir == "" {
		builds.dir, err = os.MkdirTemp("", "hsmbackup-integration-")
	}
	dir := builds.dir
	builds.mu.Unlock()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, name)
	cmd := exec.Command("go", append(append([]string{"build"}, flags...), "-o", bin, "./cmd/hsmbackup")...)
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// CleanupBinary removes what Binary and RaceBinary built. TestMain calls
// it once the tests are done.
func CleanupBinary() {
	if builds.dir != "" {
		os.RemoveAll(builds.dir)
	}
}

// Result is what a finished command left.
type Result struct {
	Stdout, Stderr string
	Code           int   // exit code
	MaxRSS         int64 // the process's peak resident set, in bytes, as last seen
}

func (r Result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
}

// RunOptions configure RunWith. The zero value runs in the test's working
// directory with the test's environment.
type RunOptions struct {
	Dir string   // working directory
	Env []string // added to the environment, "KEY=value"
	Bin string   // the binary run: Binary if empty
}

// Run runs hsmbackup with args and returns its output and exit code. It
// fails tb only if the command cannot be run at all or overruns
// RunTimeout.
func Run(tb testing.TB, args ...string) Result {
	tb.Helper()
	return RunWith(tb, RunOptions{}, args...)
}

// RunWith is Run with options.
func RunWith(tb testing.TB, opts RunOptions, args ...string) Result {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), RunTimeout)
	defer cancel()
	bin := opts.Bin
	if bin == "" {
		bin = Binary(tb)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = opts.Dir
	cmd.Env = append(os.Environ(), opts.Env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	var peak atomic.Int64
	err := cmd.Start()
	if err == nil {
		done := make(chan struct{})
		go watchPeak(cmd.Process.Pid, &peak, done)
		err = cmd.Wait()
		close(done)
	}
	res := Result{Stdout: stdout.String(), Stderr: stderr.String(), MaxRSS: peak.Load()}
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		tb.Fatalf("hsmbackup %s: no exit within %s\n%s", strings.Join(args, " "), RunTimeout, res)
	case err == nil:
	case errors.As(err, &exit):
		res.Code = exit.ExitCode()
	default:
		tb.Fatalf("hsmbackup %s: %v", strings.Join(args, " "), err)
	}
	return res
}

// watchPeak records in peak, until done, the high-water mark of process
// pid's resident set (VmHWM; the rusage of a child also counts what it
// shared with this process before its exec).
func watchPeak(pid int, peak *atomic.Int64, done <-chan struct{}) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if n := peakRSS(pid); n > peak.Load() {
			peak.Store(n)
		}
		select {
		case <-done:
			return
		case <-t.C:
		}
	}
}

// peakRSS is process pid's VmHWM in bytes, 0 if it cannot be read.
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kib, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kib << 10
		}
	}
	return 0
}

// DaemonPeakRSS is the peak resident set, in bytes, of the daemon on addr
// so far.
func DaemonPeakRSS(tb testing.TB, addr string) int64 {
	tb.Helper()
	return peakRSS(lookup(tb, addr).cmd.Process.Pid)
}

// daemon is one `hsmbackup hsm serve` process.
type daemon struct {
	addr, dir string
	bin       string // the binary it runs
	cmd       *exec.Cmd
	logs      *syncBuffer
	done      chan struct{} // closed when the process has exited
	code      int           // exit code, -1 if killed by a signal; valid after done
}

var daemons struct {
	sync.Mutex
	byAddr map[string]*daemon
}

// StartDaemon starts `hsmbackup hsm serve` on the device in deviceDir,
// listening on a free loopback port, and returns its address once it
// prints "listening on". The daemon is stopped (SIGTERM, then SIGKILL after
// StopGrace) when the test ends, unless Stop or Kill ended it before; its
// log is shown if the test failed.
func StartDaemon(tb testing.TB, deviceDir string) string {
	tb.Helper()
	return startDaemon(tb, Binary(tb), deviceDir, "127.0.0.1:0")
}

// StartDaemonOf is StartDaemon running bin (RaceBinary, say), which
// RestartDaemon runs again.
func StartDaemonOf(tb testing.TB, bin, deviceDir string) string {
	tb.Helper()
	return startDaemon(tb, bin, deviceDir, "127.0.0.1:0")
}

// RestartDaemon starts the daemon that ran on addr again, on the same
// device directory and address, after Stop or Kill ended it: an appliance
// coming back after a crash.
func RestartDaemon(tb testing.TB, addr string) {
	tb.Helper()
	old := lookup(tb, addr)
	select {
	case <-old.done:
	default:
		tb.Fatalf("the daemon on %s is still running", addr)
	}
	daemons.Lock()
	delete(daemons.byAddr, addr)
	daemons.Unlock()
	if got := startDaemon(tb, old.bin, old.dir, addr); got != addr {
		tb.Fatalf("restarted daemon listens on %s, want %s", got, addr)
	}
}

func startDaemon(tb testing.TB, bin, deviceDir, listen string) string {
	tb.Helper()
	d := &daemon{dir: deviceDir, bin: bin, logs: &syncBuffer{}, done: make(chan struct{})}
	listening := make(chan string, 1)
	d.cmd = exec.Command(bin, "hsm", "serve", "--device", deviceDir, "--listen", listen,
		"--password-iterations", fmt.Sprint(TestPasswordIterations))
	d.cmd.Stdout = &lineWatcher{prefix: "listening on ", found: listening}
	d.cmd.Stderr = d.logs
	if err := d.cmd.Start(); err != nil {
		tb.Fatalf("start hsm serve: %v", err)
	}
	go func() {
		d.cmd.Wait()
		d.code = d.cmd.ProcessState.ExitCode()
		close(d.done)
	}()
	timer := time.NewTimer(StartTimeout)
	defer timer.Stop()
	select {
	case d.addr = <-listening:
	case <-d.done:
		tb.Fatalf("hsm serve --device %s exited %d before listening; stderr:\n%s", deviceDir, d.code, d.logs)
	case <-timer.C:
		d.stop(tb)
		tb.Fatalf("hsm serve --device %s: not listening after %s; stderr:\n%s", deviceDir, StartTimeout, d.logs)
	}
	daemons.Lock()
	if daemons.byAddr == nil {
		daemons.byAddr = map[string]*daemon{}
	}
	daemons.byAddr[d.addr] = d
	daemons.Unlock()
	tb.Cleanup(func() {
		d.stop(tb)
		if tb.Failed() {
			tb.Logf("log of the daemon on %s (device %s):\n%s", d.addr, d.dir, d.logs)
		}
		daemons.Lock()
		delete(daemons.byAddr, d.addr)
		daemons.Unlock()
	})
	return d.addr
}

func lookup(tb testing.TB, addr string) *daemon {
	tb.Helper()
	daemons.Lock()
	defer daemons.Unlock()
	d := daemons.byAddr[addr]
	if d == nil {
		tb.Fatalf("no daemon started on %s", addr)
	}
	return d
}

// Stop sends SIGTERM to the daemon on addr, waits for it to exit (sending
// SIGKILL after StopGrace) and returns its exit code, -1 if a signal
// killed it.
func Stop(tb testing.TB, addr string) int {
	tb.Helper()
	return lookup(tb, addr).stop(tb)
}

// Kill kills the daemon on addr with SIGKILL, as a crash would, and waits
// for it to be gone.
func Kill(tb testing.TB, addr string) {
	tb.Helper()
	d := lookup(tb, addr)
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
}

// Signal sends sig to the daemon on addr: SIGSTOP freezes it in the
// middle of whatever it is doing, as a hung appliance would, and SIGCONT
// lets it go on. A daemon still frozen when the test ends is stopped as
// usual.
func Signal(tb testing.TB, addr string, sig syscall.Signal) {
	tb.Helper()
	if err := lookup(tb, addr).cmd.Process.Signal(sig); err != nil {
		tb.Fatalf("signal %v to the daemon on %s: %v", sig, addr, err)
	}
}

// DaemonLog returns what the daemon on addr has logged so far.
func DaemonLog(tb testing.TB, addr string) string {
	tb.Helper()
	return lookup(tb, addr).logs.String()
}

func (d *daemon) stop(tb testing.TB) int {
	select {
	case <-d.done:
		return d.code
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.cmd.Process.Signal(syscall.SIGCONT) // a frozen daemon (Signal) handles SIGTERM only once it runs
	timer := time.NewTimer(StopGrace)
	defer timer.Stop()
	select {
	case <-d.done:
	case <-timer.C:
		tb.Errorf("daemon on %s ignored SIGTERM for %s: killing it", d.addr, StopGrace)
		d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.done
	}
	return d.code
}

// lineWatcher is a daemon's stdout: it sends the rest of the first line
// that starts with prefix, and discards the rest.
type lineWatcher struct {
	prefix string
	found  chan<- string
	buf    []byte
	done   bool
}

func (w *lineWatcher) Write(p []byte) (int, error) {
	if w.done {
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		if rest, ok := strings.CutPrefix(line, w.prefix); ok {
			w.found <- rest
			w.done, w.buf = true, nil
			break
		}
	}
	if len(w.buf) > 64<<10 { // no line this long is expected
		w.buf = w.buf[len(w.buf)-(64<<10):]
	}
	return len(p), nil
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Len is the number of bytes written.
func (b *syncBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}
