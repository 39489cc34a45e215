// Package quorum enforces M-of-N approval of HSM operations, in the manner of
// CloudHSM quorum authentication.
//
// Each crypto officer registers an Ed25519 public key with the HSM. A Policy
// names the operations that need approval and how many officers (M) must
// give it. To run such an operation, a user asks the HSM for a Token bound to
// the operation and its object; officers sign the token offline with Sign;
// the user then runs the operation with the token's ID and the approvals, and
// the HSM calls Tracker.Consume, which succeeds at most once per token.
//
// The package is pure: it holds outstanding tokens in memory and checks
// signatures, and knows nothing of users, sessions, storage or networks. The
// HSM decides which officers' keys count (the keys map passed to Consume).
// The requester may approve their own token, if they are an officer.
//
// The HSM also decides what a token's object says. It must name every
// parameter of the call it approves (package hsmcore builds the objects,
// e.g. "alice role=CU" for user.create, "user.create=3" for quorum.set),
// since an approval permits exactly the operation and object signed.
//
// A Tracker remembers the tokens it consumed until they expire, so that a
// token adopted by several HSMs (Adopt) serves each once. That memory must
// outlive the process: the HSM persists Tracker.Spent after each Consume,
// before the approved operation takes effect, and restores it with
// MarkSpent when it starts.
//
// # Quorum tokens, version 1
//
// This section is written to be copied into docs/FORMATS.md.
//
// A token has five fields:
//
//	ID       16 bytes from a cryptographically secure random source
//	Op       the operation: 1 to 64 bytes, each one of a-z 0-9 . _ -
//	Object   what the operation acts on, with every parameter of the
//	         call (a user name and role, a key handle and value…):
//	         0 to 256 bytes of UTF-8 with no control (Cc) or format
//	         (Cf) characters
//	Issued   the HSM's time of issue, in UTC, with nanoseconds
//	Expires  Issued + TTL; the TTL is 10 minutes unless configured
//
// An officer approves a token by signing, with pure Ed25519 (RFC 8032, no
// context, no pre-hash), the bytes
//
//	SigningBytes = "hsmbackup quorum token v1" || 0x00
//	             || ID
//	             || str(Op) || str(Object)
//	             || i64be(Issued) || i64be(Expires)
//	str(s)       = u32be(len(s)) || s
//
// where times are signed nanoseconds since 1970-01-01T00:00:00Z, which
// limits them to the years 1678 to 2262. An approval is the pair (officer
// name, 64-byte signature).
//
// In JSON a token is one object with exactly the members "id" (32 lower-case
// hex digits), "op", "object", "issued" and "expires" (RFC 3339 strings in
// UTC, written "Z", with the fractional seconds of Go's RFC3339Nano layout:
// no trailing zeros, no "." when zero). A decoder MUST reject a document of
// more than 4096 bytes, a missing, duplicate or unknown member
// (member names are case-sensitive), a field outside the limits above, a
// time in any other form, a zero ID, and Expires not after Issued.
//
// A policy maps operation names to M, which MUST be 2 to 8. An operation
// the policy names MUST NOT run without consuming a token for it. To
// consume token ID for operation op on object with threshold M, given the
// registered keys K (officer name → Ed25519 public key), the HSM MUST, in
// order:
//
//  1. find ID among its outstanding tokens; otherwise fail (unknown token);
//  2. if the TTL has passed since the token was issued, as measured by
//     the HSM's clock (its Expires field, or a monotonic clock), remove the
//     token and fail (expired);
//  3. require op and object to equal the token's Op and Object byte for
//     byte; otherwise fail (mismatch);
//  4. reject more than 64 approvals (bad approval);
//  5. for every approval, require its officer to be in K and its signature
//     to verify under that officer's key over the SigningBytes of the token
//     as the HSM stored it, never as the client presents it; otherwise fail
//     (bad signature) — an unknown officer or bad signature is never
//     skipped;
//  6. count the approvals, counting an officer once however often it
//     appears, and an Ed25519 key once however many officers registered it;
//     if the count is less than M, fail (not enough approvals);
//  7. remove the token, then allow the operation.
//
// Failures at steps 3 to 6 MUST leave the token outstanding. A token MUST
// NOT be consumed twice: an HSM that adopts tokens MUST remember each
// token it consumed until its Expires, across restarts, and MUST record
// that on stable storage before the operation the token approves takes
// effect. The HSM MUST hold at most 1024 outstanding
// tokens: when full, it removes the expired ones and, if none has expired,
// the one issued first.
//
// Test vector: the token
//
//	{"id":"000102030405060708090a0b0c0d0e0f","op":"user.delete","object":"bob",
//	 "issued":"2025-03-14T15:09:26.535897932Z","expires":"2025-03-14T15:19:26.535897932Z"}
//
// has SigningBytes (hex, spaces added)
//
//	68736d6261636b75702071756f72756d20746f6b656e20763100
//	000102030405060708090a0b0c0d0e0f 0000000b757365722e64656c657465
//	00000003626f62 182cb3e8618c234c 182cb4741455934c
//
// and the private key of RFC 8032 section 7.1 TEST 1 signs them as
//
//	f9b444ffe9cc3a702dad11096910776a21cb2cb0f8f0c23de60ec076f8746c77
//	e4f1f444649bfed330d1573cd0d5d4a04988ea727728361c1a697452b10c9c02
package quorum

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits of the format and of a Tracker.
const (
	// MinQuorum and MaxQuorum bound M in a Policy.
	MinQuorum = 2
	MaxQuorum = 8
	// MaxOpLen bounds an operation name, in bytes.
	MaxOpLen = 64
	// MaxObjectLen bounds a token's Object, in bytes.
	MaxObjectLen = 256
	// MaxTokenJSON bounds a token's JSON encoding, in bytes.
	MaxTokenJSON = 4096
	// MaxApprovals bounds the approvals Consume accepts for one token.
	MaxApprovals = 64
	// MaxOutstanding bounds the tokens a Tracker holds.
	MaxOutstanding = 1024
	// MaxSpent bounds the consumed, unexpired tokens a Tracker remembers.
	MaxSpent = 4 * MaxOutstanding
	// DefaultTTL is how long a token stays valid unless configured.
	DefaultTTL = 10 * time.Minute
)

// domain separates quorum signatures from every other use of an officer's
// key (the same key may serve for MFA).
const domain = "hsmbackup quorum token v1\x00"

// Sentinel errors. Every error from Tracker.Consume wraps exactly one.
var (
	// ErrUnknownToken: no such token is outstanding: never issued, already
	// used, expired and removed, or evicted.
	ErrUnknownToken = errors.New("quorum: unknown token")
	// ErrExpired: the token has expired; it is removed.
	ErrExpired = errors.New("quorum: token expired")
	// ErrMismatch: the token was issued for another operation or object.
	ErrMismatch = errors.New("quorum: token issued for another operation or object")
	// ErrNotEnoughApprovals: fewer than M distinct officers approved.
	ErrNotEnoughApprovals = errors.New("quorum: not enough approvals")
	// ErrBadSignature: an approval names an unregistered officer, carries
	// a signature that does not verify, or there are more than
	// MaxApprovals approvals. Unknown officer and bad signature give the
	// same message.
	ErrBadSignature = errors.New("quorum: bad approval")
)

// Policy says which operations need quorum approval, and from how many
// officers. The zero Policy requires approval for nothing.
type Policy struct {
	// Ops maps an operation name (such as "user.delete", "key.trust" or
	// "image.import") to M, the number of approvals it needs.
	Ops map[string]int `json:"ops"`
}

// Validate checks that every operation name is 1 to MaxOpLen bytes of
// a-z 0-9 . _ - and every M is MinQuorum to MaxQuorum.
func (p Policy) Validate() error {
	names := make([]string, 0, len(p.Ops))
	for op := range p.Ops {
		names = append(names, op)
	}
	sort.Strings(names) // report the same error every time
	for _, op := range names {
		if err := checkOp(op); err != nil {
			return fmt.Errorf("quorum: %w", err)
		}
		if m := p.Ops[op]; m < MinQuorum || m > MaxQuorum {
			return fmt.Errorf("quorum: operation %q: approvals %d outside %d..%d", op, m, MinQuorum, MaxQuorum)
		}
	}
	return nil
}

// Required returns the number of approvals op needs, or 0 if it needs none.
// It fails closed on a policy that Validate would refuse: an operation
// listed with an M below MinQuorum requires MinQuorum.
func (p Policy) Required(op string) int {
	m, ok := p.Ops[op]
	if !ok {
		return 0
	}
	return max(m, MinQuorum)
}

// checkOp checks an operation name.
func checkOp(op string) error {
	if len(op) == 0 || len(op) > MaxOpLen {
		return fmt.Errorf("operation name must be 1..%d bytes", MaxOpLen)
	}
	for i := 0; i < len(op); i++ {
		c := op[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("operation name %q: only a-z 0-9 . _ - allowed", op)
		}
	}
	return nil
}

// checkObject checks a token's Object.
func checkObject(object string) error {
	if len(object) > MaxObjectLen {
		return fmt.Errorf("object longer than %d bytes", MaxObjectLen)
	}
	if !utf8.ValidString(object) {
		return errors.New("object is not valid UTF-8")
	}
	for _, r := range object {
		// Control and format characters (such as bidirectional overrides)
		// could make an officer's tool show a different object.
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return errors.New("object contains a control or format character")
		}
	}
	return nil
}

// Token is what the HSM issues for one operation on one object. Officers
// approve it by signing its SigningBytes. In JSON it has the form described
// in the package documentation.
type Token struct {
	ID      [16]byte  // random
	Op      string    // operation name, as in a Policy
	Object  string    // e.g. a user name or key handle
	Issued  time.Time // UTC
	Expires time.Time // Issued + TTL
}

// SigningBytes returns the bytes an officer signs to approve t, as defined
// in the package documentation. It does not validate t.
func (t Token) SigningBytes() []byte {
	b := make([]byte, 0, len(domain)+len(t.ID)+4+len(t.Op)+4+len(t.Object)+16)
	b = append(b, domain...)
	b = append(b, t.ID[:]...)
	for _, s := range [...]string{t.Op, t.Object} {
		if uint64(len(s)) > math.MaxUint32 {
			panic("quorum: field too long to sign")
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(t.Issued.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(t.Expires.UnixNano()))
	return b
}

// validate checks t against the limits in the package documentation. Its
// errors, like those of checkOp and checkObject, have no package prefix.
func (t Token) validate() error {
	if t.ID == ([16]byte{}) {
		return errors.New("token ID is zero")
	}
	if err := checkOp(t.Op); err != nil {
		return err
	}
	if err := checkObject(t.Object); err != nil {
		return err
	}
	for _, tm := range [...]time.Time{t.Issued, t.Expires} {
		if tm.Location() != time.UTC {
			return errors.New("token time is not in UTC")
		}
		if !timeInRange(tm) {
			return errors.New("token time out of range")
		}
	}
	if !t.Expires.After(t.Issued) {
		return errors.New("token expires before it is issued")
	}
	return nil
}

// timeInRange reports whether t.UnixNano names t exactly. Outside that
// range UnixNano wraps around, and two times 2^64 ns apart would sign alike.
func timeInRange(t time.Time) bool {
	return t.Equal(time.Unix(0, t.UnixNano()))
}

// Approval is one officer's approval of a token. In JSON the signature is
// standard base64, as encoding/json writes a []byte.
type Approval struct {
	Officer   string `json:"officer"`   // the officer's user name
	Signature []byte `json:"signature"` // Ed25519 over the token's SigningBytes
}

// Sign returns officer's approval of t, signed with priv.
func Sign(priv ed25519.PrivateKey, officer string, t Token) Approval {
	return Approval{Officer: officer, Signature: ed25519.Sign(priv, t.SigningBytes())}
}
