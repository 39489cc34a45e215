package hsmcore

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Authorities are slow enough to make once per test binary.
var (
	authOnce sync.Once
	authSet  map[string]*Authority
)

// authority returns a shared test authority: "acme" and "zeta" are
// manufacturers, "cloud" and "other" operators.
func authority(t testing.TB, name string) *Authority {
	t.Helper()
	authOnce.Do(func() {
		authSet = map[string]*Authority{}
		for name, kind := range map[string]AuthorityKind{"acme": Manufacturer, "zeta": Manufacturer, "cloud": Operator, "other": Operator} {
			a, err := NewAuthority(kind, name)
			if err != nil {
				panic(err)
			}
			authSet[name] = a
		}
	})
	a := authSet[name]
	if a == nil {
		t.Fatalf("no test authority %q", name)
	}
	return a
}

// hw names the hardware a test device is made of.
type hw struct {
	class, mfr, op, firmware string
	fips                     bool
}

var stdHW = hw{class: "hsm2m.medium", mfr: "acme", op: "cloud", firmware: "2.1.0"}

func newDevice(t testing.TB, h hw) *Device {
	t.Helper()
	d, err := Manufacture(filepath.Join(t.TempDir(), "hsm"), ManufactureConfig{
		Class: h.class, Firmware: h.firmware, FIPS: h.fips,
		Manufacturer: authority(t, h.mfr), Operator: authority(t, h.op),
	}, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

const testPassword = "correct horse battery"

// initDevice gives d a crypto officer "admin" and a crypto user "alice",
// and returns their sessions.
func initDevice(t testing.TB, d *Device) (co, cu *Session) {
	t.Helper()
	if err := d.Initialize("admin", testPassword); err != nil {
		t.Fatal(err)
	}
	co = login(t, d, "admin")
	if err := co.CreateUser("alice", CryptoUser, testPassword); err != nil {
		t.Fatal(err)
	}
	return co, login(t, d, "alice")
}

func login(t testing.TB, d *Device, name string) *Session {
	t.Helper()
	s, err := d.Login(name, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// exportImage returns d's image as bytes.
func exportImage(t testing.TB, co *Session) []byte {
	t.Helper()
	_, r, err := co.ExportImage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// stateBytes returns the sealed state file: a device whose file did not
// change did not change.
func stateBytes(t testing.TB, d *Device) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// assertUnchanged checks that the device's sealed state is byte-for-byte
// what it was, and that its in-memory contents serialize the same.
func assertUnchanged(t testing.TB, d *Device, sealedBefore, contentsBefore []byte) {
	t.Helper()
	if !bytes.Equal(stateBytes(t, d), sealedBefore) {
		t.Fatal("sealed state file changed")
	}
	if !bytes.Equal(contentsBytes(t, d), contentsBefore) {
		t.Fatal("in-memory contents changed")
	}
}

func contentsBytes(t testing.TB, d *Device) []byte {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	var buf bytes.Buffer
	if err := writeContents(&buf, d.st); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// customerCA is a test customer's root CA.
type customerCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCustomerCA(t testing.TB) *customerCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "customer root CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &customerCA{cert, key}
}

// sign issues a certificate for a CSR, as the customer's CA would.
func (ca *customerCA) sign(t testing.TB, csrDER []byte) []byte {
	t.Helper()
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil || csr.CheckSignature() != nil {
		t.Fatalf("bad csr: %v", err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: csr.Subject, DNSNames: csr.DNSNames,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, csr.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// initCluster makes d the first member of cluster id, with a fresh
// customer CA, and returns the CA.
func initCluster(t testing.TB, d *Device, id string) *customerCA {
	t.Helper()
	ca := newCustomerCA(t)
	csr, err := d.ClusterCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.InitializeCluster(ca.sign(t, csr), ca.cert.Raw); err != nil {
		t.Fatal(err)
	}
	return ca
}
