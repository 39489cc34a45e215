// Package keywrap wraps keys under a key-encryption key (KEK) with the AES
// key wrap algorithms: without padding (WrapKW, RFC 3394, kw.go) and with
// padding (Wrap, the default here): KWP-AE and KWP-AD of NIST SP 800-38F §6.3,
// which is the same algorithm as RFC 5649 (alternative initial value
// A65959A6 || [len(key)]_32). It is a thin layer over tink's implementation,
// github.com/tink-crypto/tink-go/v2/kwp/subtle, and inherits its limits:
// the KEK is 16 or 32 bytes (AES-128 or AES-256) and the wrapped key is
// MinKeySize to MaxKeySize bytes long.
//
// Wrapping is deterministic: the same KEK and key always give the same
// output, which is len(key) rounded up to a multiple of 8, plus 8 bytes.
package keywrap

import (
	"errors"
	"fmt"

	"github.com/tink-crypto/tink-go/v2/kwp/subtle"
)

// Limits on the length of the key to wrap, in bytes (tink's limits).
const (
	MinKeySize = subtle.MinWrapSize // 16
	MaxKeySize = subtle.MaxWrapSize // 8192
)

// ErrUnwrap is returned, possibly wrapped, by every failed Unwrap. Failures
// that depend on the wrapped input (its length, the integrity check, the
// length and padding it encodes) return ErrUnwrap itself, with no detail.
var ErrUnwrap = errors.New("keywrap: unwrap failed")

// Wrap wraps key under kek. kek must be 16 or 32 bytes and key MinKeySize to
// MaxKeySize bytes.
func Wrap(kek, key []byte) ([]byte, error) {
	kwp, err := subtle.NewKWP(kek)
	if err != nil {
		return nil, fmt.Errorf("keywrap: KEK is %d bytes, want 16 or 32", len(kek))
	}
	if len(key) < MinKeySize || len(key) > MaxKeySize {
		return nil, fmt.Errorf("keywrap: key is %d bytes, want %d to %d", len(key), MinKeySize, MaxKeySize)
	}
	wrapped, err := kwp.Wrap(key)
	if err != nil {
		return nil, fmt.Errorf("keywrap: wrap: %w", err)
	}
	return wrapped, nil
}

// Unwrap checks and unwraps a key wrapped under kek by Wrap (or by any
// SP 800-38F KWP-AE / RFC 5649 implementation). It accepts exactly the
// outputs of Wrap: a key shorter than MinKeySize is rejected even when its
// wrapping is valid. Every failure returns ErrUnwrap.
func Unwrap(kek, wrapped []byte) ([]byte, error) {
	kwp, err := subtle.NewKWP(kek)
	if err != nil {
		// The KEK's length is configuration, not attacker input.
		return nil, fmt.Errorf("%w: KEK is %d bytes, want 16 or 32", ErrUnwrap, len(kek))
	}
	key, err := kwp.Unwrap(wrapped)
	if err != nil {
		return nil, ErrUnwrap
	}
	// tink's Unwrap also accepts 9- to 15-byte keys (a 24-byte wrapping),
	// which its Wrap refuses; reject them so Unwrap is the inverse of Wrap.
	if len(key) < MinKeySize {
		clear(key)
		return nil, ErrUnwrap
	}
	return key, nil
}
