package hsmcore

import "errors"

// Sentinel errors. Callers test for them with errors.Is; messages add the
// step and the object concerned, never key material.
var (
	// ErrHardwareMismatch: an image or attestation comes from hardware of
	// another class, manufacturer or operator, so its backup key differs.
	ErrHardwareMismatch = errors.New("hardware identity mismatch")
	// ErrTampered: authenticated data failed its check (an image chunk, a
	// wrapped key, a sealed file, a signature).
	ErrTampered = errors.New("authentication failed: data tampered or corrupted")
	// ErrTruncated: an image ended before its authenticated last chunk.
	ErrTruncated = errors.New("image truncated")
	// ErrTrailingData: bytes follow an image's authenticated last chunk.
	ErrTrailingData = errors.New("trailing data after image")
	// ErrFirmwareDowngrade: an image from newer firmware cannot be restored
	// onto older firmware.
	ErrFirmwareDowngrade = errors.New("target firmware older than source")
	// ErrFIPSMode: an image taken in FIPS mode cannot be restored onto an
	// HSM that is not in FIPS mode.
	ErrFIPSMode = errors.New("FIPS-mode image cannot be restored onto a non-FIPS HSM")
	// ErrMalformed: input is not in the expected format or exceeds a limit.
	ErrMalformed = errors.New("malformed input")
	// ErrUnsupportedVersion: a format version this code does not know.
	ErrUnsupportedVersion = errors.New("unsupported format version")
	// ErrAuth: login failed. One opaque error for unknown user and wrong
	// password alike.
	ErrAuth = errors.New("login failed")
	// ErrPermission: the logged-in user's role or ownership does not allow
	// the operation, or a key attribute forbids it.
	ErrPermission = errors.New("permission denied")
	// ErrNotFound: no such key or user.
	ErrNotFound = errors.New("not found")
	// ErrExists: a user of that name already exists.
	ErrExists = errors.New("already exists")
	// ErrInvalid: a request is invalid (bad attribute combination, size,
	// key type, read-only attribute…).
	ErrInvalid = errors.New("invalid request")
	// ErrFull: the HSM holds as many keys or users as it can.
	ErrFull = errors.New("capacity exceeded")
	// ErrQuorum: the operation needs approvals from more crypto officers
	// (M of N) than it carries, or its quorum token is unknown, used or
	// expired.
	ErrQuorum = errors.New("quorum approval required")
	// ErrAttestation: an attestation failed verification (chain, identity,
	// nonce, freshness or signature).
	ErrAttestation = errors.New("attestation rejected")
	// ErrConflict: a change between cluster members does not follow what
	// the member holds: replayed, older than its state, made concurrently
	// with another change of the same object, or after changes the member
	// missed. A member that refuses one is re-synced, never merged.
	ErrConflict = errors.New("conflicting change")
)
