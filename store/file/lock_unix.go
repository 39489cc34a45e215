//go:build unix

package file

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"github.com/hsmbackup/hsmbackup/store"
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

// etag names the version of the object whose file fi describes: a Put
// replaces the file by another (rename of a new file), so the inode
// differs from any other live version's; size and times make a reused
// inode differ too.
func etag(fi os.FileInfo) string {
	var ino, ctime int64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino, ctime = int64(st.Ino), st.Ctim.Nano()
	}
	return fmt.Sprintf("%x-%x-%x-%x", ino, fi.Size(), fi.ModTime().UnixNano(), ctime)
}

// lockVersion locks the object file at path if it is the version named
// want, and returns the function that unlocks it; the caller replaces the
// file while it holds the lock. Every IfMatch Put of the object takes the
// lock of the file it would replace, and checks, once it holds it, that
// the file is still the object's: so of two Puts of one version, the
// second finds a new file and fails with store.ErrConflict.
func lockVersion(path, want string) (unlock func(), err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no object", store.ErrConflict)
	}
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock object: %w", err)
	}
	locked, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	current, err := os.Stat(path)
	if err != nil || !os.SameFile(locked, current) || etag(locked) != want {
		f.Close()
		return nil, store.ErrConflict
	}
	return func() { f.Close() }, nil
}
