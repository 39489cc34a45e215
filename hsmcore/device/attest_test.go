package device

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func verifyOpts(t testing.TB, nonce []byte) hsmcore.VerifyOptions {
	return hsmcore.VerifyOptions{
		ManufacturerRoots: pool(authority(t, "acme").Certificate()),
		OperatorRoots:     pool(authority(t, "cloud").Certificate()),
		Nonce:             nonce,
		Expect:            hsmcore.Expectation{Class: "hsm2m.medium", Manufacturer: "acme", Operator: "cloud"},
	}
}

func TestAttestationVerifies(t *testing.T) {
	d := newDevice(t, stdHW)
	nonce := hsmcore.NewNonce()
	a, err := d.Attest(nonce)
	if err != nil {
		t.Fatal(err)
	}
	opts := verifyOpts(t, nonce)
	fp := d.PBKFingerprint()
	opts.Expect.PBKFingerprint = fp[:]
	opts.Expect.MinFirmware = "2.1.0"
	opts.Expect.Serial = d.Identity().Serial
	st, err := hsmcore.VerifyAttestation(a, opts)
	if err != nil {
		t.Fatal(err)
	}
	if st.Identity != d.Identity() {
		t.Fatalf("statement identity %+v, want %+v", st.Identity, d.Identity())
	}
	// The attestation survives a JSON round trip, as it will on the wire.
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	var a2 hsmcore.Attestation
	if err := json.Unmarshal(b, &a2); err != nil {
		t.Fatal(err)
	}
	if _, err := hsmcore.VerifyAttestation(&a2, opts); err != nil {
		t.Fatal(err)
	}
}

func TestAttestationRefusals(t *testing.T) {
	d := newDevice(t, stdHW)
	other := newDevice(t, hw{"hsm2m.medium", "acme", "other", "2.1.0", false})
	nonce := hsmcore.NewNonce()
	good, err := d.Attest(nonce)
	if err != nil {
		t.Fatal(err)
	}
	otherAtt, err := other.Attest(nonce)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		att    func() *hsmcore.Attestation
		opts   func(o *hsmcore.VerifyOptions)
		reason string
	}{
		{"replayed nonce", nil, func(o *hsmcore.VerifyOptions) { o.Nonce = hsmcore.NewNonce() }, "nonce"},
		{"stale", nil, func(o *hsmcore.VerifyOptions) { o.Now = time.Now().Add(10 * time.Minute) }, "stale"},
		{"from the future", nil, func(o *hsmcore.VerifyOptions) { o.Now = time.Now().Add(-10 * time.Minute) }, "stale"},
		{"untrusted manufacturer root", nil, func(o *hsmcore.VerifyOptions) { o.ManufacturerRoots = pool(authority(t, "zeta").Certificate()) }, "manufacturer chain"},
		{"untrusted operator root", nil, func(o *hsmcore.VerifyOptions) { o.OperatorRoots = pool(authority(t, "other").Certificate()) }, "operator chain"},
		{"wrong class", nil, func(o *hsmcore.VerifyOptions) { o.Expect.Class = "hsm1.medium" }, "class"},
		{"wrong operator", func() *hsmcore.Attestation { return otherAtt }, func(o *hsmcore.VerifyOptions) { o.OperatorRoots.AddCert(authority(t, "other").Certificate()) }, "operator"},
		{"wrong manufacturer", nil, func(o *hsmcore.VerifyOptions) { o.Expect.Manufacturer = "zeta" }, "manufacturer"},
		{"older firmware", nil, func(o *hsmcore.VerifyOptions) { o.Expect.MinFirmware = "2.2.0" }, "firmware"},
		{"not FIPS", nil, func(o *hsmcore.VerifyOptions) { o.Expect.FIPS = true }, "FIPS"},
		{"PBK fingerprint", nil, func(o *hsmcore.VerifyOptions) { o.Expect.PBKFingerprint = make([]byte, 32) }, "PBK"},
		{"edited statement", func() *hsmcore.Attestation {
			a := *good
			a.Statement = []byte(strings.Replace(string(a.Statement), "hsm2m.medium", "hsm2m.mediun", 1))
			return &a
		}, nil, "signature"},
		{"bad signature", func() *hsmcore.Attestation {
			a := *good
			a.Signature = append([]byte(nil), a.Signature...)
			a.Signature[len(a.Signature)-1] ^= 1
			return &a
		}, nil, "signature"},
		{"certificates of two devices", func() *hsmcore.Attestation {
			a := *good
			a.OperatorCertificate = otherAtt.OperatorCertificate
			return &a
		}, func(o *hsmcore.VerifyOptions) { o.OperatorRoots.AddCert(authority(t, "other").Certificate()) }, "different keys"},
		{"another device's statement", func() *hsmcore.Attestation {
			a := *good
			a.Statement = otherAtt.Statement
			return &a
		}, nil, "signature"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := good
			if c.att != nil {
				a = c.att()
			}
			opts := verifyOpts(t, nonce)
			if c.opts != nil {
				c.opts(&opts)
			}
			_, err := hsmcore.VerifyAttestation(a, opts)
			if !errors.Is(err, hsmcore.ErrAttestation) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("got %v, want ErrAttestation naming %q", err, c.reason)
			}
		})
	}
}

func TestAttestRejectsBadNonce(t *testing.T) {
	d := newDevice(t, stdHW)
	if _, err := d.Attest(make([]byte, 8)); !errors.Is(err, hsmcore.ErrInvalid) {
		t.Fatalf("got %v, want ErrInvalid", err)
	}
}

// Once the HSM has a cluster key, its attestation names it, binding the
// cluster CSR to the attested HSM.
func TestAttestationNamesClusterKey(t *testing.T) {
	d := newDevice(t, stdHW)
	nonce := hsmcore.NewNonce()
	a, _ := d.Attest(nonce)
	st, err := hsmcore.VerifyAttestation(a, verifyOpts(t, nonce))
	if err != nil || st.ClusterKeyHash != nil {
		t.Fatalf("before a CSR: %v, hash %x", err, st.ClusterKeyHash)
	}
	der, err := d.claimCSR("cluster-1")
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	want, _ := hsmcore.PublicKeyHash(csr.PublicKey)
	a, _ = d.Attest(nonce)
	st, err = hsmcore.VerifyAttestation(a, verifyOpts(t, nonce))
	if err != nil || !bytes.Equal(st.ClusterKeyHash, want) {
		t.Fatalf("after a CSR: %v, hash %x, want %x", err, st.ClusterKeyHash, want)
	}
}
