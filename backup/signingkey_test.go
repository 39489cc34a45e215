package backup

import (
	"bytes"
	"crypto/ed25519"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hsmbackup/hsmbackup/internal/testenv"
)

func TestSigningKeyFiles(t *testing.T) {
	dir := t.TempDir()
	key, pub := filepath.Join(dir, "manifest.key"), filepath.Join(dir, "manifest.pub")
	want, err := GenerateSigningKey(key, pub)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := LoadSigningKey(key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := LoadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(want) || !priv.Public().(ed25519.PublicKey).Equal(want) {
		t.Fatal("loaded keys differ from the generated pair")
	}
	if _, err := GenerateSigningKey(key, filepath.Join(dir, "other.pub")); err == nil {
		t.Fatal("GenerateSigningKey overwrote an existing key")
	}
	if err := os.Chmod(key, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSigningKey(key); err == nil {
		t.Fatal("LoadSigningKey accepted a group-readable key file")
	}
	if _, err := LoadSigningKey(pub); err == nil {
		t.Fatal("LoadSigningKey accepted a public key file")
	}
	if _, err := LoadPublicKey(key); err == nil {
		t.Fatal("LoadPublicKey accepted a private key file")
	}
}

// TestSigningKeyOpenSSL: keys made by OpenSSL load, and OpenSSL derives
// the same public key file as GenerateSigningKey writes.
func TestSigningKeyOpenSSL(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	dir := t.TempDir()
	key, pub := filepath.Join(dir, "k.pem"), filepath.Join(dir, "k.pub")
	if out, err := exec.Command(openssl, "genpkey", "-algorithm", "ed25519", "-out", key).CombinedOutput(); err != nil {
		t.Fatalf("openssl genpkey: %v\n%s", err, out)
	}
	if err := os.Chmod(key, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(openssl, "pkey", "-in", key, "-pubout", "-out", pub).CombinedOutput(); err != nil {
		t.Fatalf("openssl pkey: %v\n%s", err, out)
	}
	priv, err := LoadSigningKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p, err := LoadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !priv.Public().(ed25519.PublicKey).Equal(p) {
		t.Fatal("OpenSSL's public key differs from the private key's")
	}

	key2, pub2 := filepath.Join(dir, "m.key"), filepath.Join(dir, "m.pub")
	if _, err := GenerateSigningKey(key2, pub2); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(openssl, "pkey", "-in", key2, "-pubout").Output()
	if err != nil {
		t.Fatalf("openssl pkey on our key: %v", err)
	}
	written, _ := os.ReadFile(pub2)
	if !bytes.Equal(out, written) {
		t.Fatalf("OpenSSL derives\n%s\nwe wrote\n%s", out, written)
	}
}
