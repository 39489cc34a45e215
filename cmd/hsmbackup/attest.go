package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/urfave/cli/v2"
)

// attestHSM asks the HSM to attest to a fresh nonce and verifies the
// answer (see challengeOptions).
func attestHSM(ctx context.Context, cl *conn, opts hsmcore.ChallengeOptions) (*hsmcore.Statement, error) {
	st, err := hsmcore.Challenge(ctx, explained{cl}, opts)
	if err != nil && !errors.Is(err, hsmcore.ErrAttestation) {
		return nil, fmt.Errorf("attest: %w", err)
	}
	return st, err
}

// challengeOptions are what an attestation must show: both certificate
// chains, the signature, the nonce, freshness, and the expectation flags.
// Expectations left unset default to what the statement claims, which
// VerifyAttestation still checks against the names in the certificates
// that chain to the trusted roots.
func challengeOptions(c *cli.Context, mfrRoots, opRoots *x509.CertPool) hsmcore.ChallengeOptions {
	return hsmcore.ChallengeOptions{
		ManufacturerRoots: mfrRoots,
		OperatorRoots:     opRoots,
		Expect: hsmcore.Expectation{
			Serial:       c.String("expect-serial"),
			Class:        c.String("expect-class"),
			Manufacturer: c.String("expect-manufacturer"),
			Operator:     c.String("expect-operator"),
			MinFirmware:  c.String("min-firmware"),
		},
		Certified: true,
	}
}

// explained is a conn whose calls that get no answer are explained
// (conn.explain), as the library's flows (hsmcore/cluster) call it.
type explained struct{ *conn }

func (e explained) Attest(ctx context.Context, nonce []byte) (*hsmcore.Attestation, error) {
	a, err := e.conn.Attest(ctx, nonce)
	return a, e.explain(err)
}

func (e explained) Health(ctx context.Context) (api.Health, error) {
	h, err := e.conn.Health(ctx)
	return h, e.explain(err)
}

// describeStatement is one line naming a verified HSM.
func describeStatement(st *hsmcore.Statement) string {
	s := fmt.Sprintf("serial %s, class %s, manufacturer %s, operator %s, firmware %s", st.Serial, st.Class, st.Manufacturer, st.Operator, st.Firmware)
	if st.FIPS {
		s += ", FIPS mode"
	}
	return s
}
