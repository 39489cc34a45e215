package wrap

import "errors"

// Errors returned, wrapped with the step that failed, by this package. Test
// them with errors.Is. Messages never hold key material.
var (
	// ErrUnknownKey means that none of the identities given holds a key that
	// any stanza of the envelope is wrapped to: a keyring without the named
	// key id or version, an HPKE private key of another fingerprint, another
	// HSM key. The message names the keys the envelope is wrapped to.
	ErrUnknownKey = errors.New("no key for this envelope")

	// ErrTampered means that an authentication check failed: the header MAC,
	// a stanza meant for the identity that does not unwrap, or a body package.
	// Every such failure gives this one message, with the part (header or
	// body) that failed.
	ErrTampered = errors.New("authentication failed: tampered or corrupted")

	// ErrTruncated means that the input ended inside the header, or that the
	// body ended at a package boundary before its final package. A body cut
	// inside a package fails its authentication instead (ErrTampered).
	ErrTruncated = errors.New("truncated")

	// ErrMalformed means that a header or key file does not follow its
	// format: bad magic, a field out of range, bytes left over.
	ErrMalformed = errors.New("malformed input")

	// ErrUnsupportedVersion means a format version or body suite that this
	// package does not know.
	ErrUnsupportedVersion = errors.New("unsupported format version")
)
