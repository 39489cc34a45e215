package device

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

const lockFile = "device.lock"

// lockWait is how long a held lock is retried before the device is
// reported in use. A process that forks a child while it holds the lock's
// descriptor lends the lock to the child until the child execs (Go closes
// descriptors at exec, not at fork): a device closed and opened again at
// once can find its own lock held for some milliseconds.
const lockWait = time.Second

// lockDir takes an exclusive advisory lock on the device directory, so
// that two processes never serve, and write, one HSM. The lock lasts until
// the returned file is closed (or the process ends).
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock device: %w", err)
	}
	deadline := time.Now().Add(lockWait)
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("device %s is in use by another process: %w", dir, hsmcore.ErrPermission)
		}
		return nil, fmt.Errorf("lock device: %w", err)
	}
	return f, nil
}
