// Package pki is a customer's own certificate authority, as CloudHSM
// expects one: it signs a cluster's CSR (the HSMs' TLS identity) and
// issues the client certificates the HSMs accept. Keys are ECDSA P-384;
// files are PEM, private keys mode 0600 and refused on load if anyone but
// the owner may read them.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
)

// Validity periods. Certificates start an hour in the past, for clocks
// slightly behind.
const (
	CAValidity      = 10 * 365 * 24 * time.Hour
	ClusterValidity = 365 * 24 * time.Hour
	ClientValidity  = 365 * 24 * time.Hour
	backdate        = time.Hour
)

// The files of a CA directory (Save, Load).
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// CA is a certificate authority: a self-signed CA certificate and its key.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA makes a self-signed CA named name with a fresh P-384 key, valid
// for CAValidity. It may sign end-entity certificates only (path length
// zero).
func NewCA(name string) (*CA, error) {
	if name == "" {
		return nil, errors.New("new CA: a name is required")
	}
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-backdate), NotAfter: now.Add(CAValidity),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic("pki: " + err.Error()) // crypto/rand does not fail
	}
	return n
}

// ParseCSR parses a DER certificate signing request and checks its
// signature.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	return csr, nil
}

// SignCSR issues the cluster certificate for a DER CSR, whose signature it
// checks: a server certificate with the CSR's subject (the cluster id as
// common name) and key, valid for ClusterValidity. It returns DER.
func (ca *CA) SignCSR(csrDER []byte) ([]byte, error) {
	csr, err := ParseCSR(csrDER)
	if err != nil {
		return nil, fmt.Errorf("sign csr: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: csr.Subject, DNSNames: csr.DNSNames,
		NotBefore: now.Add(-backdate), NotAfter: now.Add(ClusterValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign csr: %w", err)
	}
	return der, nil
}

// IssueClient issues a client certificate for cn, with a fresh P-384 key,
// valid from notBefore to notAfter.
func (ca *CA) IssueClient(cn string, notBefore, notAfter time.Time) (tls.Certificate, error) {
	if cn == "" {
		return tls.Certificate{}, errors.New("issue client certificate: a common name is required")
	}
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue client certificate: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue client certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue client certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// Client issues a client certificate for cn valid from now for
// ClientValidity.
func (ca *CA) Client(cn string) (tls.Certificate, error) {
	now := time.Now()
	return ca.IssueClient(cn, now.Add(-backdate), now.Add(ClientValidity))
}

// Save writes the CA into dir (made mode 0700 if missing): CACertFile and
// CAKeyFile, the key mode 0600. It refuses to overwrite either.
func (ca *CA) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save CA: %w", err)
	}
	for _, f := range []string{CACertFile, CAKeyFile} {
		if _, err := os.Lstat(filepath.Join(dir, f)); err == nil {
			return fmt.Errorf("save CA: %s already exists", filepath.Join(dir, f))
		}
	}
	if err := WriteKey(filepath.Join(dir, CAKeyFile), ca.Key); err != nil {
		return fmt.Errorf("save CA: %w", err)
	}
	if err := WriteCertificate(filepath.Join(dir, CACertFile), ca.Cert.Raw); err != nil {
		return fmt.Errorf("save CA: %w", err)
	}
	return nil
}

// Load reads the CA that Save wrote into dir, and checks that the key is
// the certificate's and the certificate a CA's.
func Load(dir string) (*CA, error) {
	cert, err := ReadCertificate(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	key, err := ReadKey(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("load CA: %s is not a CA certificate", filepath.Join(dir, CACertFile))
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("load CA: %s is not the key of %s", filepath.Join(dir, CAKeyFile), filepath.Join(dir, CACertFile))
	}
	return &CA{Cert: cert, Key: key}, nil
}

// SaveClient writes a client certificate to prefix+".crt" and its key to
// prefix+".key" (mode 0600), refusing to overwrite either.
func SaveClient(prefix string, cert tls.Certificate) error {
	key, ok := cert.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || len(cert.Certificate) == 0 {
		return errors.New("save client certificate: want a certificate with an ECDSA key")
	}
	if err := WriteKey(prefix+".key", key); err != nil {
		return fmt.Errorf("save client certificate: %w", err)
	}
	if err := WriteCertificate(prefix+".crt", cert.Certificate[0]); err != nil {
		return fmt.Errorf("save client certificate: %w", err)
	}
	return nil
}

// WriteCertificate writes a DER certificate as PEM to a new file, mode
// 0644.
func WriteCertificate(path string, der []byte) error {
	return atomicfile.WriteNew(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// WriteKey writes key as PKCS#8 PEM to a new file, mode 0600.
func WriteKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return atomicfile.WriteNew(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// ReadCertificate reads the one PEM certificate in path.
func ReadCertificate(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	der, err := onePEM(path, data, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ReadCSR reads a PEM certificate signing request ("CERTIFICATE REQUEST",
// as openssl and hsmbackup write it) and returns its DER.
func ReadCSR(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return onePEM(path, data, "CERTIFICATE REQUEST")
}

// ReadKey reads a PEM ECDSA private key (PKCS#8 or SEC 1) from path, which
// must be a regular file that neither group nor others may read or write.
func ReadKey(path string) (*ecdsa.PrivateKey, error) {
	data, err := atomicfile.ReadPrivate(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("%s: no PEM private key in it", path)
	}
	var k any
	switch b.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("%s: PEM block %q, want a private key", path, b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an ECDSA key", path)
	}
	return key, nil
}

// onePEM returns the DER of the one PEM block of type typ in data.
func onePEM(path string, data []byte, typ string) ([]byte, error) {
	var der []byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != typ {
			continue
		}
		if der != nil {
			return nil, fmt.Errorf("%s: more than one %s", path, typ)
		}
		der = b.Bytes
	}
	if der == nil {
		return nil, fmt.Errorf("%s: no PEM %s in it", path, typ)
	}
	return der, nil
}
