package hsmcore

import "fmt"

// Mechanism names how a key is wrapped for export, with the names
// CloudHSM's CLI uses where it has one. The wrapped bytes' layouts are in
// docs/FORMATS.md ("Wrapped keys"); the target is encoded as its raw
// bytes (AES, generic secret) or PKCS#8 DER (RSA and EC private keys).
type Mechanism string

const (
	// AESKWP is AES key wrap with padding (RFC 5649) under an AES-128 or
	// AES-256 key: OpenSSL's -id-aes256-wrap-pad. The default.
	AESKWP Mechanism = "aes-kwp"
	// AESKW is AES key wrap (RFC 3394) under an AES key, for targets of a
	// multiple of 8 bytes: OpenSSL's -id-aes256-wrap.
	AESKW Mechanism = "aes-kw"
	// AESGCM is AES-GCM under an AES key: a random 12-byte IV, then the
	// ciphertext and its 16-byte tag; no additional data.
	AESGCM Mechanism = "aes-gcm"
	// RSAOAEP is RSA-OAEP with SHA-256 and MGF1-SHA-256, empty label, of
	// the target itself, for targets that fit (AES keys, short secrets).
	RSAOAEP Mechanism = "rsa-oaep"
	// RSAOAEPSHA1 is RSAOAEP with SHA-1 and MGF1-SHA-1.
	RSAOAEPSHA1 Mechanism = "rsa-oaep-sha1"
	// RSAAES is PKCS#11 CKM_RSA_AES_KEY_WRAP: RSA-OAEP (SHA-256,
	// MGF1-SHA-256, empty label) of an ephemeral AES-256 key, followed by
	// the AES-KWP wrap of the target under it. AWS KMS's
	// RSA_AES_KEY_WRAP_SHA_256 and Google Cloud KMS's
	// RSA_OAEP_*_SHA256_AES_256.
	RSAAES Mechanism = "rsa-aes"
	// RSAAESSHA1 is RSAAES with SHA-1 and MGF1-SHA-1: Azure BYOK's
	// CKM_RSA_AES_KEY_WRAP, AWS KMS's RSA_AES_KEY_WRAP_SHA_1.
	RSAAESSHA1 Mechanism = "rsa-aes-sha1"
	// HPKEWrap is HPKE (RFC 9180, base mode) under an hpke key: KEM
	// ML-KEM-768 + X25519, KDF HKDF-SHA256, AEAD AES-256-GCM, info
	// "hsmbackup hpke key wrap v1"; the encapsulated key (1120 bytes) then
	// the sealed target. The default between two hsmbackup HSMs.
	HPKEWrap Mechanism = "hpke"
)

// Mechanisms lists every mechanism, the default first.
var Mechanisms = []Mechanism{AESKWP, AESKW, AESGCM, RSAOAEP, RSAOAEPSHA1, RSAAES, RSAAESSHA1, HPKEWrap}

// ParseMechanism checks a mechanism's name; "" is AESKWP.
func ParseMechanism(s string) (Mechanism, error) {
	if s == "" {
		return AESKWP, nil
	}
	for _, m := range Mechanisms {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("wrap mechanism %q: %w", s, ErrInvalid)
}

// WrappingKeyType is the type of key m wraps with: AES, RSA or HPKE.
func (m Mechanism) WrappingKeyType() KeyType {
	switch m {
	case RSAOAEP, RSAOAEPSHA1, RSAAES, RSAAESSHA1:
		return RSA
	case HPKEWrap:
		return HPKE
	}
	return AES
}
