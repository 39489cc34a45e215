// Package wrap is hsmbackup's outer envelope: it encrypts an HSM image a
// second time, under master keys held by the backup service, before the
// image is stored. It knows nothing of HSMs or storage; a master key that
// lives in an HSM is the small HSMKey interface.
//
// An envelope (docs/FORMATS.md section 8) is a header and a body. Each
// envelope gets a fresh random 32-byte data key (DEK). The body is a DARE 2.0
// stream (github.com/minio/sio) under AES-256-GCM, with a key derived from
// the DEK and the header core (magic, version, object id, flags, body
// suite). The header holds the DEK wrapped to one or more recipients, one
// stanza each, and an HMAC-SHA256 over the whole header under another key
// derived from the DEK and the core. So:
//
//   - changing any header byte fails the MAC (or the stanza's own
//     authentication), and changing a core byte also changes the body key;
//   - the stanzas are outside the core, so Rewrap can replace them (master
//     key rotation) and recompute the MAC while the body stays byte for byte
//     the same.
//
// Recipients and identities are small interfaces in the style of age:
// a Keyring of versioned AES-256 master keys (AES-KWP, RFC 5649), an HPKE
// hybrid post-quantum public key (ML-KEM-768 + X25519, so a backup writer
// can hold only a public key and cannot read old backups), and an HSMKey,
// a master key that never leaves an HSM.
package wrap

import "context"

// A Recipient wraps an envelope's data key to one master key.
type Recipient interface {
	// Wrap wraps dek, a fresh 32-byte data key, and returns the stanza to
	// store in the header. It must neither keep nor change dek. It may
	// block (an HSM call) and must then honour ctx.
	Wrap(ctx context.Context, dek []byte) (Stanza, error)
}

// An Identity unwraps an envelope's data key.
type Identity interface {
	// Unwrap looks among stanzas for those wrapped to its keys and returns
	// the 32-byte data key from the first that unwraps. If no stanza is for
	// it, it returns an error wrapping ErrUnknownKey, and the caller tries
	// its next identity; a stanza for it that does not unwrap is an error
	// wrapping ErrTampered. Any other error (an HSM out of reach, ctx
	// done) is operational: the caller tries its next identity and returns
	// the error if none succeeds. It may block and must then honour ctx.
	Unwrap(ctx context.Context, stanzas []Stanza) ([]byte, error)
}
