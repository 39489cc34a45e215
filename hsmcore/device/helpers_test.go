package device

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/testpki"
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
	d, _, err := Manufacture(filepath.Join(t.TempDir(), "hsm"), ManufactureConfig{
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
	if err := co.CreateUser("alice", hsmcore.CryptoUser, testPassword); err != nil {
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

// stateBytes returns the sealed state file and the journal after it: a
// device whose files did not change did not change.
func stateBytes(t testing.TB, d *Device) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	j, err := os.ReadFile(filepath.Join(d.dir, journalFile))
	if err != nil {
		t.Fatal(err)
	}
	return append(b, j...)
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

// initCluster makes d the first member of cluster id, with a fresh
// customer CA, and returns the CA.
func initCluster(t testing.TB, d *Device, id string) *testpki.CA {
	t.Helper()
	ca := testpki.NewCA(t, "customer root CA")
	csr, err := d.claimCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.claimInit(ca.SignCSR(t, csr), ca.Cert.Raw); err != nil {
		t.Fatal(err)
	}
	return ca
}

// testClaim returns a proof for op on object on d, made as the holder of
// its claim secret; a device that issues no nonce gets one without, for
// the call to refuse.
func (d *Device) testClaim(op, object string) *hsmcore.ClaimProof {
	nonce, err := d.ClaimNonce()
	if err != nil {
		return &hsmcore.ClaimProof{Serial: d.id.Serial}
	}
	p := hsmcore.Claim{Serial: d.id.Serial, Secret: d.claim}.Prove(nonce, op, object)
	return &p
}

// claimCSR, claimInit and claimImport are ClusterCSR, InitializeCluster
// and ClaimImage by the claim holder.
func (d *Device) claimCSR(id string) ([]byte, error) {
	return d.ClusterCSR(id, d.testClaim(hsmcore.ClaimCSR, id))
}

func (d *Device) claimInit(cert, ca []byte) error {
	return d.InitializeCluster(cert, ca, d.testClaim(hsmcore.ClaimInit, hsmcore.ClusterInitObject(cert, ca)))
}

func (d *Device) claimImport(ctx context.Context, r io.Reader) (*hsmcore.ImageHeader, error) {
	return d.ClaimImage(ctx, d.testClaim(hsmcore.ClaimImport, ""), r)
}
