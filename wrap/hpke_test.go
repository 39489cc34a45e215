package wrap

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHPKEKeyFiles: generated files have the right modes, load back to the
// same key, cannot be overwritten, and a writer holding only the public
// key makes envelopes it cannot open.
func TestHPKEKeyFiles(t *testing.T) {
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "backup.key"), filepath.Join(dir, "backup.pub")
	r, err := GenerateHPKEKey(priv, pub)
	if err != nil {
		t.Fatal(err)
	}
	checkMode(t, priv, 0o600)
	checkMode(t, pub, 0o644)
	if _, err := GenerateHPKEKey(priv, filepath.Join(dir, "other.pub")); !errors.Is(err, fs.ErrExist) {
		t.Errorf("generate over an existing private key: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "other.pub")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("a public key was written although the private key could not be")
	}
	if _, err := GenerateHPKEKey(filepath.Join(dir, "new.key"), pub); !errors.Is(err, fs.ErrExist) {
		t.Errorf("generate over an existing public key: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "new.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("a private key was left behind when its public key could not be written")
	}

	text, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(text), "-----BEGIN HSMBACKUP MLKEM768X25519 PUBLIC KEY-----\n") {
		t.Errorf("public key file starts %q", text[:60])
	}
	writer, err := LoadHPKERecipient(pub)
	if err != nil {
		t.Fatal(err)
	}
	if writer.Fingerprint() != r.Fingerprint() || len(r.Fingerprint()) != 32 {
		t.Errorf("fingerprints %s, %s", writer.Fingerprint(), r.Fingerprint())
	}
	env := seal(t, pattern(1000), writer)
	reader, err := LoadHPKEIdentity(priv)
	if err != nil {
		t.Fatal(err)
	}
	if reader.Recipient().Fingerprint() != r.Fingerprint() {
		t.Error("private key file gives another public key")
	}
	if got, herr, berr := open(env, reader); herr != nil || berr != nil || !bytes.Equal(got, pattern(1000)) {
		t.Errorf("open with the private key file: %v, %v", herr, berr)
	}
	pubAsPriv := filepath.Join(dir, "pub-as-private.key")
	if err := os.WriteFile(pubAsPriv, text, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadHPKEIdentity(pubAsPriv); !errors.Is(err, ErrMalformed) {
		t.Errorf("public key file as private key: %v", err)
	}
	if _, err := LoadHPKERecipient(priv); !errors.Is(err, ErrMalformed) {
		t.Errorf("private key file as public key: %v", err)
	}
}

// TestHPKEStanza: the stanza names the fingerprint; one for this key that
// does not open is ErrTampered; one for another key is skipped.
func TestHPKEStanza(t *testing.T) {
	id, other := testIdentity(t), testIdentity(t)
	dek := randomBytes(t, dekSize)
	s, err := id.Recipient().Wrap(context.Background(), dek)
	if err != nil {
		t.Fatal(err)
	}
	if s.String() != "mlkem768x25519 "+id.Recipient().Fingerprint() || len(s.Body) != hpkeStanzaSize {
		t.Errorf("stanza %q, %d-byte body", s, len(s.Body))
	}
	so, _ := other.Recipient().Wrap(context.Background(), dek)
	if got, err := id.Unwrap(context.Background(), []Stanza{so, s}); err != nil || !bytes.Equal(got, dek) {
		t.Errorf("Unwrap past another key's stanza: %v", err)
	}
	for _, i := range []int{0, 1119, 1120, hpkeStanzaSize - 1} { // enc, ciphertext, tag
		bad := s
		bad.Body = bytes.Clone(s.Body)
		bad.Body[i] ^= 1
		if _, err := id.Unwrap(context.Background(), []Stanza{bad}); !errors.Is(err, ErrTampered) {
			t.Errorf("byte %d flipped: %v", i, err)
		}
	}
	short := s
	short.Body = s.Body[:100]
	if _, err := id.Unwrap(context.Background(), []Stanza{short}); !errors.Is(err, ErrTampered) {
		t.Errorf("short stanza: %v", err)
	}
	if _, err := id.Unwrap(context.Background(), []Stanza{so}); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("another key's stanza only: %v", err)
	}
}

// TestParseHPKEKeys: the PEM files are strict and canonical.
func TestParseHPKEKeys(t *testing.T) {
	id := testIdentity(t)
	pub, _ := id.Recipient().MarshalText()
	priv, err := id.marshal()
	if err != nil {
		t.Fatal(err)
	}
	if r, err := ParseHPKERecipient(pub); err != nil || r.Fingerprint() != id.Recipient().Fingerprint() {
		t.Fatalf("ParseHPKERecipient: %v", err)
	}
	if got, err := parseHPKEIdentity(priv); err != nil || got.Recipient().Fingerprint() != id.Recipient().Fingerprint() {
		t.Fatalf("parseHPKEIdentity: %v", err)
	}
	for name, bad := range map[string][]byte{
		"empty":           nil,
		"CRLF":            bytes.ReplaceAll(pub, []byte("\n"), []byte("\r\n")),
		"no final \\n":    bytes.TrimSuffix(pub, []byte("\n")),
		"leading text":    append([]byte("comment\n"), pub...),
		"trailing text":   append(bytes.Clone(pub), "x"...),
		"two blocks":      append(bytes.Clone(pub), pub...),
		"private as pub":  priv,
		"header":          bytes.Replace(pub, []byte("KEY-----\n"), []byte("KEY-----\nA: b\n\n"), 1),
		"long lines":      bytes.Replace(pub, []byte("\n"), nil, 2),
		"wrong type":      bytes.ReplaceAll(pub, []byte("PUBLIC KEY"), []byte("PUBLIC KEX")),
		"truncated":       append(bytes.Clone(pub[:100]), "\n-----END HSMBACKUP MLKEM768X25519 PUBLIC KEY-----\n"...),
		"over size limit": bytes.Repeat([]byte("a"), maxKeyFileSize+1),
	} {
		if _, err := ParseHPKERecipient(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v; want ErrMalformed", name, err)
		}
	}
	if _, err := parseHPKEIdentity(pub); !errors.Is(err, ErrMalformed) {
		t.Errorf("public key as private: %v", err)
	}
}
