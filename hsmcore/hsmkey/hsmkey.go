// Package hsmkey is a backup master key that lives inside an HSM cluster:
// a wrap.HSMKey over an AES key of the cluster, used through the cluster
// client, as AWS KMS uses a custom key store backed by CloudHSM. Data keys
// are sealed and opened by the HSMs with AES-256-GCM; the master key never
// leaves them.
package hsmkey

import (
	"context"
	"errors"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// Cluster is what the key needs of a cluster: a logged-in crypto user that
// may use the key.
type Cluster interface {
	Encrypt(ctx context.Context, h uint64, data, aad []byte) ([]byte, error)
	Decrypt(ctx context.Context, h uint64, data, aad []byte) ([]byte, error)
}

// Key is AES key handle of the cluster named clusterID.
type Key struct {
	c      Cluster
	handle uint64
	id     string
}

var _ wrap.HSMKey = (*Key)(nil)

// New returns the master key handle of cluster clusterID, reached
// through c. The key must be an AES key with encrypt and decrypt set.
func New(c Cluster, clusterID string, handle uint64) *Key {
	return &Key{c: c, handle: handle, id: fmt.Sprintf("%s/%d", clusterID, handle)}
}

// KeyID names the key: "<cluster id>/<handle>".
func (k *Key) KeyID() string { return k.id }

// aad binds a wrapped data key to this master key's name.
func (k *Key) aad() []byte { return []byte("hsmbackup data key v1\x00" + k.id) }

// WrapKey has the HSM seal dek.
func (k *Key) WrapKey(ctx context.Context, dek []byte) ([]byte, error) {
	return k.c.Encrypt(ctx, k.handle, dek, k.aad())
}

// UnwrapKey has the HSM open wrapped; an authentication failure is
// wrap.ErrTampered.
func (k *Key) UnwrapKey(ctx context.Context, wrapped []byte) ([]byte, error) {
	dek, err := k.c.Decrypt(ctx, k.handle, wrapped, k.aad())
	if errors.Is(err, hsmcore.ErrTampered) {
		return nil, fmt.Errorf("%w: %w", err, wrap.ErrTampered)
	}
	return dek, err
}
