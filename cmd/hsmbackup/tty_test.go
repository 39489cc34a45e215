//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
)

// openPTY opens a pseudo-terminal of 40 rows of 160 columns and returns
// its two sides: what the program writes to tty, the test reads from
// master. (Linux ioctls, from syscall: no package for this one test.)
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	ioctl := func(f *os.File, req uintptr, arg unsafe.Pointer) {
		if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), req, uintptr(arg)); errno != 0 {
			t.Fatalf("ioctl %#x: %v", req, errno)
		}
	}
	var unlock int32
	ioctl(m, syscall.TIOCSPTLCK, unsafe.Pointer(&unlock))
	var n uint32
	ioctl(m, syscall.TIOCGPTN, unsafe.Pointer(&n))
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	ws := struct{ row, col, x, y uint16 }{40, 160, 0, 0}
	ioctl(s, syscall.TIOCSWINSZ, unsafe.Pointer(&ws))
	t.Cleanup(func() { s.Close(); m.Close() })
	return m, s
}

// runOnTTY runs the CLI in-process with stdout and stderr on a fresh
// pseudo-terminal, as in an operator's shell, and returns all it wrote
// there, escape sequences included.
func runOnTTY(t *testing.T, dir string, args ...string) string {
	t.Helper()
	master, tty := openPTY(t)
	var out lockedBuffer
	copied := make(chan struct{})
	go func() {
		io.Copy(&out, master) // until the terminal is closed
		close(copied)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	err := newApp(tty, tty).RunContext(ctx, append([]string{"hsmbackup"}, args...))
	os.Chdir(wd)
	time.Sleep(100 * time.Millisecond) // let the terminal pass the last bytes on
	tty.Close()
	master.Close()
	<-copied
	if err != nil {
		t.Fatalf("hsmbackup %s: %v\n%q", strings.Join(args, " "), err, out.String())
	}
	return strings.ReplaceAll(out.String(), "\r\n", "\n")
}

// lastFrame returns what follows the last escape sequence in out: what
// the bars drew last, and what was written after them.
func lastFrame(out string) string {
	i := strings.LastIndex(out, "\x1b[")
	if i < 0 {
		return out
	}
	rest := out[i+2:]
	// Skip the sequence: parameters, then one final byte.
	j := strings.IndexFunc(rest, func(r rune) bool { return r >= '@' && r <= '~' })
	return rest[j+1:]
}

// TestTerminalOutput runs backup create, verify and restore on a
// pseudo-terminal: an upload's bar counts without a total (never a bogus
// "/ 0.0 b"), a read's shows the object's size, a restore draws one bar
// for its image though it reads it twice, the closing line is printed
// after the bars (no redraw erases it), and --json and --quiet draw none.
func TestTerminalOutput(t *testing.T) {
	other, err := device.NewAuthority(device.Operator, "othercloud")
	if err != nil {
		t.Fatal(err)
	}
	env := hsmtest.NewEnv(t)
	p := &scriptPKI{env: env, other: other, cert: env.CA.Client(t, "backup-officer"), hsms: make(chan scriptHSMs, 1)}
	h := scriptHSMs{member: env.Serve(t, nil), fresh: env.Serve(t, nil), spare: env.Serve(t, nil), other: env.Serve(t, other)}
	env.InitCluster(t, h.member, scriptCluster, scriptOfficer, scriptPassword)
	p.hsms <- h
	dir := t.TempDir()
	if err := p.setup(&testscript.Env{WorkDir: dir}); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")

	out := runOnTTY(t, dir, "backup", "create", "--config", cfg, "--cluster", scriptCluster)
	t.Logf("backup create on a terminal:\n%q", out)
	created := regexp.MustCompile(`(?m)^created (backup-\S+): cluster .* (\d+\.\d [KM]iB) stored, sha256 [0-9a-f]{64}$`)
	m := created.FindStringSubmatch(lastFrame(out))
	if m == nil {
		t.Fatalf("no 'created' line after the bars' last frame:\n%q", lastFrame(out))
	}
	id := m[1]
	if !strings.Contains(out, "upload "+id+" ") {
		t.Errorf("no upload bar for %s", id)
	}
	if strings.Contains(out, "0.0 b") || regexp.MustCompile(`upload \S+ .* / `).MatchString(out) {
		t.Errorf("the upload bar shows a total it does not know:\n%q", out)
	}
	if !strings.Contains(out, `msg="backup created"`) {
		t.Errorf("no 'backup created' log line:\n%q", out)
	}

	out = runOnTTY(t, dir, "backup", "verify", "--config", cfg, id)
	t.Logf("backup verify on a terminal:\n%q", out)
	bar := regexp.MustCompile(`read ` + id + ` .*?(\d+\.\d [KM]iB) / (\d+\.\d [KM]iB)`)
	if b := bar.FindAllStringSubmatch(out, -1); b == nil || b[len(b)-1][1] != b[len(b)-1][2] {
		t.Errorf("the read bar does not end at the object's size: %q", b)
	}
	if !strings.Contains(lastFrame(out), id+" of cluster "+scriptCluster+": OK") {
		t.Errorf("no OK line after the bars' last frame:\n%q", lastFrame(out))
	}

	out = runOnTTY(t, dir, "restore", "--config", cfg, "--backup", id, "--to", h.fresh.Addr, "--claim", "fresh.claim")
	t.Logf("restore on a terminal:\n%q", out)
	if got := regexp.MustCompile(`(?m)re(ad|read) `+id).FindAllString(lastFrame(out), -1); len(got) > 1 {
		t.Errorf("restore's last frame has %d bars, want one:\n%q", len(got), lastFrame(out))
	}
	if !strings.Contains(lastFrame(out), id+" restored into HSM ") {
		t.Errorf("no 'restored' line after the bars' last frame:\n%q", lastFrame(out))
	}

	for _, args := range [][]string{
		{"--json", "backup", "verify", "--config", cfg, id},
		{"--quiet", "backup", "verify", "--config", cfg, id},
	} {
		out := runOnTTY(t, dir, args...)
		if strings.Contains(out, "\x1b[") || strings.Contains(out, "read "+id) {
			t.Errorf("hsmbackup %s draws bars:\n%q", strings.Join(args, " "), out)
		}
	}
	// --quiet: no bars, no info logs, the result still printed.
	out = runOnTTY(t, dir, "--quiet", "backup", "create", "--config", cfg, "--cluster", scriptCluster)
	if strings.Contains(out, "upload ") || strings.Contains(out, "level=INFO") || !created.MatchString(out) {
		t.Errorf("hsmbackup --quiet backup create:\n%q", out)
	}
	// --log-format json: JSON log lines, above the bars.
	out = runOnTTY(t, dir, "--log-format", "json", "backup", "create", "--config", cfg, "--cluster", scriptCluster)
	if !strings.Contains(out, `"msg":"backup created"`) || !strings.Contains(out, "upload backup-") || !created.MatchString(lastFrame(out)) {
		t.Errorf("hsmbackup --log-format json backup create:\n%q", out)
	}
	// --log-level warn: no info logs.
	out = runOnTTY(t, dir, "--log-level", "warn", "backup", "create", "--config", cfg, "--cluster", scriptCluster)
	if strings.Contains(out, "level=INFO") || !created.MatchString(lastFrame(out)) {
		t.Errorf("hsmbackup --log-level warn backup create:\n%q", out)
	}
}
