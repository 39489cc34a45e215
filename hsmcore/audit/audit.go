// Package audit keeps a hash-chained log of HSM management operations and
// verifies it.
//
// Each Entry records one operation and carries the Hash of the entry before
// it, so removing, reordering, inserting or editing an entry breaks the chain
// at that point, and Verify says where.
//
// A hash chain alone proves only that a log is consistent with itself.
// Anyone who can rewrite the whole log can recompute every hash, and anyone
// who can cut off its tail leaves a shorter chain that is just as valid. The
// chain must therefore be anchored by a Head from a trusted source: the HSM
// signs its current Head with its device key (done outside this package),
// and a verifier passes that Head to Verify.
//
// # Entry hash, version 1
//
//	Hash = SHA-256( "hsmbackup audit v1" || 0x00
//	              || u64be(Seq) || i64be(Time.UnixNano())
//	              || str(Actor) || str(Op) || str(Object) || str(Result)
//	              || Prev )
//	str(s) = u32be(len(s)) || s
//
// Prev is the Hash of the previous entry, or 32 zero bytes for Seq 1. Time
// MUST lie within the range of an int64 count of nanoseconds since 1970
// (years 1678 to 2262), so that UnixNano names it uniquely.
//
// # Encoding
//
// A log is stored as JSON Lines: one JSON object per entry, in Seq order,
// each line ending in "\n" and at most MaxLineLen bytes long without it.
// Hashes are 64 lower-case hex digits; Time is RFC 3339 in UTC ("Z") with up
// to nine fractional digits. Decode rejects anything else; see Decode.
// DecodeTorn also takes a torn last line, what a write cut short leaves,
// so that a writer can truncate it and go on.
//
// A writer may split a long log into files (segments, as the HSM does):
// each file holds at most MaxEntries entries, and VerifyFrom checks each
// one as the continuation of the one before.
package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"time"
)

// Limits of the format.
const (
	// MaxFieldLen bounds each of Actor, Op, Object and Result, in bytes.
	MaxFieldLen = 1024
	// MaxLineLen bounds one encoded entry, in bytes, not counting "\n".
	MaxLineLen = 4096
)

// MaxEntries bounds the number of entries Decode reads from one file. It is
// a variable only so that tests can lower it.
var MaxEntries = 1 << 20

// domain separates entry hashes from every other use of SHA-256.
const domain = "hsmbackup audit v1\x00"

var (
	// ErrBroken is wrapped by every error from Verify and VerifyFrom: the
	// entries are not an intact chain, or do not end at the expected Head.
	ErrBroken = errors.New("audit: chain broken")
)

// Hash is a SHA-256 entry hash. In JSON it is a string of 64 lower-case hex
// digits.
type Hash [32]byte

// String returns h as lower-case hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// MarshalJSON encodes h as a string of 64 lower-case hex digits.
func (h Hash) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 2+hex.EncodedLen(len(h)))
	b = append(b, '"')
	b = hex.AppendEncode(b, h[:])
	return append(b, '"'), nil
}

// UnmarshalJSON accepts only a string of exactly 64 lower-case hex digits,
// without escapes, so that each Hash has one encoding.
func (h *Hash) UnmarshalJSON(b []byte) error {
	if len(b) != 2+hex.EncodedLen(len(h)) || b[0] != '"' || b[len(b)-1] != '"' {
		return errors.New("audit: hash is not a string of 64 lower-case hex digits")
	}
	digits := b[1 : len(b)-1]
	for _, c := range digits {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return errors.New("audit: hash is not a string of 64 lower-case hex digits")
		}
	}
	_, err := hex.Decode(h[:], digits)
	return err
}

// Head names the end of a log: the Seq and Hash of its last entry, or the
// zero Head for an empty log. Given a Head trusted from elsewhere (the HSM
// signs it), Verify also detects a removed tail or a rewritten log.
type Head struct {
	Seq  uint64 `json:"seq"`
	Hash Hash   `json:"hash"`
}

// Entry is one audited operation.
type Entry struct {
	Seq    uint64    `json:"seq"`              // 1, 2, 3, … with no gaps
	Time   time.Time `json:"time"`             // UTC, with nanoseconds
	Actor  string    `json:"actor"`            // the logged-in user, "(unauthenticated)" for a call without a session, or "" for the device itself
	Op     string    `json:"op"`               // e.g. "login", "user.create", "key.create", "key.delete", "key.attr", "image.export", "image.import", "key.wrap", "key.unwrap"
	Object string    `json:"object,omitempty"` // e.g. key handle or user name
	Result string    `json:"result"`           // "ok", or a short failure class such as "denied"
	Prev   Hash      `json:"prev"`             // Hash of the previous entry; zero for Seq 1
	Hash   Hash      `json:"hash"`             // this entry's hash, from ComputeHash
}

// ComputeHash returns the hash of e as defined in the package documentation.
// It covers every field except Hash itself. It does not check that e.Time is
// in range; Verify does.
func (e *Entry) ComputeHash() Hash {
	b := make([]byte, 0, 128)
	b = append(b, domain...)
	b = binary.BigEndian.AppendUint64(b, e.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(e.Time.UnixNano()))
	for _, s := range [...]string{e.Actor, e.Op, e.Object, e.Result} {
		if uint64(len(s)) > math.MaxUint32 {
			panic("audit: field too long to hash")
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	b = append(b, e.Prev[:]...)
	return sha256.Sum256(b)
}

// timeInRange reports whether t.UnixNano names t exactly. Outside that range
// UnixNano wraps around, and two times 2^64 ns apart would share a hash.
func timeInRange(t time.Time) bool {
	return t.Equal(time.Unix(0, t.UnixNano()))
}
