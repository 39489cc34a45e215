//go:build !unix

package file

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/hsmbackup/hsmbackup/store"
)

// lockTemp does nothing: without flock, RemoveStaleUploads cannot tell a
// live writer from a dead one and goes by age alone.
func lockTemp(string) (unlock func()) { return func() {} }

// removeAbandoned removes the temporary file at path, and reports whether
// it did.
func removeAbandoned(path string) (bool, error) {
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// etag names the version of the object whose file fi describes.
func etag(fi os.FileInfo) string {
	return fmt.Sprintf("%x-%x", fi.Size(), fi.ModTime().UnixNano())
}

// lockVersion checks that the object file at path is the version named
// want. Without flock, two IfMatch Puts of one version can both pass.
func lockVersion(path, want string) (unlock func(), err error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no object", store.ErrConflict)
	}
	if err != nil {
		return nil, err
	}
	if etag(fi) != want {
		return nil, store.ErrConflict
	}
	return func() {}, nil
}
