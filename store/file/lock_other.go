//go:build !unix

package file

import (
	"errors"
	"io/fs"
	"os"
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
