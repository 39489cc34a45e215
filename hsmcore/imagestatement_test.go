package hsmcore

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"
)

// testDevice is a self-signed P-384 device certificate and its key.
func testDevice(tb testing.TB, serial string) (*ecdsa.PrivateKey, []byte) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{SerialNumber: serial, OrganizationalUnit: []string{"c"}, Organization: []string{"m"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	return key, der
}

func signStatement(tb testing.TB, key *ecdsa.PrivateKey, cert []byte, st *ImageStatement) *SignedImageStatement {
	tb.Helper()
	msg, err := st.Marshal()
	if err != nil {
		tb.Fatal(err)
	}
	sig, err := ecdsa.SignASN1(rand.Reader, key, DomainDigest(ImageStatementDomain, msg))
	if err != nil {
		tb.Fatal(err)
	}
	return &SignedImageStatement{Statement: msg, Signature: sig, Certificate: cert}
}

func TestImageStatement(t *testing.T) {
	key, cert := testDevice(t, "HSM-1")
	img := []byte("an image")
	st := &ImageStatement{ImageID: [16]byte{1, 2, 3}, Serial: "HSM-1", Length: int64(len(img)), SHA256: sha256.Sum256(img)}
	s := signStatement(t, key, cert, st)
	got, c, err := s.Verify(ImageStatementOptions{})
	if err != nil || *got != *st || !bytes.Equal(c.Raw, cert) {
		t.Fatalf("Verify = %+v, %v", got, err)
	}
	if err := got.Check(st.ImageID, int64(len(img)), sha256.Sum256(img)); err != nil {
		t.Fatal(err)
	}
	if err := got.Check(st.ImageID, 3, sha256.Sum256(img[:3])); !errors.Is(err, ErrTruncated) {
		t.Errorf("a prefix: %v", err)
	}
	if err := got.Check(st.ImageID, int64(len(img)), sha256.Sum256([]byte("an imagf"))); !errors.Is(err, ErrTampered) {
		t.Errorf("other bytes: %v", err)
	}
	if err := got.Check([16]byte{9}, int64(len(img)), sha256.Sum256(img)); !errors.Is(err, ErrTampered) {
		t.Errorf("other image: %v", err)
	}
	// Domain separation: the same key's signature of the same bytes for
	// another purpose does not verify.
	other, _ := ecdsa.SignASN1(rand.Reader, key, DomainDigest(AttestationFormat, s.Statement))
	if _, _, err := (&SignedImageStatement{Statement: s.Statement, Signature: other, Certificate: cert}).Verify(ImageStatementOptions{}); !errors.Is(err, ErrTampered) {
		t.Errorf("attestation-domain signature: %v", err)
	}
	// Another device's key, or a certificate of another serial.
	key2, cert2 := testDevice(t, "HSM-2")
	if _, _, err := (&SignedImageStatement{Statement: s.Statement, Signature: s.Signature, Certificate: cert2}).Verify(ImageStatementOptions{}); !errors.Is(err, ErrTampered) {
		t.Errorf("another device's certificate: %v", err)
	}
	if _, _, err := signStatement(t, key2, cert2, st).Verify(ImageStatementOptions{}); !errors.Is(err, ErrTampered) {
		t.Errorf("certificate of another serial: %v", err)
	}
	// Roots that did not issue the certificate.
	roots := x509.NewCertPool()
	_, rc := testDevice(t, "root")
	rcert, _ := x509.ParseCertificate(rc)
	roots.AddCert(rcert)
	if _, _, err := s.Verify(ImageStatementOptions{ManufacturerRoots: roots}); !errors.Is(err, ErrTampered) {
		t.Errorf("foreign roots: %v", err)
	}
	// Version and encoding.
	b := bytes.Clone(s.Statement)
	b[0] = 2
	if _, err := ParseImageStatement(b); !errors.Is(err, ErrUnsupportedVersion) {
		t.Errorf("version 2: %v", err)
	}
	for _, bad := range [][]byte{nil, s.Statement[:len(s.Statement)-1], append(bytes.Clone(s.Statement), 0)} {
		if _, err := ParseImageStatement(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("%x: %v", bad, err)
		}
	}
}

// FuzzImageStatement: the parser and the verifier never panic, stay
// within their bounds, and what parses re-encodes to the same bytes.
func FuzzImageStatement(f *testing.F) {
	key, cert := testDevice(f, "HSM-1")
	s := signStatement(f, key, cert, &ImageStatement{Serial: "HSM-1", Length: 42})
	f.Add(s.Statement, s.Signature, cert)
	f.Add([]byte{1}, []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, stmt, sig, der []byte) {
		if len(stmt) > 4*MaxImageStatementSize || len(sig) > 1024 || len(der) > MaxDeviceCertSize+1024 {
			return
		}
		st, err := ParseImageStatement(stmt)
		if err == nil {
			again, err := st.Marshal()
			if err != nil || !bytes.Equal(again, stmt) {
				t.Fatalf("%x parses but re-encodes to %x, %v", stmt, again, err)
			}
		} else if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupportedVersion) {
			t.Fatalf("parse error without sentinel: %v", err)
		}
		_, _, err = (&SignedImageStatement{Statement: stmt, Signature: sig, Certificate: der}).Verify(ImageStatementOptions{})
		if err != nil && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTampered) && !errors.Is(err, ErrUnsupportedVersion) {
			t.Fatalf("verify error without sentinel: %v", err)
		}
	})
}
