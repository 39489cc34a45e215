// Package backuptest holds the fixtures the backup pipeline's tests share:
// a master keyring, a manifest signing key, and a file store in a
// temporary directory.
package backuptest

import (
	"crypto/ed25519"
	"crypto/rand"
	"path/filepath"
	"testing"

	"github.com/hsmbackup/hsmbackup/store/file"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// Keys returns a fresh master keyring (recipient and identity) and an
// Ed25519 manifest signing key pair.
func Keys(tb testing.TB) (*wrap.Keyring, ed25519.PublicKey, ed25519.PrivateKey) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "keyring")
	if _, err := wrap.GenerateMasterKey(path, "master"); err != nil {
		tb.Fatal(err)
	}
	kr, err := wrap.LoadKeyring(path)
	if err != nil {
		tb.Fatal(err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return kr, pub, priv
}

// FileStore returns a file store in a temporary directory.
func FileStore(tb testing.TB) *file.Store {
	tb.Helper()
	st, err := file.New(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	return st
}
