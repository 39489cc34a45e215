package device

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// reopen closes d and opens its directory with opts.
func reopen(t *testing.T, d *Device, opts Options) *Device {
	t.Helper()
	d.Close()
	d, err := Open(d.dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// Options.MaxLoginFailures sets the limit; a negative value never locks.
func TestMaxLoginFailuresOption(t *testing.T) {
	d := newDevice(t, stdHW)
	initDevice(t, d)
	opts := TestOptions()
	opts.MaxLoginFailures = 2
	d = reopen(t, d, opts)
	for range 2 {
		if _, err := d.Login("alice", "wrong password"); !errors.Is(err, hsmcore.ErrAuth) {
			t.Fatal(err)
		}
	}
	if _, err := d.Login("alice", testPassword); !errors.Is(err, hsmcore.ErrAuth) {
		t.Fatalf("after 2 failures with a limit of 2: got %v, want ErrAuth", err)
	}
	opts.MaxLoginFailures = -1
	d = reopen(t, d, opts)
	for range 3 * DefaultMaxLoginFailures {
		d.Login("alice", "wrong password")
	}
	if _, err := d.Login("alice", testPassword); err != nil {
		t.Fatalf("lockout disabled: %v", err)
	}
}

// Concurrent guesses get no more tries than the limit: each attempt's
// outcome and count are settled together.
func TestConcurrentGuessesBounded(t *testing.T) {
	d := newDevice(t, stdHW)
	initDevice(t, d)
	var wg sync.WaitGroup
	for range 4 * DefaultMaxLoginFailures {
		wg.Go(func() { d.Login("alice", "wrong password") })
	}
	wg.Wait()
	if _, err := d.Login("alice", testPassword); !errors.Is(err, hsmcore.ErrAuth) {
		t.Fatalf("after concurrent guesses: got %v, want ErrAuth", err)
	}
	denied := 0
	entries, _, err := d.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Op == "login" && e.Actor == Unauthenticated && e.Object == "alice" && e.Result == "denied" {
			denied++
		}
	}
	if denied != DefaultMaxLoginFailures {
		t.Fatalf("%d denied logins recorded, want %d", denied, DefaultMaxLoginFailures)
	}
}

// A failures file that does not open under the seal key is refused, as a
// tampered state file is; zeroizing removes it.
func TestFailuresFileSealed(t *testing.T) {
	d := newDevice(t, stdHW)
	co, _ := initDevice(t, d)
	d.Login("alice", "wrong password")
	path := filepath.Join(d.dir, failuresFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := co.Zeroize(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("failures file after zeroize: %v", err)
	}
	d.Close()
	b[len(b)-1] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(d.dir, TestOptions()); !errors.Is(err, hsmcore.ErrTampered) {
		t.Fatalf("open with a changed failures file: got %v, want ErrTampered", err)
	}
}
