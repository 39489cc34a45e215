package hsmcore_test

import (
	"context"
	"crypto/x509"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
)

// attester is a device as an hsmcore.Attester; replay, if set, answers
// every challenge with that attestation instead.
type attester struct {
	d      *device.Device
	replay *hsmcore.Attestation
	err    error
}

func (a *attester) Attest(_ context.Context, nonce []byte) (*hsmcore.Attestation, error) {
	if a.err != nil {
		return nil, a.err
	}
	if a.replay != nil {
		return a.replay, nil
	}
	return a.d.Attest(nonce)
}

func newAuthority(tb testing.TB, kind device.AuthorityKind, name string) *device.Authority {
	tb.Helper()
	a, err := device.NewAuthority(kind, name)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

func manufacture(tb testing.TB, mfr, op *device.Authority) *device.Device {
	tb.Helper()
	d, _, err := device.Manufacture(filepath.Join(tb.TempDir(), "hsm"), device.ManufactureConfig{
		Class: "hsm2m.medium", Firmware: "2.1.0", Manufacturer: mfr, Operator: op,
	}, device.TestOptions())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

func roots(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func TestChallenge(t *testing.T) {
	ctx := context.Background()
	mfr := newAuthority(t, device.Manufacturer, "acme")
	op := newAuthority(t, device.Operator, "cloud")
	other := newAuthority(t, device.Operator, "othercloud")
	d := manufacture(t, mfr, op)
	theirs := manufacture(t, mfr, other)
	expect := hsmcore.Expectation{Class: "hsm2m.medium", Manufacturer: "acme", Operator: "cloud", MinFirmware: "2.1.0"}
	opts := hsmcore.ChallengeOptions{
		ManufacturerRoots: roots(mfr.Certificate()),
		OperatorRoots:     roots(op.Certificate(), other.Certificate()),
		Expect:            expect,
	}

	st, err := hsmcore.Challenge(ctx, &attester{d: d}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if st.Identity != d.Identity() || len(st.Nonce) != hsmcore.NonceSize || st.Certificate == nil {
		t.Fatalf("statement %+v, want the identity %+v, a nonce and the device certificate", st.Identity, d.Identity())
	}

	// Certified accepts what the roots certify, and no more.
	certified := opts
	certified.Expect, certified.Certified = hsmcore.Expectation{}, true
	if st, err := hsmcore.Challenge(ctx, &attester{d: theirs}, certified); err != nil || st.Operator != "othercloud" {
		t.Fatalf("Certified, another trusted operator: %v, %v", st, err)
	}
	certified.OperatorRoots = roots(op.Certificate())
	if _, err := hsmcore.Challenge(ctx, &attester{d: theirs}, certified); !errors.Is(err, hsmcore.ErrAttestation) || !strings.Contains(err.Error(), "operator chain") {
		t.Fatalf("Certified, untrusted operator: %v", err)
	}
	if _, err := hsmcore.Challenge(ctx, &attester{d: d}, hsmcore.ChallengeOptions{ManufacturerRoots: opts.ManufacturerRoots, OperatorRoots: opts.OperatorRoots}); !errors.Is(err, hsmcore.ErrAttestation) {
		t.Fatalf("no expectation: %v", err)
	}

	old, err := d.Attest(hsmcore.NewNonce())
	if err != nil {
		t.Fatal(err)
	}
	stale := opts
	stale.Now = time.Now().Add(10 * time.Minute)
	failing := errors.New("unreachable")
	for _, tc := range []struct {
		name string
		a    *attester
		opts hsmcore.ChallengeOptions
		want string
	}{
		{"replayed attestation", &attester{replay: old}, opts, "nonce does not match"},
		{"other operator", &attester{d: theirs}, opts, `operator "othercloud", want "cloud"`},
		{"stale", &attester{d: d}, stale, "stale"},
		{"newer firmware required", &attester{d: d}, func() hsmcore.ChallengeOptions {
			o := opts
			o.Expect.MinFirmware = "2.2.0"
			return o
		}(), "older than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := hsmcore.Challenge(ctx, tc.a, tc.opts)
			if !errors.Is(err, hsmcore.ErrAttestation) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q and %v", err, tc.want, hsmcore.ErrAttestation)
			}
		})
	}
	// A failure to attest is passed through, for the caller to name.
	if _, err := hsmcore.Challenge(ctx, &attester{err: failing}, opts); err != failing {
		t.Fatalf("attest failing: %v", err)
	}
}
