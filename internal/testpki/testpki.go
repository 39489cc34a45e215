// Package testpki makes a customer CA for tests: internal/pki's CA, the
// one the CLI makes, with helpers that fail the test instead of returning
// errors.
package testpki

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/internal/pki"
)

// CA is a test certificate authority.
type CA struct {
	*pki.CA
}

// NewCA returns a new self-signed CA named name.
func NewCA(tb testing.TB, name string) *CA {
	tb.Helper()
	ca, err := pki.NewCA(name)
	if err != nil {
		tb.Fatal(err)
	}
	return &CA{ca}
}

// SignCSR issues the cluster certificate for a DER CSR.
func (ca *CA) SignCSR(tb testing.TB, csrDER []byte) []byte {
	tb.Helper()
	der, err := ca.CA.SignCSR(csrDER)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// ClientCert issues a client certificate for cn valid from notBefore to
// notAfter.
func (ca *CA) ClientCert(tb testing.TB, cn string, notBefore, notAfter time.Time) tls.Certificate {
	tb.Helper()
	cert, err := ca.IssueClient(cn, notBefore, notAfter)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

// Client issues a client certificate for cn valid now.
func (ca *CA) Client(tb testing.TB, cn string) tls.Certificate {
	tb.Helper()
	cert, err := ca.CA.Client(cn)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}
