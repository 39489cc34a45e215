package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newCSR(t *testing.T, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestCA(t *testing.T) {
	ca, err := NewCA("customer CA")
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.IsCA || ca.Cert.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P384() || ca.Cert.NotAfter.Before(time.Now().Add(CAValidity-2*time.Hour)) {
		t.Fatalf("CA certificate: CA %t, curve %v, until %s", ca.Cert.IsCA, ca.Cert.PublicKey.(*ecdsa.PublicKey).Curve, ca.Cert.NotAfter)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)

	der, err := ca.SignCSR(newCSR(t, "cluster-1"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil || cert.Subject.CommonName != "cluster-1" {
		t.Fatalf("cluster certificate for %q: %v", cert.Subject.CommonName, err)
	}
	bad := newCSR(t, "cluster-1")
	bad[len(bad)-3] ^= 1
	if _, err := ca.SignCSR(bad); err == nil {
		t.Fatal("CSR with a bad signature signed")
	}

	cl, err := ca.Client("officer")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("client certificate: %v", err)
	}
	if _, err := ca.IssueClient("", time.Now(), time.Now().Add(time.Hour)); err == nil {
		t.Fatal("client certificate without a name issued")
	}
}

func TestFiles(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("customer CA")
	if err != nil {
		t.Fatal(err)
	}
	caDir := filepath.Join(dir, "ca")
	if err := ca.Save(caDir); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(caDir, CAKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("CA key: %v, %v", fi, err)
	}
	if err := ca.Save(caDir); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second Save: %v", err)
	}
	got, err := Load(caDir)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Cert.Equal(ca.Cert) || !got.Key.Equal(ca.Key) {
		t.Fatal("loaded CA differs")
	}

	cl, err := ca.Client("officer")
	if err != nil {
		t.Fatal(err)
	}
	prefix := filepath.Join(dir, "officer")
	if err := SaveClient(prefix, cl); err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(prefix+".crt", prefix+".key"); err != nil {
		t.Fatalf("saved client certificate: %v", err)
	}
	if err := SaveClient(prefix, cl); err == nil {
		t.Fatal("client certificate overwritten")
	}

	// A key others may read is refused.
	if err := os.Chmod(filepath.Join(caDir, CAKeyFile), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(caDir); err == nil || !strings.Contains(err.Error(), "has mode 0640; a secret file must be 0600") {
		t.Fatalf("Load with key mode 0640: %v", err)
	}

	// Another CA's key does not go with the certificate.
	other, err := NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	mixed := filepath.Join(dir, "mixed")
	if err := os.Mkdir(mixed, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := WriteCertificate(filepath.Join(mixed, CACertFile), ca.Cert.Raw); err != nil {
		t.Fatal(err)
	}
	if err := WriteKey(filepath.Join(mixed, CAKeyFile), other.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(mixed); err == nil || !strings.Contains(err.Error(), "is not the key of") {
		t.Fatalf("Load with another CA's key: %v", err)
	}
	if _, err := ReadCSR(filepath.Join(mixed, CACertFile)); err == nil || !strings.Contains(err.Error(), "no PEM CERTIFICATE REQUEST") {
		t.Fatalf("ReadCSR of a certificate: %v", err)
	}
}
