package hsmcore

import (
	"bytes"
	"cmp"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
	"github.com/hsmbackup/hsmbackup/internal/strictjson"
)

// NonceSize is the size of an attestation nonce.
const NonceSize = 32

// NewNonce returns a fresh random attestation nonce.
func NewNonce() []byte {
	n := make([]byte, NonceSize)
	rand.Read(n)
	return n
}

// Statement is what an HSM attests about itself.
type Statement struct {
	Format         string     `json:"format"` // "hsmcore-attestation/1"
	Identity                  // serial, class, manufacturer, operator, firmware, FIPS mode
	PBKFingerprint []byte     `json:"pbk_fingerprint"`
	ClusterID      string     `json:"cluster_id"`
	Nonce          []byte     `json:"nonce"`
	Time           time.Time  `json:"time"`
	AuditHead      audit.Head `json:"audit_head"`
	// ClusterKeyHash is the SHA-256 of the cluster key's public half
	// (PKIX DER), once the HSM has made one: it binds a cluster CSR to the
	// attested HSM.
	ClusterKeyHash []byte `json:"cluster_key_hash,omitempty"`

	// Certificate is the verified device certificate issued by the
	// manufacturer, set by VerifyAttestation (for VerifyAuditLog).
	Certificate *x509.Certificate `json:"-"`
}

const AttestationFormat = "hsmcore-attestation/1"

// Attestation is a statement signed by the device key (ECDSA P-384,
// SHA-384, ASN.1), with the device certificates from both authorities.
// Statement holds the exact bytes signed.
type Attestation struct {
	Statement               []byte `json:"statement"`
	Signature               []byte `json:"signature"`
	ManufacturerCertificate []byte `json:"manufacturer_certificate"` // DER, issued by the manufacturer root
	OperatorCertificate     []byte `json:"operator_certificate"`     // DER, issued by the operator root
}

func DomainDigest(domain string, msg []byte) []byte {
	h := sha512.New384()
	h.Write([]byte(domain))
	h.Write([]byte{0})
	h.Write(msg)
	return h.Sum(nil)
}

// Expectation is what a verifier requires of an attested HSM. Empty
// strings and zero values are not checked, except where noted.
type Expectation struct {
	Serial       string
	Class        string // required
	Manufacturer string // required
	Operator     string // required
	// MinFirmware: the firmware must not be older ("" accepts any).
	MinFirmware string
	// FIPS: if true the HSM must be in FIPS mode.
	FIPS bool
	// PBKFingerprint: if not nil, must equal the statement's.
	PBKFingerprint []byte
}

// VerifyOptions configure VerifyAttestation.
type VerifyOptions struct {
	ManufacturerRoots *x509.CertPool // required
	OperatorRoots     *x509.CertPool // required
	Nonce             []byte         // required: the nonce the verifier sent
	Expect            Expectation
	// Now is the verifier's time; zero means time.Now().
	Now time.Time
	// MaxAge bounds how old a statement may be, and how far in the future
	// it may claim to be; 0 means 5 minutes.
	MaxAge time.Duration
}

// VerifyAttestation checks an attestation and returns its statement. The
// checks, each failing with ErrAttestation and naming itself: both
// certificates chain to the given roots; both certify the same public key,
// whose subject serial and class match the statement and whose issuer
// organizations are the statement's manufacturer and operator; the
// signature verifies under that key; the format is known; the nonce is the
// verifier's; the time is within MaxAge of now; the identity meets Expect.
func VerifyAttestation(a *Attestation, opts VerifyOptions) (*Statement, error) {
	fail := func(format string, args ...any) (*Statement, error) {
		return nil, fmt.Errorf(format+": %w", append(args, ErrAttestation)...)
	}
	if a == nil || opts.ManufacturerRoots == nil || opts.OperatorRoots == nil || len(opts.Nonce) == 0 {
		return fail("attestation, roots and nonce are required")
	}
	if len(a.Statement) > 16<<10 {
		return fail("statement too large")
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	maxAge := opts.MaxAge
	if maxAge == 0 {
		maxAge = 5 * time.Minute
	}
	mc, err := verifyLeaf(a.ManufacturerCertificate, opts.ManufacturerRoots, now)
	if err != nil {
		return fail("manufacturer chain: %v", err)
	}
	oc, err := verifyLeaf(a.OperatorCertificate, opts.OperatorRoots, now)
	if err != nil {
		return fail("operator chain: %v", err)
	}
	mpub, ok1 := mc.PublicKey.(*ecdsa.PublicKey)
	opub, ok2 := oc.PublicKey.(*ecdsa.PublicKey)
	if !ok1 || !ok2 || !mpub.Equal(opub) {
		return fail("the two certificates certify different keys")
	}
	if !ecdsa.VerifyASN1(mpub, DomainDigest(AttestationFormat, a.Statement), a.Signature) {
		return fail("signature")
	}
	var st Statement
	if err := strictjson.Unmarshal(a.Statement, &st); err != nil {
		return fail("statement: %v", err)
	}
	if st.Format != AttestationFormat {
		return fail("statement format %q", st.Format)
	}
	switch {
	case mc.Subject.SerialNumber != st.Serial || oc.Subject.SerialNumber != st.Serial:
		return fail("certificates name serial %q/%q, statement %q", mc.Subject.SerialNumber, oc.Subject.SerialNumber, st.Serial)
	case !single(mc.Subject.OrganizationalUnit, st.Class) || !single(oc.Subject.OrganizationalUnit, st.Class):
		return fail("certificates do not name class %q", st.Class)
	case !single(mc.Issuer.Organization, st.Manufacturer):
		return fail("manufacturer certificate not issued by %q", st.Manufacturer)
	case !single(oc.Issuer.Organization, st.Operator):
		return fail("operator certificate not issued by %q", st.Operator)
	}
	if !bytes.Equal(st.Nonce, opts.Nonce) {
		return fail("nonce does not match: replayed or not for this request")
	}
	if age := now.Sub(st.Time); age > maxAge || age < -maxAge {
		return fail("statement time %s is not within %s of now: stale", st.Time.Format(time.RFC3339), maxAge)
	}
	e := opts.Expect
	switch {
	case e.Class == "" || e.Manufacturer == "" || e.Operator == "":
		return fail("expected class, manufacturer and operator are required")
	case st.Class != e.Class:
		return fail("class %q, want %q", st.Class, e.Class)
	case st.Manufacturer != e.Manufacturer:
		return fail("manufacturer %q, want %q", st.Manufacturer, e.Manufacturer)
	case st.Operator != e.Operator:
		return fail("operator %q, want %q", st.Operator, e.Operator)
	case e.Serial != "" && st.Serial != e.Serial:
		return fail("serial %q, want %q", st.Serial, e.Serial)
	case e.FIPS && !st.FIPS:
		return fail("not in FIPS mode")
	case e.PBKFingerprint != nil && !bytes.Equal(st.PBKFingerprint, e.PBKFingerprint):
		return fail("PBK fingerprint differs")
	}
	if e.MinFirmware != "" {
		min, err := ParseFirmware(e.MinFirmware)
		if err != nil {
			return nil, fmt.Errorf("min firmware: %w", err)
		}
		fw, err := ParseFirmware(st.Firmware)
		if err != nil || fw.Less(min) {
			return fail("firmware %q older than %q", st.Firmware, e.MinFirmware)
		}
	}
	st.Certificate = mc
	return &st, nil
}

// CheckPeer checks that peer, the certificate the TLS peer that delivered
// the attestation st presented, is the attested HSM's: it certifies the
// device key (an uninitialized HSM presents its device certificate), or
// the cluster key st attests to (a member presents the cluster
// certificate). A relay that forwards the attestation request to a genuine
// HSM but answers TLS itself fails it with ErrAttestation.
func CheckPeer(st *Statement, peer *x509.Certificate) error {
	if st == nil || st.Certificate == nil || peer == nil {
		return fmt.Errorf("attested peer: statement and peer certificate are required: %w", ErrAttestation)
	}
	dev, ok := st.Certificate.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("attested peer: device key is not ECDSA: %w", ErrAttestation)
	}
	if pk, ok := peer.PublicKey.(*ecdsa.PublicKey); ok && pk.Equal(dev) {
		return nil
	}
	if len(st.ClusterKeyHash) > 0 {
		if h, err := PublicKeyHash(peer.PublicKey); err == nil && bytes.Equal(h, st.ClusterKeyHash) {
			return nil
		}
	}
	return fmt.Errorf("attested peer: the TLS peer (%q) is not HSM %s, whose attestation it delivered: %w",
		cmp.Or(peer.Subject.SerialNumber, peer.Subject.CommonName), st.Serial, ErrAttestation)
}

// PublicKeyHash is the SHA-256 of a public key's PKIX DER encoding.
func PublicKeyHash(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	h := sha256.Sum256(der)
	return h[:], nil
}

func single(list []string, want string) bool { return len(list) == 1 && list[0] == want }

func verifyLeaf(der []byte, roots *x509.CertPool, now time.Time) (*x509.Certificate, error) {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, err
	}
	return c, nil
}

// SignedHead is an audit log head signed by the device key, so a verifier
// of the log also detects a removed tail.
type SignedHead struct {
	Serial    string     `json:"serial"`
	Head      audit.Head `json:"head"`
	Signature []byte     `json:"signature"`
}

const AuditHeadDomain = "hsmcore-audit-head/1"

func (sh SignedHead) SignedMessage() []byte {
	return fmt.Appendf(nil, "%s\x00%d\x00%x", sh.Serial, sh.Head.Seq, sh.Head.Hash[:])
}

// VerifyAuditLog checks an audit log's hash chain and that it ends at a
// head signed by the device whose certificate (from a verified
// attestation) is given.
func VerifyAuditLog(entries []audit.Entry, sh SignedHead, deviceCert *x509.Certificate) error {
	if err := VerifyAuditHead(sh, deviceCert); err != nil {
		return err
	}
	if err := audit.Verify(entries, &sh.Head); err != nil {
		return fmt.Errorf("verify audit log: %w", err)
	}
	return nil
}

// VerifyAuditHead checks that sh is signed by the device whose
// certificate (from a verified attestation) is given: a log whose chain
// ends at sh.Head (audit.Verify) is then the device's whole log.
func VerifyAuditHead(sh SignedHead, deviceCert *x509.Certificate) error {
	pub, ok := deviceCert.PublicKey.(*ecdsa.PublicKey)
	if !ok || deviceCert.Subject.SerialNumber != sh.Serial {
		return fmt.Errorf("verify audit log: certificate is not the device's: %w", ErrTampered)
	}
	if !ecdsa.VerifyASN1(pub, DomainDigest(AuditHeadDomain, sh.SignedMessage()), sh.Signature) {
		return fmt.Errorf("verify audit log: head signature: %w", ErrTampered)
	}
	return nil
}
