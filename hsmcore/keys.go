package hsmcore

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"fmt"
)

// KeyType is a key's algorithm family (PKCS#11 CKA_KEY_TYPE).
type KeyType string

// KeyClass is PKCS#11 CKA_CLASS. An EC or RSA key is one private-key
// object whose public half is readable (KeyInfo.PublicKey).
type KeyClass string

// KeyInfo is a key's attributes: everything about it but its material.
type KeyInfo struct {
	Handle uint64   `json:"handle"`
	Label  string   `json:"label"`
	ID     []byte   `json:"id,omitempty"`
	Class  KeyClass `json:"class"`
	Type   KeyType  `json:"type"`
	Bits   int      `json:"bits"`            // key size: AES, RSA modulus, generic secret; curve size for EC
	Curve  string   `json:"curve,omitempty"` // "P-256" or "P-384" for EC

	Token            bool `json:"token"`             // persistent; false: a session key, never stored nor imaged
	Extractable      bool `json:"extractable"`       // may leave the HSM wrapped; fixed at creation
	Sensitive        bool `json:"sensitive"`         // never revealed in plaintext; always true here
	NeverExtractable bool `json:"never_extractable"` // has never been extractable
	Local            bool `json:"local"`             // generated on an HSM rather than unwrapped

	Encrypt bool `json:"encrypt"`
	Decrypt bool `json:"decrypt"`
	Sign    bool `json:"sign"`
	Verify  bool `json:"verify"`
	Wrap    bool `json:"wrap"`
	Unwrap  bool `json:"unwrap"`

	Trusted         bool `json:"trusted"`           // set by a crypto officer only
	WrapWithTrusted bool `json:"wrap_with_trusted"` // may be wrapped only by a trusted key; once true, read-only

	// UnwrapTemplate, on a key with unwrap set, bounds every key it
	// unwraps (PKCS#11 CKA_UNWRAP_TEMPLATE); fixed at creation.
	UnwrapTemplate *UnwrapTemplate `json:"unwrap_template,omitempty"`
	// Bound is the unwrap template of the key this key was unwrapped
	// under: its attributes never exceed it, whatever changes later.
	Bound *UnwrapTemplate `json:"bound,omitempty"`

	KCV        string   `json:"kcv"` // key check value, 3 bytes in hex
	Owner      string   `json:"owner"`
	SharedWith []string `json:"shared_with,omitempty"`
	PublicKey  []byte   `json:"public_key,omitempty"` // PKIX DER, for EC and RSA
	// Origin, on a key a migration brought in, is where it came from:
	// the source cluster and the key's handle there ("prod/42"). A
	// migration run again skips a key whose origin and check value the
	// destination holds.
	Origin string `json:"origin,omitempty"`
}

// KeySpec asks for a key. Its zero value is not valid: Type is required.
type KeySpec struct {
	Type  KeyType `json:"type"`
	Bits  int     `json:"bits,omitempty"`  // AES 128/192/256, RSA 2048/3072/4096, generic secret 8..4096 (multiple of 8)
	Curve string  `json:"curve,omitempty"` // EC: "P-256" or "P-384"

	Label string `json:"label,omitempty"`
	ID    []byte `json:"id,omitempty"`

	Session     bool `json:"session,omitempty"` // a session key: gone at logout, never stored nor imaged
	Extractable bool `json:"extractable,omitempty"`

	Encrypt         bool `json:"encrypt,omitempty"`
	Decrypt         bool `json:"decrypt,omitempty"`
	Sign            bool `json:"sign,omitempty"`
	Verify          bool `json:"verify,omitempty"`
	Wrap            bool `json:"wrap,omitempty"`
	Unwrap          bool `json:"unwrap,omitempty"`
	WrapWithTrusted bool `json:"wrap_with_trusted,omitempty"`

	// UnwrapTemplate bounds the keys this key unwraps (it must have unwrap
	// set); nil: no bound beyond the HSM's rules.
	UnwrapTemplate *UnwrapTemplate `json:"unwrap_template,omitempty"`
}

// UnwrapTemplate is what a key unwrapped under a key may be, set when the
// unwrapping key is made and never changed: an unwrap that asks for more
// is refused, and WrapWithTrusted is forced on.
type UnwrapTemplate struct {
	// The usages an unwrapped key may have.
	Encrypt bool `json:"encrypt,omitempty"`
	Decrypt bool `json:"decrypt,omitempty"`
	Sign    bool `json:"sign,omitempty"`
	Verify  bool `json:"verify,omitempty"`
	Wrap    bool `json:"wrap,omitempty"`
	Unwrap  bool `json:"unwrap,omitempty"`
	// Extractable: whether an unwrapped key may be extractable.
	Extractable bool `json:"extractable,omitempty"`
	// WrapWithTrusted is set on every key unwrapped.
	WrapWithTrusted bool `json:"wrap_with_trusted,omitempty"`
}

// Exceeds names what spec asks for beyond t, or returns "".
func (t *UnwrapTemplate) Exceeds(spec KeySpec) string {
	for _, a := range []struct {
		name       string
		asked, may bool
	}{
		{"encrypt", spec.Encrypt, t.Encrypt}, {"decrypt", spec.Decrypt, t.Decrypt},
		{"sign", spec.Sign, t.Sign}, {"verify", spec.Verify, t.Verify},
		{"wrap", spec.Wrap, t.Wrap}, {"unwrap", spec.Unwrap, t.Unwrap},
		{"extractable", spec.Extractable, t.Extractable},
	} {
		if a.asked && !a.may {
			return a.name
		}
	}
	return ""
}

// AttributeChange lists attributes to change; nil fields stay as they
// are. Extractable, class, type, size, KCV, local, sensitive and
// never-extractable are read-only; WrapWithTrusted may only go from false
// to true; Trusted is set by a crypto officer with SetTrusted.
type AttributeChange struct {
	Label           *string `json:"label,omitempty"`
	ID              []byte  `json:"id,omitempty"`
	Encrypt         *bool   `json:"encrypt,omitempty"`
	Decrypt         *bool   `json:"decrypt,omitempty"`
	Sign            *bool   `json:"sign,omitempty"`
	Verify          *bool   `json:"verify,omitempty"`
	Wrap            *bool   `json:"wrap,omitempty"`
	Unwrap          *bool   `json:"unwrap,omitempty"`
	WrapWithTrusted *bool   `json:"wrap_with_trusted,omitempty"`
	Extractable     *bool   `json:"extractable,omitempty"` // always refused: fixed at creation
}

const (
	AES           KeyType = "aes"
	EC            KeyType = "ec"
	RSA           KeyType = "rsa"
	GenericSecret KeyType = "generic-secret"
	// HPKE is an ML-KEM-768 + X25519 key pair (HPKE KEM 0x647a, X-Wing):
	// it wraps (with its public half) and unwraps keys with the hpke
	// mechanism, safe against a future quantum computer. Bits is 768; the
	// public half is RFC 9180's SerializePublicKey (1216 bytes).
	HPKE KeyType = "hpke"
)

const (
	SecretKey  KeyClass = "secret-key"
	PrivateKey KeyClass = "private-key"
)

// VerifySignature checks a signature made by Sign against a key's public
// half, with no HSM involved.
func VerifySignature(k KeyInfo, message, sig []byte) error {
	pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
	if err != nil {
		return fmt.Errorf("verify: public key: %w", ErrInvalid)
	}
	hash, digest := SignatureDigest(k, message)
	ok := false
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(p, digest, sig)
	case *rsa.PublicKey:
		ok = rsa.VerifyPSS(p, hash, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
	}
	if !ok {
		return fmt.Errorf("verify: %w", ErrTampered)
	}
	return nil
}

// SignatureDigest is the hash a key signs with, and the digest of message
// under it: SHA-384 for P-384 keys, SHA-256 for all others.
func SignatureDigest(k KeyInfo, message []byte) (crypto.Hash, []byte) {
	if k.Type == EC && k.Curve == "P-384" {
		d := sha512.Sum384(message)
		return crypto.SHA384, d[:]
	}
	d := sha256.Sum256(message)
	return crypto.SHA256, d[:]
}
