//go:build unix

package file

import (
	"errors"
	"io/fs"
	"os"
	"syscall"
)

// lockTemp takes an exclusive flock on the temporary file at path, through
// a descriptor of its own, and returns the function that releases it. A
// writer holds it for the whole Put; the kernel releases it if the writer
// dies. Where the file system has no flock the file is left unlocked, and
// so never removed by RemoveStaleUploads.
func lockTemp(path string) (unlock func()) {
	f, err := os.Open(path)
	if err != nil {
		return func() {}
	}
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		f.Close()
		return func() {}
	}
	return func() { f.Close() }
}

// removeAbandoned removes the temporary file at path if no writer holds
// its lock, and reports whether it did. A file whose lock is held, or
// cannot be taken at all, is left alone.
func removeAbandoned(path string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return false, nil // a live writer's, or no flock here
	}
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}
