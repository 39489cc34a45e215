package device

import (
	"cmp"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"slices"
	"strings"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// DefaultPasswordIterations is the PBKDF2-HMAC-SHA256 cost of a password
// (OWASP's 2023 figure for that function).
const DefaultPasswordIterations = 600_000

// Password length limits.
const (
	minPassword = 8
	maxPassword = 128
)

// userRecord is a user as stored and imaged.
type userRecord struct {
	Name       string       `json:"name"`
	Role       hsmcore.Role `json:"role"`
	Salt       []byte       `json:"salt"`
	Hash       []byte       `json:"hash"`
	Iterations int          `json:"iterations"`
	SigningKey []byte       `json:"signing_key,omitempty"` // a crypto officer's Ed25519 key for quorum approvals
}

func (u *userRecord) check() error {
	if err := hsmcore.CheckName(u.Name); err != nil {
		return fmt.Errorf("user name: %w", err)
	}
	if u.Role != hsmcore.CryptoOfficer && u.Role != hsmcore.CryptoUser {
		return fmt.Errorf("user %s: unknown role %q", u.Name, u.Role)
	}
	if len(u.Salt) != 16 || len(u.Hash) != 32 || u.Iterations < 1 || u.Iterations > 10_000_000 {
		return fmt.Errorf("user %s: bad password record", u.Name)
	}
	if len(u.SigningKey) != 0 && (len(u.SigningKey) != 32 || u.Role != hsmcore.CryptoOfficer) {
		return fmt.Errorf("user %s: bad signing key", u.Name)
	}
	return nil
}

func (d *Device) newUser(name string, role hsmcore.Role, password string) (*userRecord, error) {
	if err := hsmcore.CheckName(name); err != nil {
		return nil, fmt.Errorf("user name: %w", err)
	}
	if role != hsmcore.CryptoOfficer && role != hsmcore.CryptoUser {
		return nil, fmt.Errorf("role %q: %w", role, hsmcore.ErrInvalid)
	}
	if err := checkPassword(password); err != nil {
		return nil, err
	}
	iter := d.passwordIterations()
	u := &userRecord{Name: name, Role: role, Salt: make([]byte, 16), Iterations: iter}
	rand.Read(u.Salt)
	u.Hash = passwordHash(password, u.Salt, iter)
	return u, nil
}

func checkPassword(p string) error {
	if len(p) < minPassword || len(p) > maxPassword {
		return fmt.Errorf("password must be %d to %d bytes: %w", minPassword, maxPassword, hsmcore.ErrInvalid)
	}
	return nil
}

func passwordHash(password string, salt []byte, iter int) []byte {
	h, err := pbkdf2.Key(sha256.New, password, salt, iter, 32)
	if err != nil {
		panic("hsmcore: pbkdf2: " + err.Error())
	}
	return h
}

func (d *Device) passwordIterations() int {
	if d.opts.PasswordIterations > 0 {
		return d.opts.PasswordIterations
	}
	return DefaultPasswordIterations
}

// Initialize creates the first crypto officer of a device that has no
// users yet, as activating a CloudHSM cluster does.
func (d *Device) Initialize(name, password string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.st.Users) > 0 {
		d.auditUnauth("device.initialize", auditName(name), "denied")
		return fmt.Errorf("initialize: device already has users: %w", hsmcore.ErrPermission)
	}
	u, err := d.newUser(name, hsmcore.CryptoOfficer, password)
	if err != nil {
		return fmt.Errorf("initialize: %w", err)
	}
	next := d.st.clone()
	next.Users[name] = u
	if err := d.commitChange(next, nil, "user.create", userObject(name)); err != nil {
		return fmt.Errorf("initialize: %w", err)
	}
	return d.auditUnauth("device.initialize", name, "ok")
}

// Initialized reports whether the device has any user.
func (d *Device) Initialized() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.st.Users) > 0
}

// Counts returns how many token keys and users the device holds: what
// its health answer reports, without names.
func (d *Device) Counts() (keys, users int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st.Keys.Tokens(), len(d.st.Users)
}

// Session is a logged-in user on one device. Every operation re-checks that
// the session was not logged out and that the user's record is the one it
// logged in with: deleting or re-creating the user, changing its password
// (from another session) or importing an image ends the session.
type Session struct {
	d     *Device
	user  string
	role  hsmcore.Role
	rec   *userRecord // the record logged in with; replaced when the user is
	ended bool        // deleted, re-created, changes password or is imported over

	approval *approval    // quorum approvals for the next protected operation
	proof    *quorumProof // the approvals the operation being committed consumed
}

// Login checks a user's password and opens a session. Unknown user, wrong
// password and locked user give the same error, ErrAuth, after the same
// work. MaxLoginFailures wrong passwords in a row lock a user, on this
// device, until a crypto officer unlocks it; a successful login clears
// the count.
func (d *Device) Login(name, password string) (*Session, error) {
	d.mu.Lock()
	u := d.st.Users[name]
	d.mu.Unlock()
	ref := u
	if ref == nil {
		// An unknown user costs the same work as a wrong password.
		ref = &userRecord{Salt: make([]byte, 16), Hash: make([]byte, 32), Iterations: d.passwordIterations()}
	}
	got := passwordHash(password, ref.Salt, ref.Iterations)
	ok := subtle.ConstantTimeCompare(got, ref.Hash) == 1 && u != nil
	d.mu.Lock()
	defer d.mu.Unlock()
	if u != nil && d.lockedOut(u) {
		// Locked: refused whatever the password; counted within the bound
		// of unauthenticated entries, so guessing stays visible.
		d.auditUnauth("login", name, "locked")
		return nil, fmt.Errorf("login %s: %w", name, hsmcore.ErrAuth)
	}
	if !ok {
		d.loginFailed(name, u)
		return nil, fmt.Errorf("login %s: %w", auditName(name), hsmcore.ErrAuth)
	}
	if err := d.loginSucceeded(u); err != nil {
		d.audit(name, "login", "", "error")
		return nil, fmt.Errorf("login %s: %w", name, err)
	}
	if err := d.audit(name, "login", "", "ok"); err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	return &Session{d: d, user: name, role: u.Role, rec: u}, nil
}

// auditName makes an untrusted user name safe to record: names that are
// not valid identifiers are replaced.
func auditName(name string) string {
	if hsmcore.CheckName(name) != nil {
		return "(invalid name)"
	}
	return name
}

// User returns the session's user name and role.
func (s *Session) User() hsmcore.UserInfo { return hsmcore.UserInfo{Name: s.user, Role: s.role} }

// Device returns the device the session is on.
func (s *Session) Device() *Device { return s.d }

// check verifies, with d.mu held, that the session's user still exists
// with its role and, if roles is not empty, has one of them.
func (s *Session) check(op string, roles ...hsmcore.Role) error {
	if s.ended || s.d.st.Users[s.user] != s.rec {
		s.d.audit(s.user, op, "", "denied")
		return fmt.Errorf("%s: session no longer valid: %w", op, hsmcore.ErrPermission)
	}
	if len(roles) > 0 && !slices.Contains(roles, s.role) {
		s.d.audit(s.user, op, "", "denied")
		return fmt.Errorf("%s: %s may not do this: %w", op, s.role, hsmcore.ErrPermission)
	}
	return nil
}

// Logout ends the session and destroys its session (non-token) keys.
func (s *Session) Logout() {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if s.ended {
		return
	}
	s.ended = true
	var next *contents
	for h, k := range d.st.Keys.Session() {
		if k.session == s {
			if next == nil {
				next = d.st.clone()
			}
			next.Keys.Delete(h)
		}
	}
	if next != nil {
		d.st = next // session keys are never on disk: nothing to seal
	}
	d.audit(s.user, "logout", "", "ok")
}

// CreateUser adds a user. Crypto officers only.
func (s *Session) CreateUser(name string, role hsmcore.Role, password string) error {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("user.create", hsmcore.CryptoOfficer); err != nil {
		return err
	}
	if d.st.Users[name] != nil {
		return fmt.Errorf("create user %s: %w", name, hsmcore.ErrExists)
	}
	if len(d.st.Users) >= MaxUsers {
		return fmt.Errorf("create user %s: %w", name, hsmcore.ErrFull)
	}
	u, err := d.newUser(name, role, password)
	if err != nil {
		return fmt.Errorf("create user: %w", err)
	}
	if err := s.requireQuorum("user.create", hsmcore.UserCreateObject(name, role)); err != nil {
		return err
	}
	next := d.st.clone()
	next.Users[name] = u
	if err := d.commitChange(next, s, "user.create", userObject(name)); err != nil {
		d.audit(s.user, "user.create", name+" "+string(role), "error")
		return fmt.Errorf("create user %s: %w", name, err)
	}
	return d.audit(s.user, "user.create", name+" "+string(role), "ok")
}

// DeleteUser removes a user. Crypto officers only; an officer cannot delete
// itself, nor a user who still owns keys.
func (s *Session) DeleteUser(name string) error {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("user.delete", hsmcore.CryptoOfficer); err != nil {
		return err
	}
	victim := d.st.Users[name]
	if victim == nil {
		return fmt.Errorf("delete user %s: %w", auditName(name), hsmcore.ErrNotFound)
	}
	if name == s.user {
		return fmt.Errorf("delete user %s: cannot delete yourself: %w", name, hsmcore.ErrInvalid)
	}
	next := d.st.clone()
	if err := removeUser(next, name); err != nil {
		return err
	}
	if err := s.requireQuorum("user.delete", hsmcore.UserDeleteObject(name, victim.Role)); err != nil {
		return err
	}
	if err := d.commitChange(next, s, "user.delete", userObject(name)); err != nil {
		d.audit(s.user, "user.delete", name, "error")
		return fmt.Errorf("delete user %s: %w", name, err)
	}
	return d.audit(s.user, "user.delete", name, "ok")
}

// ChangePassword sets a new password for the session's own user.
func (s *Session) ChangePassword(password string) error {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("user.password"); err != nil {
		return err
	}
	u, err := d.newUser(s.user, s.role, password)
	if err != nil {
		return fmt.Errorf("change password: %w", err)
	}
	u.SigningKey = s.rec.SigningKey
	next := d.st.clone()
	next.Users[s.user] = u
	if err := d.commitChange(next, s, "user.password", userObject(s.user)); err != nil {
		d.audit(s.user, "user.password", s.user, "error")
		return fmt.Errorf("change password: %w", err)
	}
	s.rec = u // this session goes on; the user's other sessions end
	return d.audit(s.user, "user.password", s.user, "ok")
}

// Users lists the users, sorted by name.
func (s *Session) Users() ([]hsmcore.UserInfo, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("user.list"); err != nil {
		return nil, err
	}
	return d.st.users(), nil
}

// users lists c's users by name.
func (c *contents) users() []hsmcore.UserInfo {
	var out []hsmcore.UserInfo
	for _, u := range c.Users {
		out = append(out, hsmcore.UserInfo{Name: u.Name, Role: u.Role})
	}
	slices.SortFunc(out, func(a, b hsmcore.UserInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Inventory returns the users and token keys the device holds, from one
// state: what a backup's manifest records. The keys are listed if there
// are at most maxKeys, else only counted. Crypto officers only.
func (s *Session) Inventory(maxKeys int) (hsmcore.Inventory, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("key.list", hsmcore.CryptoOfficer); err != nil {
		return hsmcore.Inventory{}, err
	}
	inv := hsmcore.Inventory{Users: d.st.users(), KeyCount: d.st.Keys.Tokens()}
	if inv.KeyCount > maxKeys {
		return inv, nil
	}
	inv.Keys = make([]hsmcore.KeyRef, 0, inv.KeyCount)
	for h, kcv := range d.st.Keys.CheckValues() {
		inv.Keys = append(inv.Keys, hsmcore.KeyRef{Handle: h, KCV: kcv})
	}
	slices.SortFunc(inv.Keys, func(a, b hsmcore.KeyRef) int { return cmp.Compare(a.Handle, b.Handle) })
	return inv, nil
}
