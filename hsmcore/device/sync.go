package device

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/device/internal/kbkdf"
	"github.com/hsmbackup/hsmbackup/internal/strictjson"
)

// Members of a cluster seal quorum tokens under the cluster's sync key, a
// key every member derives from the cluster key, so that one set of
// approvals serves every member (AdoptQuorumToken). State changes travel
// as change records (change.go), which only a current member can open.

var syncMagic = []byte("HSMSYNC\x01")

// syncRecord is the plaintext of a sync record: a quorum token, sealed so
// that every member adopts it (AdoptQuorumToken). State changes travel as
// change records (change.go).
type syncRecord struct {
	Token json.RawMessage `json:"token"`
}

// syncKey returns the cluster's sync key, or an error if
// the device is not an initialized cluster member. The caller holds d.mu.
func (d *Device) syncKey() ([]byte, error) {
	if !d.st.clusterInitialized() {
		return nil, fmt.Errorf("device is not a member of an initialized cluster: %w", hsmcore.ErrPermission)
	}
	key, err := d.st.Cluster.key()
	if err != nil {
		return nil, err
	}
	return kbkdf.Derive(key.D.FillBytes(make([]byte, 48)), []byte("hsmcore cluster sync v1"), []byte(d.st.Cluster.ID), 32), nil
}

// StateDigest returns the SHA-256 of the device's users, token keys and
// cluster record as sealed. Members of a cluster that are in sync have
// equal digests.
func (d *Device) StateDigest() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	digest := d.stateDigest()
	return hex.EncodeToString(digest[:])
}

func (d *Device) sealSync(r syncRecord) ([]byte, error) {
	key, err := d.syncKey()
	if err != nil {
		return nil, fmt.Errorf("sync record: %w", err)
	}
	plain, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("sync record: %w", err)
	}
	defer clear(plain)
	g := newGCM(key)
	out := append(bytes.Clone(syncMagic), make([]byte, g.NonceSize())...)
	rand.Read(out[len(syncMagic):])
	return g.Seal(out, out[len(syncMagic):], plain, d.syncAAD()), nil
}

// openSync opens a sealed sync record. The caller holds d.mu.
func (d *Device) openSync(s *Session, blob []byte) (*syncRecord, error) {
	key, err := d.syncKey()
	if err != nil {
		return nil, err
	}
	g := newGCM(key)
	n := len(syncMagic) + g.NonceSize()
	if len(blob) < n+g.Overhead() || len(blob) > maxRecordLine || !bytes.Equal(blob[:len(syncMagic)], syncMagic) {
		return nil, hsmcore.ErrMalformed
	}
	plain, err := g.Open(nil, blob[len(syncMagic):n], blob[n:], d.syncAAD())
	if err != nil {
		d.audit(s.user, "sync.open", "", "refused")
		return nil, hsmcore.ErrTampered
	}
	defer clear(plain)
	var r syncRecord
	if err := strictjson.Unmarshal(plain, &r); err != nil {
		return nil, hsmcore.ErrMalformed
	}
	return &r, nil
}

func (d *Device) syncAAD() []byte {
	return append(bytes.Clone(syncMagic), d.st.Cluster.ID...)
}
