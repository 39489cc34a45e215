package backup

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

const (
	vectorStatementSigning  = "testdata/manifest-v1-statement.signing.json"
	vectorStatementManifest = "testdata/manifest-v1-statement.json"
)

// statementManifest is fixedManifest with the HSM's signed image
// statement, made by a fresh self-signed "device" certificate naming the
// source (ECDSA signatures are randomized: the vector is written once, with
// BACKUP_WRITE_VECTORS=1 when the files are absent, and then pinned).
func statementManifest(tb testing.TB) *Manifest {
	tb.Helper()
	m := fixedManifest()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	name := pkix.Name{SerialNumber: m.Source.Serial, OrganizationalUnit: []string{m.Source.Class}, Organization: []string{m.Source.Manufacturer}}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: name,
		NotBefore: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2046, 1, 1, 0, 0, 0, 0, time.UTC)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	st := hsmcore.ImageStatement{Serial: m.Source.Serial, Length: m.ImageSize}
	id, _ := hex.DecodeString(m.ImageID)
	copy(st.ImageID[:], id)
	copy(st.SHA256[:], bytes.Repeat([]byte{0x3c}, 32))
	msg, err := st.Marshal()
	if err != nil {
		tb.Fatal(err)
	}
	sig, err := ecdsa.SignASN1(rand.Reader, key, hsmcore.DomainDigest(hsmcore.ImageStatementDomain, msg))
	if err != nil {
		tb.Fatal(err)
	}
	m.ImageSHA256 = strings.Repeat("3c", 32)
	m.ImageStatement = &hsmcore.SignedImageStatement{Statement: msg, Signature: sig, Certificate: der}
	return m
}

// TestManifestStatementKnownAnswer pins a manifest of the form with
// image_sha256 and image_statement (docs/FORMATS.md 9.1): it parses,
// re-encodes byte for byte, its signing bytes are the pinned ones, and its
// Ed25519 signature and image statement verify.
func TestManifestStatementKnownAnswer(t *testing.T) {
	priv := fixedKey()
	if _, err := os.Stat(vectorStatementManifest); os.IsNotExist(err) && os.Getenv("BACKUP_WRITE_VECTORS") == "1" {
		m := statementManifest(t)
		signing, err := m.SigningBytes()
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Sign(priv); err != nil {
			t.Fatal(err)
		}
		stored, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		for p, b := range map[string][]byte{vectorStatementSigning: signing, vectorStatementManifest: stored} {
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	stored, err := os.ReadFile(vectorStatementManifest)
	if err != nil {
		t.Fatal(err)
	}
	wantSigning, err := os.ReadFile(vectorStatementSigning)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseManifest(stored)
	if err != nil {
		t.Fatal(err)
	}
	signing, err := m.SigningBytes()
	if err != nil || !bytes.Equal(signing, wantSigning) {
		t.Fatalf("signing bytes differ from the vector (%v):\n got %s\nwant %s", err, signing, wantSigning)
	}
	pub := priv.Public().(ed25519.PublicKey)
	if err := m.Verify(pub); err != nil {
		t.Fatal(err)
	}
	// Without the statement the rest is the version 1 vector's manifest.
	legacy := *m
	legacy.ImageSHA256, legacy.ImageStatement, legacy.Signature = "", nil, nil
	old, _ := fixedManifest().SigningBytes()
	if b, _ := legacy.SigningBytes(); !bytes.Equal(b, old) {
		t.Errorf("without the statement the signing bytes are not the version 1 vector's:\n%s\n%s", b, old)
	}

	// One without the other, or a statement that names other facts.
	for name, change := range map[string]func(*Manifest){
		"sha256 without statement": func(m *Manifest) { m.ImageStatement = nil },
		"statement without sha256": func(m *Manifest) { m.ImageSHA256 = "" },
	} {
		c := *m
		change(&c)
		if err := c.Sign(priv); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
	for name, change := range map[string]func(*Manifest){
		"other size":     func(m *Manifest) { m.ImageSize++ },
		"other sha256":   func(m *Manifest) { m.ImageSHA256 = strings.Repeat("3d", 32) },
		"other image id": func(m *Manifest) { m.ImageID = strings.Repeat("a6", 16) },
		"other serial":   func(m *Manifest) { m.Source.Serial = "HSM-0002" },
		"other class":    func(m *Manifest) { m.Source.Class = "hsm1.medium" },
		"signature flipped": func(m *Manifest) {
			s := *m.ImageStatement
			s.Signature = bytes.Clone(s.Signature)
			s.Signature[len(s.Signature)-1] ^= 1
			m.ImageStatement = &s
		},
	} {
		c := *m
		change(&c)
		if err := c.Sign(priv); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := c.Verify(pub); !errors.Is(err, ErrManifest) {
			t.Errorf("%s: Verify = %v", name, err)
		}
	}
}
