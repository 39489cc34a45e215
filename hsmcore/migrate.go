package hsmcore

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"time"
)

// Key migration between clusters (docs/MIGRATION.md): the destination HSM
// makes a single-use transport key and attests to it; the source HSM
// checks that attestation and writes a signed bundle of the selected keys
// wrapped under it; the destination checks the bundle and unwraps the
// keys inside. Plaintext key material exists only inside the two HSMs.

// TransportKeyTTL is how long a transport key lasts, as AWS KMS import
// parameters do.
const TransportKeyTTL = 24 * time.Hour

// MaxBundleKeys bounds the keys of one bundle; a migration of more moves
// them in several bundles, each under a transport key of its own.
const MaxBundleKeys = 100

// TransportKey is a destination HSM's key for one bundle: an hpke key pair
// (ML-KEM-768 + X25519) whose private half never leaves that HSM, bound to
// its serial and cluster, used once, expiring.
type TransportKey struct {
	ID        string    `json:"id"` // 32 hex digits
	Mechanism Mechanism `json:"mechanism"`
	PublicKey []byte    `json:"public_key"`
	Serial    string    `json:"serial"`
	Cluster   string    `json:"cluster"`
	Expires   time.Time `json:"expires"`
}

// TransportOffer is a transport key with the destination HSM's
// attestation over TransportNonce(Nonce, Key), Nonce being the verifier's.
type TransportOffer struct {
	Key         TransportKey `json:"key"`
	Nonce       []byte       `json:"nonce"`
	Attestation *Attestation `json:"attestation"`
}

// TransportNonce is the nonce the destination attests to for tk, asked
// with the verifier's nonce: SHA-256 of the label and each field, each
// prefixed by its length (4 bytes, big endian), so that the attestation
// covers the transport key.
func TransportNonce(nonce []byte, tk TransportKey) []byte {
	h := sha256.New()
	h.Write([]byte("hsmbackup transport key v1"))
	for _, f := range [][]byte{nonce, []byte(tk.ID), []byte(tk.Mechanism), tk.PublicKey, []byte(tk.Serial), []byte(tk.Cluster),
		[]byte(tk.Expires.UTC().Format(time.RFC3339))} {
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(f))))
		h.Write(f)
	}
	return h.Sum(nil)
}

// Bundle is what the source HSM writes: Body, the JSON of a BundleBody,
// signed by the source's device key (ECDSA P-384 over SHA-384 of the
// domain-separated body, as attestations are), with the source's device
// certificate from its manufacturer.
type Bundle struct {
	Body        []byte `json:"body"`
	Signature   []byte `json:"signature"`
	Certificate []byte `json:"certificate"`
}

// BundleFormat names the bundle body's version.
const BundleFormat = "hsmbackup-bundle/1"

// BundleBody lists the keys of one bundle. The keys' material is sealed
// under a bundle key K (32 random bytes): Enc is HPKE base mode under the
// transport key (KEM 0x647a, HKDF-SHA256, AES-256-GCM, info "hsmbackup
// bundle v1" and the transport key's id) of K; each key's Wrapped is
// nonce(12) ‖ AES-256-GCM(K, nonce, material, aad = the key's Info JSON).
type BundleBody struct {
	Format        string      `json:"format"`
	SourceSerial  string      `json:"source_serial"`
	SourceCluster string      `json:"source_cluster"`
	Serial        string      `json:"serial"`  // the destination's
	Cluster       string      `json:"cluster"` // the destination's
	TransportKey  string      `json:"transport_key"`
	Created       time.Time   `json:"created"`
	Enc           []byte      `json:"enc"`
	Keys          []BundleKey `json:"keys"`
}

// BundleKey is one key of a bundle: its attributes, owner, shares and
// check value as the source holds them (Handle is the source's), and its
// material sealed under the bundle key.
type BundleKey struct {
	Info    KeyInfo `json:"info"`
	Wrapped []byte  `json:"wrapped"`
}

// Migrated is what became of one key of a migration.
type Migrated struct {
	Source uint64 `json:"source_handle"`
	Label  string `json:"label"`
	KCV    string `json:"kcv"`
	// Result is "moved", "skipped" (present at the destination: same
	// label and check value) or "refused".
	Result string `json:"result"`
	Handle uint64 `json:"handle,omitempty"` // at the destination
	Reason string `json:"reason,omitempty"`
}

// KeyOrigin is the Origin a migration gives the key of handle h of
// cluster c.
func KeyOrigin(c string, h uint64) string { return fmt.Sprintf("%s/%d", c, h) }

// Results of Migrated.
const (
	Moved   = "moved"
	Skipped = "skipped"
	Refused = "refused"
)
