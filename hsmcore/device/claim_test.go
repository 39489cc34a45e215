package device

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/testpki"
)

// clock is a settable time for Options.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *clock) advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

// clockedDevice is a new device on a clock of its own.
func clockedDevice(t *testing.T) (*Device, *clock) {
	t.Helper()
	c := &clock{now: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	opts := TestOptions()
	opts.Now = c.Now
	d, _, err := Manufacture(filepath.Join(t.TempDir(), "hsm"), ManufactureConfig{Class: stdHW.class, Firmware: stdHW.firmware,
		Manufacturer: authority(t, stdHW.mfr), Operator: authority(t, stdHW.op)}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, c
}

// stranger is someone with a secret of their own, who claims to hold d's.
func stranger(d *Device) hsmcore.Claim {
	return hsmcore.NewClaim(d.id.Serial)
}

// proveAs makes c's proof for op on object with a nonce from d.
func proveAs(t *testing.T, d *Device, c hsmcore.Claim, op, object string) *hsmcore.ClaimProof {
	t.Helper()
	nonce, err := d.ClaimNonce()
	if err != nil {
		t.Fatal(err)
	}
	p := c.Prove(nonce, op, object)
	return &p
}

func holder(d *Device) hsmcore.Claim { return hsmcore.Claim{Serial: d.id.Serial, Secret: d.claim} }

// Five wrong proofs in a row, and the next proof, even the right one, is
// refused unchecked until the lockout ends; each further failure doubles
// it. A good proof after it ends clears the count.
func TestClaimRateLimitEnds(t *testing.T) {
	d, clk := clockedDevice(t)
	before := d.StateDigest()
	for i := range claimFreeFailures {
		if _, err := d.ClusterCSR("c1", proveAs(t, d, stranger(d), hsmcore.ClaimCSR, "c1")); !errors.Is(err, hsmcore.ErrPermission) || !strings.Contains(err.Error(), "wrong claim secret") {
			t.Fatalf("wrong proof %d: %v", i, err)
		}
	}
	_, err := d.ClusterCSR("c1", proveAs(t, d, holder(d), hsmcore.ClaimCSR, "c1"))
	if !errors.Is(err, hsmcore.ErrPermission) || !strings.Contains(err.Error(), "too many wrong claim proofs") {
		t.Fatalf("the right proof during the lockout: %v, want it refused", err)
	}
	if d.StateDigest() != before {
		t.Fatal("refused proofs changed the state")
	}
	clk.advance(claimLockout + time.Second)
	// One more failure: locked for twice as long.
	if _, err := d.ClusterCSR("c1", proveAs(t, d, stranger(d), hsmcore.ClaimCSR, "c1")); !strings.Contains(err.Error(), "wrong claim secret") {
		t.Fatalf("after the lockout, a wrong proof: %v", err)
	}
	clk.advance(claimLockout + time.Second)
	if _, err := d.ClusterCSR("c1", proveAs(t, d, holder(d), hsmcore.ClaimCSR, "c1")); !strings.Contains(err.Error(), "too many") {
		t.Fatalf("the second lockout lasts 2 minutes: %v", err)
	}
	clk.advance(claimLockout)
	if _, err := d.ClusterCSR("c1", proveAs(t, d, holder(d), hsmcore.ClaimCSR, "c1")); err != nil {
		t.Fatalf("the right proof after the lockout: %v", err)
	}
	// The count is cleared: five more wrong ones before a lockout.
	for range claimFreeFailures - 1 {
		d.ClusterCSR("c1", proveAs(t, d, stranger(d), hsmcore.ClaimCSR, "c1"))
	}
	if _, err := d.ClusterCSR("c1", proveAs(t, d, holder(d), hsmcore.ClaimCSR, "c1")); err != nil {
		t.Fatalf("4 failures after a good proof lock: %v", err)
	}
}

// A nonce is good for one proof, within claimNonceTTL, and at most
// maxClaimNonces are outstanding: asking for more drops the oldest.
func TestClaimNonceExpires(t *testing.T) {
	d, clk := clockedDevice(t)
	h := holder(d)
	n, _ := d.ClaimNonce()
	clk.advance(claimNonceTTL + time.Second)
	p := h.Prove(n, hsmcore.ClaimCSR, "c1")
	if _, err := d.ClusterCSR("c1", &p); !errors.Is(err, hsmcore.ErrPermission) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("an expired nonce: %v", err)
	}
	n, _ = d.ClaimNonce()
	p = h.Prove(n, hsmcore.ClaimCSR, "c1")
	if _, err := d.ClusterCSR("c1", &p); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ClusterCSR("c1", &p); !errors.Is(err, hsmcore.ErrPermission) || !strings.Contains(err.Error(), "spent") {
		t.Fatalf("a proof used twice: %v", err)
	}
	first, _ := d.ClaimNonce()
	for range maxClaimNonces {
		d.ClaimNonce()
	}
	p = h.Prove(first, hsmcore.ClaimCSR, "c1")
	if _, err := d.ClusterCSR("c1", &p); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("the oldest nonce beyond %d outstanding: %v", maxClaimNonces, err)
	}
	if len(d.claims.issued) > maxClaimNonces {
		t.Fatalf("%d nonces kept", len(d.claims.issued))
	}
}

// A proof names its operation and object: one for a CSR of cluster c1
// makes no CSR of c2 and installs no certificate; one for some
// certificates installs no others; one for another HSM's serial is
// refused by name.
func TestClaimProofIsBound(t *testing.T) {
	d := newDevice(t, stdHW)
	h := holder(d)
	for _, c := range []struct {
		name     string
		op, obj  string
		call     func(p *hsmcore.ClaimProof) error
		contains string
	}{
		{"csr of c1 for c2", hsmcore.ClaimCSR, "c1", func(p *hsmcore.ClaimProof) error { _, err := d.ClusterCSR("c2", p); return err }, "wrong claim secret, or made for another operation"},
		{"csr as an import", hsmcore.ClaimCSR, "", func(p *hsmcore.ClaimProof) error {
			_, err := d.ClaimImage(context.Background(), p, bytes.NewReader(nil))
			return err
		}, "made for another operation"},
	} {
		before := d.StateDigest()
		if err := c.call(proveAs(t, d, h, c.op, c.obj)); !errors.Is(err, hsmcore.ErrPermission) || !strings.Contains(err.Error(), c.contains) {
			t.Errorf("%s: %v", c.name, err)
		}
		if d.StateDigest() != before {
			t.Fatalf("%s changed the state", c.name)
		}
	}
	csr, err := d.ClusterCSR("c1", proveAs(t, d, h, hsmcore.ClaimCSR, "c1"))
	if err != nil {
		t.Fatal(err)
	}
	ca := testpki.NewCA(t, "customer root CA")
	cert := ca.SignCSR(t, csr)
	other := ca.SignCSR(t, csr) // the same key, another certificate
	p := proveAs(t, d, h, hsmcore.ClaimInit, hsmcore.ClusterInitObject(other, ca.Cert.Raw))
	if err := d.InitializeCluster(cert, ca.Cert.Raw, p); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("a proof for other certificates: %v", err)
	}
	wrongSerial := hsmcore.Claim{Serial: "HSM-ELSEWHERE", Secret: d.claim}
	if err := d.InitializeCluster(cert, ca.Cert.Raw, proveAs(t, d, wrongSerial, hsmcore.ClaimInit, hsmcore.ClusterInitObject(cert, ca.Cert.Raw))); !errors.Is(err, hsmcore.ErrPermission) ||
		!strings.Contains(err.Error(), "the claim proof is for HSM HSM-ELSEWHERE, not this HSM "+d.id.Serial) {
		t.Fatalf("a proof for another serial: %v", err)
	}
	if d.ClusterInitialized() {
		t.Fatal("initialized by a refused proof")
	}
	if err := d.InitializeCluster(cert, ca.Cert.Raw, proveAs(t, d, h, hsmcore.ClaimInit, hsmcore.ClusterInitObject(cert, ca.Cert.Raw))); err != nil {
		t.Fatal(err)
	}
}

// The claim survives a restart (the secret is in the sealed state) and a
// zeroization (a zeroized HSM is new again, for the same holder); a
// stranger is refused throughout.
func TestClaimSurvivesReopenAndZeroize(t *testing.T) {
	d := newDevice(t, stdHW)
	h := holder(d)
	d = reopen(t, d, TestOptions())
	if _, err := d.ClusterCSR("c1", proveAs(t, d, stranger(d), hsmcore.ClaimCSR, "c1")); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("a stranger after a restart: %v", err)
	}
	if _, err := d.ClusterCSR("c1", proveAs(t, d, h, hsmcore.ClaimCSR, "c1")); err != nil {
		t.Fatalf("the holder after a restart: %v", err)
	}
	co, _ := initDevice(t, d)
	initCluster(t, d, "c1")
	if err := co.Zeroize(); err != nil {
		t.Fatal(err)
	}
	d = reopen(t, d, TestOptions())
	img := func() []byte {
		src := newDevice(t, stdHW)
		co, _ := initDevice(t, src)
		initCluster(t, src, "theirs")
		return exportImage(t, co)
	}()
	before := d.StateDigest()
	if _, err := d.ClaimImage(context.Background(), proveAs(t, d, stranger(d), hsmcore.ClaimImport, ""), bytes.NewReader(img)); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("a stranger's image into the zeroized HSM: %v", err)
	}
	if _, err := d.ImportImage(context.Background(), nil, bytes.NewReader(img)); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("an image without a proof into the zeroized HSM: %v", err)
	}
	if d.StateDigest() != before {
		t.Fatal("a refused import changed the zeroized HSM")
	}
	if _, err := d.ClaimImage(context.Background(), proveAs(t, d, h, hsmcore.ClaimImport, ""), bytes.NewReader(img)); err != nil {
		t.Fatalf("the holder's import into the zeroized HSM: %v", err)
	}
}

// Once the cluster is initialized the claim is over: no nonce is issued,
// and the set-up calls are refused whatever they carry.
func TestClaimEndsWithClusterInit(t *testing.T) {
	d := newDevice(t, stdHW)
	h := holder(d)
	n, err := d.ClaimNonce()
	if err != nil {
		t.Fatal(err)
	}
	initCluster(t, d, "c1")
	if _, err := d.ClaimNonce(); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("a nonce after cluster init: %v", err)
	}
	if len(d.claims.issued) != 0 {
		t.Fatal("nonces outlived the claim")
	}
	p := h.Prove(n, hsmcore.ClaimCSR, "c2")
	if _, err := d.ClusterCSR("c2", &p); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("a CSR after init: %v", err)
	}
	p = h.Prove(n, hsmcore.ClaimImport, "")
	if _, err := d.ClaimImage(context.Background(), &p, bytes.NewReader(nil)); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("a claimed import after init: %v", err)
	}
}

// An HSM whose sealed state has no claim secret (made before claims)
// opens and works as before once set up; new, nobody can claim it, and
// the error says what to do.
func TestClaimLegacyState(t *testing.T) {
	d := newDevice(t, stdHW)
	d.mu.Lock()
	d.claim = nil
	if err := d.writeBase(d.st); err != nil { // sealed as a device made before claims
		t.Fatal(err)
	}
	d.mu.Unlock()
	d = reopen(t, d, TestOptions())
	if d.claim != nil {
		t.Fatal("a claim secret appeared")
	}
	_, err := d.ClaimNonce()
	if !errors.Is(err, hsmcore.ErrPermission) || !strings.Contains(err.Error(), "manufactured without a claim secret: nobody can claim it; manufacture it again") {
		t.Fatalf("nonce from a legacy HSM: %v", err)
	}
	if _, err := d.ClusterCSR("c1", nil); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("CSR on a legacy HSM: %v", err)
	}
	if _, err := d.ImportImage(context.Background(), nil, bytes.NewReader(nil)); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("image into a legacy HSM: %v", err)
	}
}

// The claim secret is nowhere but in the sealed state: not in the audit
// log (whose entries name the claim holder), nor in any other file of
// the device, nor in an error.
func TestClaimAuditedSecretNowhere(t *testing.T) {
	d := newDevice(t, stdHW)
	h := holder(d)
	var errs []string
	if _, err := d.ClusterCSR("c1", proveAs(t, d, stranger(d), hsmcore.ClaimCSR, "c1")); err != nil {
		errs = append(errs, err.Error())
	}
	initCluster(t, d, "c1")
	entries, _, err := d.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	var holderOps []string
	for _, e := range entries {
		if e.Actor == hsmcore.ClaimHolder {
			holderOps = append(holderOps, e.Op+" "+e.Result)
		}
	}
	if strings.Join(holderOps, ",") != "cluster.csr ok,cluster.init ok" {
		t.Fatalf("claim holder's entries: %v", holderOps)
	}
	log, _ := json.Marshal(entries)
	needles := [][]byte{h.Secret, fmt.Appendf(nil, "%x", h.Secret)}
	files, _ := filepath.Glob(filepath.Join(d.dir, "*"))
	for _, hay := range append([][]byte{log, []byte(strings.Join(errs, "\n"))}, readAll(t, files)...) {
		for _, n := range needles {
			if bytes.Contains(hay, n) {
				t.Fatal("the claim secret appears outside the sealed state")
			}
		}
	}
}

func readAll(t *testing.T, paths []string) [][]byte {
	var out [][]byte
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil {
			out = append(out, b)
		}
	}
	return out
}
