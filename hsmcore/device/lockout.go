package device

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
	"github.com/hsmbackup/hsmbackup/internal/strictjson"
)

// DefaultMaxLoginFailures is how many wrong passwords in a row lock a user
// unless Options say otherwise. A locked user's logins fail, right
// password or not, until a crypto officer unlocks it (Session.UnlockUser).
const DefaultMaxLoginFailures = 5

// failuresFile holds the failed-login counts: device-local state, sealed
// like the state file but never in an image nor in the state digest, so
// that members of a cluster count on their own and a restart keeps a lock.
const failuresFile = "logins.sealed"

// failuresMagic starts the failures file; it is also the AEAD's
// additional data, so that the state file cannot pass for it.
var failuresMagic = []byte("HSMLOGN\x01")

const failuresFormat = "hsmcore-login-failures/1"

// failure is a user's count of wrong passwords since its last successful
// login or unlock. Salt is the user record's password salt: a count holds
// for the record it was made against, so a user deleted and created
// again, or given a new password, starts afresh.
type failure struct {
	Salt  []byte `json:"salt"`
	Count int    `json:"count"`
}

type failuresRecord struct {
	Format   string              `json:"format"`
	Failures map[string]*failure `json:"failures"`
}

func (d *Device) maxLoginFailures() int {
	switch n := d.opts.MaxLoginFailures; {
	case n == 0:
		return DefaultMaxLoginFailures
	case n < 0:
		return 0 // never lock
	default:
		return n
	}
}

// failureCount returns user u's current count. The caller holds d.mu.
func (d *Device) failureCount(u *userRecord) int {
	if f := d.failures[u.Name]; f != nil && bytes.Equal(f.Salt, u.Salt) {
		return f.Count
	}
	return 0
}

// lockedOut reports whether user u is locked. The caller holds d.mu.
func (d *Device) lockedOut(u *userRecord) bool {
	max := d.maxLoginFailures()
	return max > 0 && d.failureCount(u) >= max
}

// setFailures makes count user u's count, on disk first. The caller holds
// d.mu.
func (d *Device) setFailures(u *userRecord, count int) error {
	next := map[string]*failure{}
	for name, f := range d.failures {
		if cur := d.st.Users[name]; cur != nil && bytes.Equal(cur.Salt, f.Salt) && name != u.Name {
			next[name] = f // counts of users gone or re-created are dropped
		}
	}
	if count > 0 {
		next[u.Name] = &failure{Salt: u.Salt, Count: count}
	}
	if err := d.writeFailures(next); err != nil {
		return fmt.Errorf("record failed logins: %w", err)
	}
	d.failures = next
	return nil
}

// loginFailed records a wrong password for user u (nil: no such user) and
// locks it at the limit. Only counts below the limit are recorded, each
// with its audit entry, so that guesses at a locked user write nothing.
// The caller holds d.mu.
func (d *Device) loginFailed(name string, u *userRecord) {
	max := d.maxLoginFailures()
	if u == nil || max == 0 {
		d.auditUnauth("login", auditName(name), "denied")
		return
	}
	n := d.failureCount(u) + 1
	if err := d.setFailures(u, n); err != nil {
		d.auditUnauth("login", name, "error")
		return
	}
	d.auditUnauth("login", name, "denied")
	if n >= max {
		d.audit("", "user.lock", name, "after "+strconv.Itoa(n)+" failed logins")
	}
}

// loginSucceeded clears user u's count, if any. The caller holds d.mu.
func (d *Device) loginSucceeded(u *userRecord) error {
	if d.failureCount(u) == 0 {
		return nil
	}
	return d.setFailures(u, 0)
}

// UnlockUser lifts a user's lockout and clears its count of failed logins
// on this HSM. Crypto officers only. Unlocking a user that is not locked
// only clears its count.
func (s *Session) UnlockUser(name string) error {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("user.unlock", hsmcore.CryptoOfficer); err != nil {
		return err
	}
	u := d.st.Users[name]
	if u == nil {
		return fmt.Errorf("unlock user %s: %w", auditName(name), hsmcore.ErrNotFound)
	}
	was := d.failureCount(u)
	if err := d.setFailures(u, 0); err != nil {
		return fmt.Errorf("unlock user %s: %w", name, err)
	}
	return d.audit(s.user, "user.unlock", name, "ok, "+strconv.Itoa(was)+" failed logins cleared")
}

// writeFailures seals failures and atomically replaces the failures file.
func (d *Device) writeFailures(failures map[string]*failure) error {
	plain, err := json.Marshal(failuresRecord{Format: failuresFormat, Failures: failures})
	if err != nil {
		return err
	}
	nonce := make([]byte, d.seal.NonceSize())
	rand.Read(nonce)
	out := append(append([]byte{}, failuresMagic...), nonce...)
	out = d.seal.Seal(out, nonce, plain, failuresMagic)
	return atomicfile.WriteFile(filepath.Join(d.dir, failuresFile), out, 0o600)
}

// readFailures loads the failures file into d, after its state; a device
// without one (made before it existed, or never refused a login) has no
// counts.
func (d *Device) readFailures() error {
	sealed, err := atomicfile.ReadPrivate(filepath.Join(d.dir, failuresFile))
	if errors.Is(err, fs.ErrNotExist) {
		d.failures = map[string]*failure{}
		return nil
	}
	if err != nil {
		return fmt.Errorf("failed logins: %w", err)
	}
	n := len(failuresMagic) + d.seal.NonceSize()
	if len(sealed) < n+d.seal.Overhead() || !bytes.Equal(sealed[:len(failuresMagic)], failuresMagic) {
		return fmt.Errorf("failed logins: %w", hsmcore.ErrMalformed)
	}
	plain, err := d.seal.Open(nil, sealed[len(failuresMagic):n], sealed[n:], failuresMagic)
	if err != nil {
		return fmt.Errorf("failed logins: %w", hsmcore.ErrTampered)
	}
	var rec failuresRecord
	if err := strictjson.Unmarshal(plain, &rec); err != nil || rec.Format != failuresFormat || len(rec.Failures) > MaxUsers {
		return fmt.Errorf("failed logins: %w", hsmcore.ErrMalformed)
	}
	d.failures = map[string]*failure{}
	for name, f := range rec.Failures {
		if f == nil || f.Count < 1 {
			return fmt.Errorf("failed logins: %w", hsmcore.ErrMalformed)
		}
		d.failures[name] = f
	}
	return nil
}

// removeFailures deletes the failures file, as zeroizing does.
func (d *Device) removeFailures() error {
	if err := os.Remove(filepath.Join(d.dir, failuresFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	d.failures = map[string]*failure{}
	return nil
}
