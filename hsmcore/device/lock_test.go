package device

import (
	"errors"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// TestDeviceLock: a device directory is served by one Device at a time; a
// second Open is refused (after lockWait) until the first is closed.
func TestDeviceLock(t *testing.T) {
	d := newDevice(t, stdHW)
	start := time.Now()
	if d2, err := Open(d.dir, TestOptions()); !errors.Is(err, hsmcore.ErrPermission) {
		if d2 != nil {
			d2.Close()
		}
		t.Fatalf("second Open of a device in use: %v", err)
	}
	if waited := time.Since(start); waited < lockWait {
		t.Errorf("refused after %v, before retrying for %v", waited, lockWait)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d2, err := Open(d.dir, TestOptions())
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	d2.Close()
}
