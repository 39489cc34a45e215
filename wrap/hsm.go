package wrap

import (
	"context"
	"errors"
	"fmt"
)

const hsmStanza = "hsm"

// An HSMKey is a master key that lives inside an HSM cluster and never
// leaves it: the HSM wraps and unwraps data keys, as with an AWS KMS custom
// key store backed by CloudHSM. This package only calls it.
//
// hsmcore/hsmkey implements it over an AES key of an HSM cluster; this
// package's tests use a software fake.
type HSMKey interface {
	// KeyID names the key, stably for its whole life: 1 to 255 bytes of
	// printable ASCII without spaces. It is stored in each stanza.
	KeyID() string
	// WrapKey returns dek wrapped under the key, 1 to MaxStanzaBody bytes.
	// It must not keep dek.
	WrapKey(ctx context.Context, dek []byte) ([]byte, error)
	// UnwrapKey returns the key that wrapped wraps. If the HSM rejects
	// wrapped as not authentic under the key, the error must wrap
	// ErrTampered; any other error (cluster unreachable, ctx done) is taken
	// as an operational failure and returned as is.
	UnwrapKey(ctx context.Context, wrapped []byte) ([]byte, error)
}

// HSMRecipient is a Recipient and an Identity over an HSMKey: a stanza
// "hsm" with the key id as argument and the HSM's wrapping as body.
type HSMRecipient struct {
	key HSMKey
}

var (
	_ Recipient = (*HSMRecipient)(nil)
	_ Identity  = (*HSMRecipient)(nil)
)

// NewHSMRecipient returns a Recipient and Identity over key.
func NewHSMRecipient(key HSMKey) (*HSMRecipient, error) {
	if key == nil {
		return nil, errors.New("nil HSM key")
	}
	if err := checkArg(key.KeyID()); err != nil {
		return nil, fmt.Errorf("HSM key id: %w", err)
	}
	return &HSMRecipient{key: key}, nil
}

// String returns "hsm <key id>", as the header's Recipients names its stanza.
func (r *HSMRecipient) String() string { return hsmStanza + " " + r.key.KeyID() }

// Wrap asks the HSM to wrap dek.
func (r *HSMRecipient) Wrap(ctx context.Context, dek []byte) (Stanza, error) {
	if err := ctx.Err(); err != nil {
		return Stanza{}, err
	}
	body, err := r.key.WrapKey(ctx, dek)
	if err != nil {
		return Stanza{}, fmt.Errorf("HSM key %s: wrap: %w", r.key.KeyID(), err)
	}
	return Stanza{Type: hsmStanza, Args: []string{r.key.KeyID()}, Body: body}, nil
}

// Unwrap asks the HSM to unwrap the first "hsm" stanza that names its key.
func (r *HSMRecipient) Unwrap(ctx context.Context, stanzas []Stanza) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	id := r.key.KeyID()
	for _, s := range stanzas {
		if s.Type != hsmStanza || len(s.Args) != 1 || s.Args[0] != id {
			continue
		}
		dek, err := r.key.UnwrapKey(ctx, s.Body)
		if errors.Is(err, ErrTampered) {
			return nil, fmt.Errorf("%w: stanza for HSM key %s does not unwrap", ErrTampered, id)
		}
		if err != nil {
			return nil, fmt.Errorf("HSM key %s: unwrap: %w", id, err)
		}
		if len(dek) != dekSize {
			clear(dek)
			return nil, fmt.Errorf("%w: HSM key %s unwrapped %d bytes", ErrTampered, id, len(dek))
		}
		return dek, nil
	}
	return nil, fmt.Errorf("%w: HSM key %s", ErrUnknownKey, id)
}
