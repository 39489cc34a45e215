package device

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/device/internal/kbkdf"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
)

// AuthorityKind says which of the two parties that certify every HSM an
// Authority is.
type AuthorityKind string

const (
	// Manufacturer builds the hardware: it certifies the device key and
	// embeds the manufacturer key backup key (MKBK) of the hardware class.
	Manufacturer AuthorityKind = "manufacturer"
	// Operator runs the hardware (AWS in CloudHSM): it certifies the device
	// key too and installs its operator key backup key (AKBK).
	Operator AuthorityKind = "operator"
)

// Authority is a manufacturer's or an operator's root: a self-signed
// ECDSA P-384 CA and the secret from which it provisions backup keys into
// the HSMs it makes or commissions. It stands for an offline facility; its
// secret never leaves this package.
type Authority struct {
	kind   AuthorityKind
	name   string
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	secret []byte // 32 bytes; root of MKBK (per class) or AKBK
}

const (
	authorityCertFile   = "root.crt"
	authorityKeyFile    = "root.key"
	authoritySecretFile = "backup-key.secret"
)

// NewAuthority creates a root CA and backup-key secret for a manufacturer
// or an operator called name.
func NewAuthority(kind AuthorityKind, name string) (*Authority, error) {
	if kind != Manufacturer && kind != Operator {
		return nil, fmt.Errorf("new authority: unknown kind %q: %w", kind, hsmcore.ErrInvalid)
	}
	if err := hsmcore.CheckName(name); err != nil {
		return nil, fmt.Errorf("new authority: name: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new authority: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: name + " " + string(kind) + " root CA", Organization: []string{name}, OrganizationalUnit: []string{string(kind)}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(30, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("new authority: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new authority: %w", err)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	return &Authority{kind: kind, name: name, cert: cert, key: key, secret: secret}, nil
}

// Kind returns whether a is a manufacturer or an operator.
func (a *Authority) Kind() AuthorityKind { return a.kind }

// Name returns the manufacturer's or operator's name.
func (a *Authority) Name() string { return a.name }

// Certificate returns the root certificate, the trust anchor verifiers use.
func (a *Authority) Certificate() *x509.Certificate { return a.cert }

// Save writes the authority into dir: root.crt (0644), root.key and
// backup-key.secret (0600). Existing files are not overwritten.
func (a *Authority) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save authority: %w", err)
	}
	for _, name := range []string{authorityCertFile, authorityKeyFile, authoritySecretFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return fmt.Errorf("save authority: %s: %w", filepath.Join(dir, name), hsmcore.ErrExists)
		}
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(a.key)
	if err != nil {
		return fmt.Errorf("save authority: %w", err)
	}
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{authoritySecretFile, pem.EncodeToMemory(&pem.Block{Type: "HSMCORE BACKUP KEY SECRET", Headers: map[string]string{"Kind": string(a.kind), "Name": a.name}, Bytes: a.secret}), 0o600},
		{authorityKeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{authorityCertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.cert.Raw}), 0o644},
	}
	for _, f := range files {
		if err := atomicfile.WriteFile(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return fmt.Errorf("save authority: %w", err)
		}
	}
	return nil
}

// LoadAuthority reads an authority saved by Save. Its key files must be
// 0600.
func LoadAuthority(dir string) (*Authority, error) {
	secretPEM, err := atomicfile.ReadPrivate(filepath.Join(dir, authoritySecretFile))
	if err != nil {
		return nil, fmt.Errorf("load authority: %w", err)
	}
	keyPEM, err := atomicfile.ReadPrivate(filepath.Join(dir, authorityKeyFile))
	if err != nil {
		return nil, fmt.Errorf("load authority: %w", err)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, authorityCertFile))
	if err != nil {
		return nil, fmt.Errorf("load authority: %w", err)
	}
	sb, _ := pem.Decode(secretPEM)
	kb, _ := pem.Decode(keyPEM)
	cb, _ := pem.Decode(certPEM)
	if sb == nil || kb == nil || cb == nil || sb.Type != "HSMCORE BACKUP KEY SECRET" || len(sb.Bytes) != 32 {
		return nil, fmt.Errorf("load authority %s: %w", dir, hsmcore.ErrMalformed)
	}
	kind := AuthorityKind(sb.Headers["Kind"])
	if kind != Manufacturer && kind != Operator {
		return nil, fmt.Errorf("load authority %s: unknown kind: %w", dir, hsmcore.ErrMalformed)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load authority %s: key: %w", dir, hsmcore.ErrMalformed)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("load authority %s: key is not ECDSA: %w", dir, hsmcore.ErrMalformed)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load authority %s: certificate: %w", dir, hsmcore.ErrMalformed)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("load authority %s: key does not match certificate: %w", dir, hsmcore.ErrMalformed)
	}
	return &Authority{kind: kind, name: sb.Headers["Name"], cert: cert, key: key, secret: sb.Bytes}, nil
}

// LoadCertificate reads a PEM certificate file, such as an authority's
// root.crt that a verifier trusts.
func LoadCertificate(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate: %w", path, hsmcore.ErrMalformed)
	}
	return x509.ParseCertificate(b.Bytes)
}

// backupKey returns the hardware-bound key this authority provisions: the
// MKBK of a hardware class for a manufacturer, the AKBK for an operator.
func (a *Authority) backupKey(class string) []byte {
	switch a.kind {
	case Manufacturer:
		return kbkdf.Derive(a.secret, []byte("hsmcore MKBK v1"), []byte(class), 32)
	default:
		return kbkdf.Derive(a.secret, []byte("hsmcore AKBK v1"), nil, 32)
	}
}

// issueDeviceCert certifies an HSM's device key.
func (a *Authority) issueDeviceCert(pub *ecdsa.PublicKey, id hsmcore.Identity) ([]byte, error) {
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject: pkix.Name{
			CommonName:         "HSM " + id.Serial,
			SerialNumber:       id.Serial,
			Organization:       []string{a.name},
			OrganizationalUnit: []string{id.Class},
		},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.AddDate(20, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.key)
	if err != nil {
		return nil, fmt.Errorf("issue device certificate: %w", err)
	}
	return der, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic("hsmcore: " + err.Error())
	}
	return n
}
