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

// Members of a cluster replicate changes as sync records: a user or a key
// record, sealed under the cluster's sync key. Every member holds the same
// cluster key (members are cloned by image), so every member derives the
// same sync key and nothing outside the cluster can read a record. This is
// how a key made on one member, its material included, reaches the others
// without ever leaving the cluster in the clear, and how all members come
// to hold identical state (equal StateDigest).

var syncMagic = []byte("HSMSYNC\x01")

// syncRecord is the plaintext of a sync record: exactly one of its fields.
type syncRecord struct {
	User  *userRecord     `json:"user,omitempty"`
	Key   *keyRecord      `json:"key,omitempty"`
	Token json.RawMessage `json:"token,omitempty"` // a quorum token (AdoptQuorumToken)
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
	return hex.EncodeToString(d.digest[:])
}

// ExportUserRecord seals user name's record for the other members of the
// cluster. A crypto officer may export any user, a crypto user itself.
func (s *Session) ExportUserRecord(name string) ([]byte, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("sync.export"); err != nil {
		return nil, err
	}
	u := d.st.Users[name]
	if u == nil || (s.role == hsmcore.CryptoUser && name != s.user) {
		return nil, fmt.Errorf("export user %s: %w", auditName(name), hsmcore.ErrNotFound)
	}
	return d.sealSync(syncRecord{User: u})
}

// ExportKeyRecord seals token key h's record, material included, for the
// other members of the cluster. A crypto officer may export any token key,
// a crypto user the keys it owns.
func (s *Session) ExportKeyRecord(h uint64) ([]byte, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("sync.export"); err != nil {
		return nil, err
	}
	k := d.st.Keys[h]
	if k == nil || !k.Token || (s.role == hsmcore.CryptoUser && k.Owner != s.user) {
		return nil, fmt.Errorf("export key %d: %w", h, hsmcore.ErrNotFound)
	}
	return d.sealSync(syncRecord{Key: k})
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

// ImportRecord applies a sync record from another member of the same
// cluster: the user or key is added, or replaces the record of the same
// name or handle. A crypto officer may import users and keys; a crypto
// user, keys it owns and its own user record with its own role (after a
// password change on another member).
func (s *Session) ImportRecord(blob []byte) error {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("sync.import"); err != nil {
		return err
	}
	r, err := d.openSync(s, blob)
	if err != nil {
		return fmt.Errorf("import record: %w", err)
	}
	if (r.User == nil) == (r.Key == nil) {
		return fmt.Errorf("import record: not a user or key record: %w", hsmcore.ErrMalformed)
	}
	next := d.st.clone()
	var object string
	switch {
	case r.User != nil:
		if s.role != hsmcore.CryptoOfficer && (r.User.Name != s.user || r.User.Role != s.role) {
			return fmt.Errorf("import record: a crypto user imports only its own user record: %w", hsmcore.ErrPermission)
		}
		if err := r.User.check(); err != nil {
			return fmt.Errorf("import record: %v: %w", err, hsmcore.ErrMalformed)
		}
		if next.Users[r.User.Name] == nil && len(next.Users) >= MaxUsers {
			return fmt.Errorf("import record: %w", hsmcore.ErrFull)
		}
		next.Users[r.User.Name] = r.User
		object = "user " + r.User.Name
	default:
		k := r.Key
		if s.role == hsmcore.CryptoUser && k.Owner != s.user {
			return fmt.Errorf("import record: key %d is not yours: %w", k.Handle, hsmcore.ErrPermission)
		}
		delete(next.Keys, k.Handle)
		if next.NextHandle <= k.Handle && k.Handle < firstSessionHandle {
			next.NextHandle = k.Handle + 1
		}
		if err := k.check(next); err != nil {
			return fmt.Errorf("import record: %v: %w", err, hsmcore.ErrMalformed)
		}
		if len(next.Keys) >= d.capacity {
			return fmt.Errorf("import record: %w", hsmcore.ErrFull)
		}
		next.Keys[k.Handle] = k
		object = fmt.Sprintf("key %d", k.Handle)
	}
	if err := d.commit(next); err != nil {
		return fmt.Errorf("import record: %w", err)
	}
	if r.User != nil && r.User.Name == s.user {
		s.rec = r.User // its own new password: this session goes on
	}
	return d.audit(s.user, "sync.import", object, "ok")
}
