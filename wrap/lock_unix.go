//go:build unix

package wrap

import (
	"fmt"
	"os"
	"syscall"
)

// lockFile takes an exclusive flock on the file at path, which writers
// replace by rename: it retries until the locked file is still the one at
// path. The returned function releases the lock.
func lockFile(path string) (unlock func(), err error) {
	for {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		locked, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		now, err := os.Stat(path)
		if err == nil && os.SameFile(locked, now) {
			return func() { f.Close() }, nil
		}
		f.Close()
	}
}
