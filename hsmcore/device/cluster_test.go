package device

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/testenv"
	"github.com/hsmbackup/hsmbackup/internal/testpki"
)

func TestClusterInitialization(t *testing.T) {
	d := newDevice(t, stdHW)
	if id, _ := d.TLSIdentity(); id.ClientCAs != nil || id.ClusterID != "" {
		t.Fatal("a new device already has a cluster identity")
	}
	ca := testpki.NewCA(t, "customer root CA")
	csr, err := d.claimCSR("cluster-1")
	if err != nil {
		t.Fatal(err)
	}
	// A second CSR for the same cluster is for the same key.
	csr2, err := d.claimCSR("cluster-1")
	if err != nil {
		t.Fatal(err)
	}
	r1, _ := x509.ParseCertificateRequest(csr)
	r2, _ := x509.ParseCertificateRequest(csr2)
	if !r1.PublicKey.(*ecdsa.PublicKey).Equal(r2.PublicKey) {
		t.Fatal("second CSR has another key")
	}

	other := testpki.NewCA(t, "customer root CA")
	otherDev := newDevice(t, stdHW)
	otherCSR, _ := otherDev.claimCSR("cluster-1")
	otherNameCSR, _ := newDevice(t, stdHW).claimCSR("cluster-2")
	refusals := []struct {
		name     string
		cert, ca []byte
	}{
		{"certificate for another HSM's key", ca.SignCSR(t, otherCSR), ca.Cert.Raw},
		{"certificate from another CA", other.SignCSR(t, csr), ca.Cert.Raw},
		{"CA that is not a CA", ca.SignCSR(t, csr), ca.SignCSR(t, csr)},
		{"certificate naming another cluster", ca.SignCSR(t, otherNameCSR), ca.Cert.Raw},
		{"garbage", []byte("not a certificate"), ca.Cert.Raw},
	}
	for _, r := range refusals {
		sealed, content := stateBytes(t, d), contentsBytes(t, d)
		if err := d.claimInit(r.cert, r.ca); !errors.Is(err, hsmcore.ErrInvalid) {
			t.Fatalf("%s: got %v, want ErrInvalid", r.name, err)
		}
		assertUnchanged(t, d, sealed, content)
	}

	if err := d.claimInit(ca.SignCSR(t, csr), ca.Cert.Raw); err != nil {
		t.Fatal(err)
	}
	id, err := d.TLSIdentity()
	if err != nil || id.ClientCAs == nil || id.ClusterID != "cluster-1" {
		t.Fatalf("identity after init: %+v, %v", id, err)
	}
	if _, err := d.claimCSR("cluster-1"); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("CSR after init: got %v, want ErrPermission", err)
	}
	if err := d.claimInit(ca.SignCSR(t, csr), ca.Cert.Raw); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("second init: got %v, want ErrPermission", err)
	}
}

// The customer's CA may be any CA; here OpenSSL makes it and signs the CSR
// as a customer following the CloudHSM documentation would.
func TestClusterInitWithOpenSSLCA(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		out, err := exec.Command(openssl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", p("ca.key"), "-out", p("ca.crt"), "-days", "30", "-subj", "/CN=customer root CA")
	d := newDevice(t, stdHW)
	csr, err := d.claimCSR("cluster-ossl")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p("cluster.csr"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}), 0o600)
	run("x509", "-req", "-in", p("cluster.csr"), "-CA", p("ca.crt"), "-CAkey", p("ca.key"),
		"-CAcreateserial", "-out", p("cluster.crt"), "-days", "30")
	certPEM, _ := os.ReadFile(p("cluster.crt"))
	caPEM, _ := os.ReadFile(p("ca.crt"))
	cb, _ := pem.Decode(certPEM)
	ab, _ := pem.Decode(caPEM)
	if cb == nil || ab == nil {
		t.Fatal("openssl wrote no PEM")
	}
	if err := d.claimInit(cb.Bytes, ab.Bytes); err != nil {
		t.Fatal(err)
	}
	if !d.ClusterInitialized() {
		t.Fatal("not initialized")
	}
}
