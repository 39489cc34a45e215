package hsmcore

import (
	"cmp"
	"context"
	"crypto/x509"
	"encoding/json"
	"time"
)

// Attester is an HSM that attests to a nonce. *hsmcore/client.Client
// satisfies it.
type Attester interface {
	// Attest returns the HSM's attestation bound to nonce.
	Attest(ctx context.Context, nonce []byte) (*Attestation, error)
}

// ChallengeOptions configure Challenge. Both root pools are required.
type ChallengeOptions struct {
	ManufacturerRoots *x509.CertPool
	OperatorRoots     *x509.CertPool
	// Expect is what the HSM must be.
	Expect Expectation
	// Certified fills Expect's empty Class, Manufacturer and Operator with
	// what the statement claims, so that any HSM the roots certify is
	// accepted: VerifyAttestation still checks those claims against the
	// names in the certificates that chain to the roots.
	Certified bool
	// Now is the verifier's time; zero means time.Now().
	Now time.Time
	// MaxAge bounds the statement's age (see VerifyOptions); 0 means 5
	// minutes.
	MaxAge time.Duration
}

// Challenge has a attest to a fresh nonce and verifies the answer with
// VerifyAttestation: both certificate chains, the signature, the nonce,
// freshness and opts.Expect. It returns the verified statement. A failure
// of a.Attest is returned as it is, for the caller to name; an attestation
// that does not verify fails with VerifyAttestation's error, which wraps
// ErrAttestation.
func Challenge(ctx context.Context, a Attester, opts ChallengeOptions) (*Statement, error) {
	nonce := NewNonce()
	att, err := a.Attest(ctx, nonce)
	if err != nil {
		return nil, err
	}
	want := opts.Expect
	if opts.Certified {
		want = want.Certified(att)
	}
	return VerifyAttestation(att, VerifyOptions{
		ManufacturerRoots: opts.ManufacturerRoots,
		OperatorRoots:     opts.OperatorRoots,
		Nonce:             nonce,
		Expect:            want,
		Now:               opts.Now,
		MaxAge:            opts.MaxAge,
	})
}

// Certified returns e with its empty Class, Manufacturer and Operator
// filled with what a's statement claims, so that any HSM the roots
// certify is accepted: VerifyAttestation still checks those claims
// against the names in the certificates that chain to the roots. A
// statement that does not parse leaves e as it is, and VerifyAttestation
// names the fault.
func (e Expectation) Certified(a *Attestation) Expectation {
	if a == nil {
		return e
	}
	var claimed Statement
	if json.Unmarshal(a.Statement, &claimed) == nil {
		e.Class = cmp.Or(e.Class, claimed.Class)
		e.Manufacturer = cmp.Or(e.Manufacturer, claimed.Manufacturer)
		e.Operator = cmp.Or(e.Operator, claimed.Operator)
	}
	return e
}
