package hsmcore

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// A factory-fresh HSM belongs to whoever holds its claim secret: 32 random
// bytes made when the HSM is manufactured and issued to the operator once,
// as a new YubiHSM's default key or Vault's unseal keys are. Every call
// that sets up an HSM that has no cluster and no users (the cluster CSR,
// installing the cluster certificate, importing an image into it) carries
// a ClaimProof: an HMAC under the secret of a nonce the HSM issued, the
// HSM's serial, the operation and what it acts on. The secret itself
// never travels.

// ClaimSecretSize is the size of a claim secret.
const ClaimSecretSize = 32

// The operations a claim proof authorizes, and the audit entries of a
// proved claim.
const (
	ClaimCSR    = "cluster.csr"
	ClaimInit   = "cluster.init"
	ClaimImport = "image.import"
)

// ClaimHolder is the audit actor of a call a valid claim proof
// authorized.
const ClaimHolder = "(claim holder)"

// Claim is an HSM's claim secret, with the serial of the HSM it claims.
type Claim struct {
	Serial string
	Secret []byte
}

// NewClaim makes the claim secret of a new HSM.
func NewClaim(serial string) Claim {
	s := make([]byte, ClaimSecretSize)
	rand.Read(s)
	return Claim{Serial: serial, Secret: s}
}

// ClaimProof is what a set-up call carries: the nonce the HSM issued and
// the MAC over it (ClaimMAC). Serial names the HSM the prover holds the
// secret of, so that a proof for another HSM gets a clear error.
type ClaimProof struct {
	Serial string
	Nonce  []byte
	MAC    []byte
}

// claimLabel starts the MAC's input.
const claimLabel = "hsmbackup claim v1"

// Prove returns c's proof for op on object, with nonce from the HSM.
func (c Claim) Prove(nonce []byte, op, object string) ClaimProof {
	return ClaimProof{Serial: c.Serial, Nonce: nonce, MAC: ClaimMAC(c.Secret, c.Serial, nonce, op, object)}
}

// ClaimMAC is HMAC-SHA256 under secret of the label, the serial, op,
// object and nonce, each but the label prefixed by its length (4 bytes,
// big endian): docs/FORMATS.md, "Claim proofs".
func ClaimMAC(secret []byte, serial string, nonce []byte, op, object string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(claimLabel))
	for _, f := range [][]byte{[]byte(serial), []byte(op), []byte(object), nonce} {
		m.Write(binary.BigEndian.AppendUint32(nil, uint32(len(f))))
		m.Write(f)
	}
	return m.Sum(nil)
}

// ClusterInitObject is what a claim proof for ClaimInit names: the
// SHA-256, in hex, of the cluster certificate and the customer CA (DER),
// each prefixed by its length, so that a proof installs only the
// certificates it was made for.
func ClusterInitObject(cert, ca []byte) string {
	h := sha256.New()
	for _, f := range [][]byte{cert, ca} {
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(f))))
		h.Write(f)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// The header form of a proof: serial, nonce and MAC, the last two in
// unpadded base64url, separated by dots.

// String returns p in its header form.
func (p ClaimProof) String() string {
	return p.Serial + "." + base64.RawURLEncoding.EncodeToString(p.Nonce) + "." + base64.RawURLEncoding.EncodeToString(p.MAC)
}

// maxClaimHeader bounds the header form.
const maxClaimHeader = 512

// ParseClaimProof parses the header form of a proof.
func ParseClaimProof(s string) (ClaimProof, error) {
	if len(s) > maxClaimHeader {
		return ClaimProof{}, fmt.Errorf("claim proof: over %d bytes: %w", maxClaimHeader, ErrMalformed)
	}
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return ClaimProof{}, fmt.Errorf("claim proof: want serial.nonce.mac: %w", ErrMalformed)
	}
	nonce, err1 := base64.RawURLEncoding.DecodeString(parts[1])
	mac, err2 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || CheckName(parts[0]) != nil || len(nonce) != NonceSize || len(mac) != sha256.Size {
		return ClaimProof{}, fmt.Errorf("claim proof: %w", ErrMalformed)
	}
	return ClaimProof{Serial: parts[0], Nonce: nonce, MAC: mac}, nil
}

// The claim file `hsm manufacture` writes (mode 0600):
//
//	hsmbackup claim v1
//	serial HSM-0123456789AB
//	secret <64 hex digits>

// Marshal returns c as a claim file.
func (c Claim) Marshal() []byte {
	return fmt.Appendf(nil, "%s\nserial %s\nsecret %x\n", claimLabel, c.Serial, c.Secret)
}

// maxClaimFile bounds a claim file.
const maxClaimFile = 1024

// ParseClaim parses a claim file.
func ParseClaim(b []byte) (Claim, error) {
	bad := func(what string) (Claim, error) {
		return Claim{}, fmt.Errorf("claim file: %s: %w", what, ErrMalformed)
	}
	if len(b) > maxClaimFile {
		return bad(fmt.Sprintf("over %d bytes", maxClaimFile))
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) != 3 || lines[0] != claimLabel {
		return bad("want the 3 lines hsm manufacture writes")
	}
	serial, ok1 := strings.CutPrefix(lines[1], "serial ")
	secret, ok2 := strings.CutPrefix(lines[2], "secret ")
	if !ok1 || CheckName(serial) != nil {
		return bad("no serial")
	}
	s, err := hex.DecodeString(secret)
	if !ok2 || err != nil || len(s) != ClaimSecretSize {
		return bad(fmt.Sprintf("want a secret of %d hex digits", 2*ClaimSecretSize))
	}
	return Claim{Serial: serial, Secret: s}, nil
}

// Claims are the claim secrets a client holds, by serial.
type Claims map[string][]byte

// Add adds c.
func (cs Claims) Add(c Claim) { cs[c.Serial] = c.Secret }

// For returns the claim of the HSM serial.
func (cs Claims) For(serial string) (Claim, error) {
	s, ok := cs[serial]
	if !ok {
		return Claim{}, fmt.Errorf("no claim secret for HSM %s (give the claim file hsm manufacture wrote for it): %w", serial, ErrPermission)
	}
	return Claim{Serial: serial, Secret: s}, nil
}

// ErrNoClaim: an HSM made before claim secrets has none, so nobody can
// claim it; manufacture it again (it holds nothing yet).
var ErrNoClaim = fmt.Errorf("this HSM was manufactured without a claim secret: nobody can claim it; manufacture it again: %w", ErrPermission)
