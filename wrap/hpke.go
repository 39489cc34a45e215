package wrap

import (
	"bytes"
	"context"
	"crypto/hpke"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"os"

	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
)

// HPKE recipient (docs/FORMATS.md 8.5.2): RFC 9180 base mode with the
// MLKEM768-X25519 hybrid KEM (X-Wing, draft-ietf-hpke-pq), HKDF-SHA256 and
// AES-256-GCM, all from Go's crypto/hpke.
const (
	hpkeStanza      = "mlkem768x25519"
	hpkeInfo        = "hsmbackup-wrap/1 mlkem768x25519"
	hpkePublicSize  = 1216 // ML-KEM-768 encapsulation key, X25519 point
	hpkePrivateSize = 32   // the seed both keys derive from
	hpkeStanzaSize  = 1120 + dekSize + 16
	fingerprintSize = 16
	pemPublic       = "HSMBACKUP MLKEM768X25519 PUBLIC KEY"
	pemPrivate      = "HSMBACKUP MLKEM768X25519 PRIVATE KEY"
	maxKeyFileSize  = 8192
)

func hpkeSuite() (hpke.KEM, hpke.KDF, hpke.AEAD) {
	return hpke.MLKEM768X25519(), hpke.HKDFSHA256(), hpke.AES256GCM()
}

// An HPKERecipient is a post-quantum hybrid public key (ML-KEM-768 +
// X25519): whoever holds it can make envelopes but not open them, so a
// backup writer that holds only this cannot read old backups.
type HPKERecipient struct {
	pk hpke.PublicKey
	fp string
}

// An HPKEIdentity is the private key of an HPKERecipient. Its String and
// GoString never show key bytes.
type HPKEIdentity struct {
	sk func() hpke.PrivateKey // in a closure, as secretBytes explains
	r  *HPKERecipient
}

var (
	_ Recipient = (*HPKERecipient)(nil)
	_ Identity  = (*HPKEIdentity)(nil)
)

func newHPKEIdentity(sk hpke.PrivateKey) *HPKEIdentity {
	return &HPKEIdentity{sk: func() hpke.PrivateKey { return sk }, r: newHPKERecipient(sk.PublicKey())}
}

func newHPKERecipient(pk hpke.PublicKey) *HPKERecipient {
	sum := sha256.Sum256(pk.Bytes())
	return &HPKERecipient{pk: pk, fp: hex.EncodeToString(sum[:fingerprintSize])}
}

// Fingerprint names the key in stanzas and listings: the first 16 bytes of
// SHA-256 of the public key, in lower-case hex.
func (r *HPKERecipient) Fingerprint() string { return r.fp }

// String returns "mlkem768x25519 <fingerprint>", as the header's Recipients
// names its stanza.
func (r *HPKERecipient) String() string { return hpkeStanza + " " + r.fp }

// Wrap seals dek to the public key: a stanza "mlkem768x25519" with the
// fingerprint as argument and enc || ciphertext as body.
func (r *HPKERecipient) Wrap(ctx context.Context, dek []byte) (Stanza, error) {
	if err := ctx.Err(); err != nil {
		return Stanza{}, err
	}
	_, kdf, aead := hpkeSuite()
	body, err := hpke.Seal(r.pk, kdf, aead, []byte(hpkeInfo), dek)
	if err != nil {
		return Stanza{}, fmt.Errorf("hpke seal: %w", err)
	}
	return Stanza{Type: hpkeStanza, Args: []string{r.fp}, Body: body}, nil
}

// MarshalText returns the public key file: one PEM block of type
// "HSMBACKUP MLKEM768X25519 PUBLIC KEY" holding the 1216-byte public key.
func (r *HPKERecipient) MarshalText() ([]byte, error) {
	return pem.EncodeToMemory(&pem.Block{Type: pemPublic, Bytes: r.pk.Bytes()}), nil
}

// ParseHPKERecipient parses a public key file (see MarshalText).
func ParseHPKERecipient(text []byte) (*HPKERecipient, error) {
	b, err := decodePEM(text, pemPublic, hpkePublicSize)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	kem, _, _ := hpkeSuite()
	pk, err := kem.NewPublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w: %v", ErrMalformed, err)
	}
	return newHPKERecipient(pk), nil
}

// LoadHPKERecipient reads a public key file.
func LoadHPKERecipient(path string) (*HPKERecipient, error) {
	b, err := readLimited(path)
	if err != nil {
		return nil, fmt.Errorf("load public key: %w", err)
	}
	r, err := ParseHPKERecipient(b)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	return r, nil
}

// LoadHPKEIdentity reads a private key file, which must be a regular file
// of mode 0600 (or stricter) and is refused otherwise.
func LoadHPKEIdentity(path string) (*HPKEIdentity, error) {
	b, err := atomicfile.ReadPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("load private key: %w", err)
	}
	defer clear(b)
	id, err := parseHPKEIdentity(b)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	return id, nil
}

// GenerateHPKEKey makes a new key pair and writes the private key file to
// privatePath (mode 0600) and the public key file to publicPath (mode
// 0644). Neither file may exist already. It returns the public key: the
// private key stays on disk, to be loaded only where backups are read.
func GenerateHPKEKey(privatePath, publicPath string) (*HPKERecipient, error) {
	kem, _, _ := hpkeSuite()
	sk, err := kem.GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("generate HPKE key: %w", err)
	}
	id := newHPKEIdentity(sk)
	priv, err := id.marshal()
	if err != nil {
		return nil, fmt.Errorf("generate HPKE key: %w", err)
	}
	defer clear(priv)
	pub, _ := id.r.MarshalText()
	if err := createExclusive(privatePath, 0o600, priv); err != nil {
		return nil, fmt.Errorf("write private key: %w", err)
	}
	if err := createExclusive(publicPath, 0o644, pub); err != nil {
		os.Remove(privatePath)
		return nil, fmt.Errorf("write public key: %w", err)
	}
	return id.r, nil
}

// Recipient returns the identity's public key.
func (id *HPKEIdentity) Recipient() *HPKERecipient { return id.r }

// String names the key by fingerprint; it never shows key bytes.
func (id HPKEIdentity) String() string { return "wrap.HPKEIdentity(" + id.r.String() + ")" }

// GoString is String.
func (id HPKEIdentity) GoString() string { return id.String() }

// Format prints String whatever the verb, so that no fmt verb prints key
// bytes, whether given an HPKEIdentity or a pointer to one.
func (id HPKEIdentity) Format(f fmt.State, _ rune) { io.WriteString(f, id.String()) }

// Unwrap opens the first "mlkem768x25519" stanza that names this key's
// fingerprint. Such a stanza that does not open is ErrTampered.
func (id *HPKEIdentity) Unwrap(ctx context.Context, stanzas []Stanza) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	_, kdf, aead := hpkeSuite()
	for _, s := range stanzas {
		if s.Type != hpkeStanza || len(s.Args) != 1 || s.Args[0] != id.r.fp {
			continue
		}
		if len(s.Body) != hpkeStanzaSize {
			return nil, fmt.Errorf("%w: stanza for %s is %d bytes, want %d", ErrTampered, id.r, len(s.Body), hpkeStanzaSize)
		}
		dek, err := hpke.Open(id.sk(), kdf, aead, []byte(hpkeInfo), s.Body)
		if err != nil || len(dek) != dekSize {
			clear(dek)
			return nil, fmt.Errorf("%w: stanza for %s does not open", ErrTampered, id.r)
		}
		return dek, nil
	}
	return nil, fmt.Errorf("%w: HPKE key %s", ErrUnknownKey, id.r)
}

func (id *HPKEIdentity) marshal() ([]byte, error) {
	b, err := id.sk().Bytes()
	if err != nil {
		return nil, err
	}
	defer clear(b)
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivate, Bytes: b}), nil
}

func parseHPKEIdentity(text []byte) (*HPKEIdentity, error) {
	b, err := decodePEM(text, pemPrivate, hpkePrivateSize)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	defer clear(b)
	kem, _, _ := hpkeSuite()
	sk, err := kem.NewPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", ErrMalformed)
	}
	return newHPKEIdentity(sk), nil
}

// decodePEM accepts exactly one PEM block of the given type, without
// headers, holding size bytes, in the canonical encoding (64-column lines,
// "\n" line ends) and nothing else: what it accepts re-encodes identically.
func decodePEM(text []byte, typ string, size int) ([]byte, error) {
	if len(text) > maxKeyFileSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(text))
	}
	block, rest := pem.Decode(text)
	if block == nil || block.Type != typ || len(block.Headers) != 0 || len(rest) != 0 || len(block.Bytes) != size {
		if block != nil {
			clear(block.Bytes)
		}
		return nil, fmt.Errorf("%w: want one PEM block %q of %d bytes", ErrMalformed, typ, size)
	}
	if again := pem.EncodeToMemory(block); !bytes.Equal(again, text) {
		clear(again)
		clear(block.Bytes)
		return nil, fmt.Errorf("%w: PEM block %q not in canonical form", ErrMalformed, typ)
	}
	return block.Bytes, nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxKeyFileSize {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrMalformed, path, maxKeyFileSize)
	}
	return b, nil
}
