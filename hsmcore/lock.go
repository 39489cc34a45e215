package hsmcore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

const lockFile = "device.lock"

// lockDir takes an exclusive advisory lock on the device directory, so
// that two processes never serve, and write, one HSM. The lock lasts until
// the returned file is closed (or the process ends).
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock device: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("device %s is in use by another process: %w", dir, ErrPermission)
		}
		return nil, fmt.Errorf("lock device: %w", err)
	}
	return f, nil
}
