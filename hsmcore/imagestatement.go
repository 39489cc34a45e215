package hsmcore

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"fmt"
	"io"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// Image statement, version 1 (docs/FORMATS.md 2.6): what an exporting HSM
// says about an image it sent, signed by its device key, so that a reader
// without the EBK can tell the whole image from a prefix of it.
const (
	// ImageStatementDomain separates image statement signatures from the
	// device's other signatures (DomainDigest).
	ImageStatementDomain  = "hsmcore-image-statement/1"
	imageStatementVersion = 1

	// Bounds checked before anything is parsed.
	MaxImageStatementSize = 1 + 16 + 1 + 64 + 8 + 32
	MaxImageSignatureSize = 139 // ASN.1 ECDSA P-384, with room
	MaxDeviceCertSize     = 16 << 10
)

// ImageStatement binds an image's id to the byte length and SHA-256 of
// the whole inner image (header and body) as the HSM produced it.
type ImageStatement struct {
	ImageID [16]byte
	Serial  string // the exporting HSM's serial, as its device certificate names it
	Length  int64
	SHA256  [32]byte
}

// Marshal returns the signed bytes:
// u8(1) || image id || str8(serial) || u64be(length) || sha256.
func (s *ImageStatement) Marshal() ([]byte, error) {
	if err := CheckName(s.Serial); err != nil {
		return nil, fmt.Errorf("image statement: serial: %w", err)
	}
	if s.Length < 0 {
		return nil, fmt.Errorf("image statement: negative length: %w", ErrInvalid)
	}
	var b cryptobyte.Builder
	b.AddUint8(imageStatementVersion)
	b.AddBytes(s.ImageID[:])
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(s.Serial)) })
	b.AddUint64(uint64(s.Length))
	b.AddBytes(s.SHA256[:])
	return b.Bytes()
}

// ParseImageStatement parses the bytes Marshal writes, and nothing else:
// errors wrap ErrUnsupportedVersion for another version, ErrMalformed
// otherwise.
func ParseImageStatement(b []byte) (*ImageStatement, error) {
	if len(b) > MaxImageStatementSize {
		return nil, fmt.Errorf("image statement: %d bytes, limit %d: %w", len(b), MaxImageStatementSize, ErrMalformed)
	}
	s := cryptobyte.String(b)
	var v uint8
	if !s.ReadUint8(&v) {
		return nil, fmt.Errorf("image statement: empty: %w", ErrMalformed)
	}
	if v != imageStatementVersion {
		return nil, fmt.Errorf("image statement: version %d: %w", v, ErrUnsupportedVersion)
	}
	st := new(ImageStatement)
	var serial cryptobyte.String
	var length uint64
	if !s.CopyBytes(st.ImageID[:]) || !s.ReadUint8LengthPrefixed(&serial) || !s.ReadUint64(&length) ||
		!s.CopyBytes(st.SHA256[:]) || !s.Empty() {
		return nil, fmt.Errorf("image statement: short or trailing bytes: %w", ErrMalformed)
	}
	if err := CheckName(string(serial)); err != nil {
		return nil, fmt.Errorf("image statement: serial: %w: %w", err, ErrMalformed)
	}
	if length > 1<<62 {
		return nil, fmt.Errorf("image statement: length out of range: %w", ErrMalformed)
	}
	st.Serial, st.Length = string(serial), int64(length)
	return st, nil
}

// SignedImageStatement is an image statement as the HSM sends it and a
// manifest records it: the statement's bytes, the device key's signature
// (ECDSA P-384, ASN.1) over DomainDigest(ImageStatementDomain, Statement),
// and the device certificate issued by the manufacturer for that key.
type SignedImageStatement struct {
	Statement   []byte `json:"statement"`
	Signature   []byte `json:"signature"`
	Certificate []byte `json:"device_certificate"` // DER
}

// ImageStatementOptions configure SignedImageStatement.Verify.
type ImageStatementOptions struct {
	// ManufacturerRoots, if set, must issue the device certificate (valid
	// at Now). Without them the certificate is only parsed: the statement
	// then proves length and digest against anyone without a device key
	// and certificate, not that a genuine HSM made it.
	ManufacturerRoots *x509.CertPool
	Now               time.Time // zero: time.Now()
}

// Verify checks the statement's signature under the device certificate's
// key, that the certificate names the statement's serial, and, with
// ManufacturerRoots, that it chains to them. It returns the statement and
// the certificate. Errors wrap ErrMalformed (sizes, encodings) or
// ErrTampered (the signature, the certificate's key or serial, its chain).
func (s *SignedImageStatement) Verify(opts ImageStatementOptions) (*ImageStatement, *x509.Certificate, error) {
	if s == nil {
		return nil, nil, fmt.Errorf("image statement: missing: %w", ErrMalformed)
	}
	if len(s.Signature) == 0 || len(s.Signature) > MaxImageSignatureSize || len(s.Certificate) == 0 || len(s.Certificate) > MaxDeviceCertSize {
		return nil, nil, fmt.Errorf("image statement: signature or certificate missing or too long: %w", ErrMalformed)
	}
	st, err := ParseImageStatement(s.Statement)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(s.Certificate)
	if err != nil {
		return nil, nil, fmt.Errorf("image statement: device certificate: %w: %w", err, ErrMalformed)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P384() {
		return nil, nil, fmt.Errorf("image statement: device certificate holds no P-384 key: %w", ErrTampered)
	}
	if !ecdsa.VerifyASN1(pub, DomainDigest(ImageStatementDomain, s.Statement), s.Signature) {
		return nil, nil, fmt.Errorf("image statement: signature: %w", ErrTampered)
	}
	if cert.Subject.SerialNumber != st.Serial {
		return nil, nil, fmt.Errorf("image statement: device certificate names serial %q, statement %q: %w", cert.Subject.SerialNumber, st.Serial, ErrTampered)
	}
	if opts.ManufacturerRoots != nil {
		now := opts.Now
		if now.IsZero() {
			now = time.Now()
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: opts.ManufacturerRoots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return nil, nil, fmt.Errorf("image statement: device certificate: %w: %w", err, ErrTampered)
		}
	}
	return st, cert, nil
}

// Check compares the statement with an image as received: its header's
// image id, and its length and SHA-256. A shorter image wraps
// ErrTruncated, anything else that differs ErrTampered.
func (st *ImageStatement) Check(imageID [16]byte, length int64, sum [32]byte) error {
	switch {
	case st.ImageID != imageID:
		return fmt.Errorf("image statement is for image %x, not %x: %w", st.ImageID, imageID, ErrTampered)
	case length < st.Length:
		return fmt.Errorf("%d bytes of %d the HSM sent: %w", length, st.Length, ErrTruncated)
	case length != st.Length:
		return fmt.Errorf("%d bytes, the HSM sent %d: %w", length, st.Length, ErrTampered)
	case st.SHA256 != sum:
		return fmt.Errorf("SHA-256 differs from the HSM's: %w", ErrTampered)
	}
	return nil
}

// ImageStream is an exported image as read from an HSM: the image's
// bytes, then, once Read has returned io.EOF, the HSM's signed statement of
// what it sent. A stream that ends without a statement is not a whole
// image.
type ImageStream interface {
	io.ReadCloser
	// ImageStatement returns the statement; it fails before io.EOF.
	ImageStatement() (*SignedImageStatement, error)
}
