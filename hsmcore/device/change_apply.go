package device

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
	"github.com/hsmbackup/hsmbackup/internal/strictjson"
)

// applyChange checks that the session's user may make change m, with the
// new record plain, on this member, and applies it to next: the same
// rules as the operation itself (role, ownership, quorum under this
// member's policy, limits), so that no change made elsewhere does what
// this member would refuse. The caller holds d.mu.
func (s *Session) applyChange(next *contents, m *changeMeta, plain []byte) error {
	switch {
	case strings.HasPrefix(m.Object, "user:"):
		return s.applyUser(next, m, m.Object[len("user:"):], plain)
	case strings.HasPrefix(m.Object, "key:"):
		h, _ := strconv.ParseUint(m.Object[len("key:"):], 10, 64) // checked by parseChange
		return s.applyKey(next, m, h, plain)
	case m.Object == quorumObject && m.Op == "quorum.set":
		return s.applyQuorum(next, m, plain)
	case m.Object == membersObject && m.Op == "member.add":
		return s.applyMembers(next, m, plain)
	}
	return fmt.Errorf("%s is not a change of %s: %w", m.Op, m.Object, hsmcore.ErrInvalid)
}

func (s *Session) requireRole(op string, role hsmcore.Role) error {
	if s.role != role {
		return fmt.Errorf("%s: %s may not do this: %w", op, s.role, hsmcore.ErrPermission)
	}
	return nil
}

// importQuorum checks the approvals a change carries against this
// member's policy and officers' keys in c (the state the changes before
// it left), and spends them here too.
func (s *Session) importQuorum(c *contents, op, object string, proof *quorumProof) error {
	d := s.d
	m := c.Quorum.Required(op)
	if m == 0 {
		return nil
	}
	if proof == nil {
		return fmt.Errorf("%s: needs %d approvals, the change carries none: %w", op, m, hsmcore.ErrQuorum)
	}
	if err := d.tracker.Adopt(proof.Token); err != nil {
		return fmt.Errorf("%s: %v: %w", op, err, hsmcore.ErrQuorum)
	}
	if err := d.tracker.Consume(proof.Token.ID, op, object, m, proof.Approvals, c.officerKeys()); err != nil {
		return fmt.Errorf("%s: %v: %w", op, err, hsmcore.ErrQuorum)
	}
	// Spent here too, across restarts: the token cannot be used again on
	// this member, by a change or directly.
	if err := d.saveSpent(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

func (s *Session) applyUser(next *contents, m *changeMeta, name string, plain []byte) error {
	old := next.Users[name]
	if m.Op == "user.delete" {
		if err := s.requireRole(m.Op, hsmcore.CryptoOfficer); err != nil {
			return err
		}
		if old == nil || name == s.user {
			return fmt.Errorf("delete user %s: not another existing user: %w", name, hsmcore.ErrInvalid)
		}
		if err := removeUser(next, name); err != nil {
			return err
		}
		return s.importQuorum(next, "user.delete", hsmcore.UserDeleteObject(name, old.Role), m.Proof)
	}
	u := new(userRecord)
	if err := strictjson.Unmarshal(plain, u); err != nil {
		return fmt.Errorf("user record: %v: %w", err, hsmcore.ErrMalformed)
	}
	if err := u.check(); err != nil || u.Name != name {
		return fmt.Errorf("user record: %v: %w", err, hsmcore.ErrMalformed)
	}
	switch m.Op {
	case "user.create":
		if err := s.requireRole(m.Op, hsmcore.CryptoOfficer); err != nil {
			return err
		}
		if old != nil {
			return fmt.Errorf("create user %s: %w", name, hsmcore.ErrExists)
		}
		if len(u.SigningKey) != 0 {
			return fmt.Errorf("create user %s: a new user has no signing key: %w", name, hsmcore.ErrInvalid)
		}
		if len(next.Users) >= MaxUsers {
			return fmt.Errorf("create user %s: %w", name, hsmcore.ErrFull)
		}
		if err := s.importQuorum(next, "user.create", hsmcore.UserCreateObject(name, u.Role), m.Proof); err != nil {
			return err
		}
	case "user.password", "quorum.key":
		if name != s.user || old == nil || u.Role != old.Role {
			return fmt.Errorf("%s: a user changes only its own record: %w", m.Op, hsmcore.ErrPermission)
		}
		samePassword := bytes.Equal(u.Salt, old.Salt) && bytes.Equal(u.Hash, old.Hash) && u.Iterations == old.Iterations
		sameKey := bytes.Equal(u.SigningKey, old.SigningKey)
		if m.Op == "user.password" && !sameKey || m.Op == "quorum.key" && (!samePassword || len(u.SigningKey) == 0) {
			return fmt.Errorf("%s changes more than it may: %w", m.Op, hsmcore.ErrPermission)
		}
	default:
		return fmt.Errorf("%s is not a change of a user: %w", m.Op, hsmcore.ErrInvalid)
	}
	next.Users[name] = u
	return nil
}

// removeUser deletes user name from c, unsharing the keys shared with it;
// a user who owns keys cannot be deleted.
func removeUser(c *contents, name string) error {
	for h, k := range c.Keys.All() {
		if k.Owner == name {
			return fmt.Errorf("delete user %s: still owns key %d: %w", name, h, hsmcore.ErrInvalid)
		}
		if slices.Contains(k.SharedWith, name) {
			nk := k.clone() // a session key's record is shared with the state before
			nk.SharedWith = slices.DeleteFunc(nk.SharedWith, func(u string) bool { return u == name })
			if err := c.Keys.Set(h, nk); err != nil {
				return fmt.Errorf("delete user %s: %w", name, err)
			}
		}
	}
	delete(c.Users, name)
	return nil
}

func (s *Session) applyKey(next *contents, m *changeMeta, h uint64, plain []byte) error {
	old := next.Keys.Get(h)
	if old != nil && !old.Token {
		old = nil
	}
	if m.Op == "key.delete" {
		if err := s.requireRole(m.Op, hsmcore.CryptoUser); err != nil {
			return err
		}
		if old == nil || old.Owner != s.user {
			return fmt.Errorf("delete key %d: not a key of yours: %w", h, hsmcore.ErrPermission)
		}
		next.Keys.Delete(h)
		return nil
	}
	k := new(keyRecord)
	if err := strictjson.Unmarshal(plain, k); err != nil || k.Handle != h {
		return fmt.Errorf("key record: %v: %w", err, hsmcore.ErrMalformed)
	}
	switch m.Op {
	case "key.create", "key.unwrap":
		if err := s.requireRole(m.Op, hsmcore.CryptoUser); err != nil {
			return err
		}
		if old != nil || next.Keys.Get(h) != nil {
			return fmt.Errorf("key %d exists here: %w", h, hsmcore.ErrConflict)
		}
		if k.Owner != s.user || len(k.SharedWith) > 0 || k.Trusted || k.Local != (m.Op == "key.create") {
			return fmt.Errorf("%s: key %d: a new key is its creator's, unshared, untrusted: %w", m.Op, h, hsmcore.ErrPermission)
		}
		if next.Keys.Len() >= s.d.capacity {
			return fmt.Errorf("%s: %w", m.Op, hsmcore.ErrFull)
		}
		if next.NextHandle <= h {
			next.NextHandle = h + 1
		}
	case "key.attr", "key.share", "key.trust":
		if old == nil {
			return fmt.Errorf("%s: key %d: %w", m.Op, h, hsmcore.ErrNotFound)
		}
		role := hsmcore.CryptoUser
		if m.Op == "key.trust" {
			role = hsmcore.CryptoOfficer
		}
		if err := s.requireRole(m.Op, role); err != nil {
			return err
		}
		if role == hsmcore.CryptoUser && old.Owner != s.user {
			return fmt.Errorf("%s: key %d: only its owner may do this: %w", m.Op, h, hsmcore.ErrPermission)
		}
		if !changesOnly(old, k, m.Op) {
			return fmt.Errorf("%s: key %d: the change touches attributes %s does not set: %w", m.Op, h, m.Op, hsmcore.ErrPermission)
		}
		if m.Op == "key.attr" && old.WrapWithTrusted && !k.WrapWithTrusted {
			return fmt.Errorf("key %d: wrap-with-trusted cannot be cleared once set: %w", h, hsmcore.ErrPermission)
		}
		if m.Op == "key.trust" {
			if err := s.importQuorum(next, "key.trust", hsmcore.KeyTrustObject(h, k.Trusted), m.Proof); err != nil {
				return err
			}
		}
		next.Keys.Delete(h)
	default:
		return fmt.Errorf("%s is not a change of a key: %w", m.Op, hsmcore.ErrInvalid)
	}
	if err := k.check(next); err != nil {
		return fmt.Errorf("%s: %v: %w", m.Op, err, hsmcore.ErrMalformed)
	}
	if err := next.Keys.Set(h, k); err != nil {
		return fmt.Errorf("%s: %v: %w", m.Op, err, hsmcore.ErrMalformed)
	}
	return nil
}

// changesOnly reports whether k differs from old only in what op sets.
func changesOnly(old, k *keyRecord, op string) bool {
	c := k.clone()
	switch op {
	case "key.attr":
		c.Label, c.ID = old.Label, old.ID
		c.Encrypt, c.Decrypt, c.Sign, c.Verify, c.Wrap, c.Unwrap = old.Encrypt, old.Decrypt, old.Sign, old.Verify, old.Wrap, old.Unwrap
		c.WrapWithTrusted = old.WrapWithTrusted
	case "key.share":
		c.SharedWith = old.SharedWith
	case "key.trust":
		c.Trusted = old.Trusted
	}
	a, err1 := json.Marshal(c)
	b, err2 := json.Marshal(old)
	return err1 == nil && err2 == nil && bytes.Equal(a, b)
}

func (s *Session) applyQuorum(next *contents, m *changeMeta, plain []byte) error {
	if err := s.requireRole(m.Op, hsmcore.CryptoOfficer); err != nil {
		return err
	}
	var p quorum.Policy
	if err := strictjson.Unmarshal(plain, &p); err != nil {
		return fmt.Errorf("quorum policy: %v: %w", err, hsmcore.ErrMalformed)
	}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("quorum policy: %v: %w", err, hsmcore.ErrInvalid)
	}
	var changed []string
	for _, op := range QuorumOps {
		if p.Required(op) != next.Quorum.Required(op) {
			changed = append(changed, op)
		}
		if p.Required(op) > len(next.officerKeys()) {
			return fmt.Errorf("quorum policy: %s needs more approvals than officers have keys: %w", op, hsmcore.ErrInvalid)
		}
	}
	if len(p.Ops) > len(QuorumOps) || len(changed) > 1 {
		return fmt.Errorf("quorum policy: a change sets one operation: %w", hsmcore.ErrInvalid)
	}
	if len(changed) == 1 {
		if err := s.importQuorum(next, "quorum.set", hsmcore.QuorumSetObject(changed[0], p.Required(changed[0])), m.Proof); err != nil {
			return err
		}
	}
	next.Quorum = quorum.Policy{Ops: maps.Clone(p.Ops)}
	return nil
}

func (s *Session) applyMembers(next *contents, m *changeMeta, plain []byte) error {
	if err := s.requireRole("member.add", hsmcore.CryptoOfficer); err != nil {
		return err
	}
	var ms []memberRecord
	if err := strictjson.Unmarshal(plain, &ms); err != nil {
		return fmt.Errorf("member list: %v: %w", err, hsmcore.ErrMalformed)
	}
	if err := checkMembers(ms); err != nil {
		return err
	}
	if len(ms) != len(next.Members)+1 {
		return fmt.Errorf("member list: a change adds one member: %w", hsmcore.ErrInvalid)
	}
	var added string
	for _, nm := range ms {
		if old := findMember(next.Members, nm.Serial); old == nil {
			added = nm.Serial
		} else if !bytes.Equal(nm.Key, old.Key) {
			return fmt.Errorf("member list: a change adds one member and keeps the others: %w", hsmcore.ErrInvalid)
		}
	}
	if err := s.importQuorum(next, "member.add", added, m.Proof); err != nil {
		return err
	}
	next.Members = ms
	return nil
}

// maxMembers bounds the member list (CloudHSM: 28 HSMs per cluster; a few
// more while members are replaced).
const maxMembers = 64

func checkMembers(ms []memberRecord) error {
	if len(ms) > maxMembers {
		return fmt.Errorf("member list of %d: %w", len(ms), hsmcore.ErrMalformed)
	}
	for i, m := range ms {
		if hsmcore.CheckName(m.Serial) != nil || findMember(ms[:i], m.Serial) != nil {
			return fmt.Errorf("member list: serial %q: %w", m.Serial, hsmcore.ErrMalformed)
		}
		if _, err := m.publicKey(); err != nil {
			return fmt.Errorf("member list: %v: %w", err, hsmcore.ErrMalformed)
		}
	}
	return nil
}

func findMember(ms []memberRecord, serial string) *memberRecord {
	for i := range ms {
		if ms[i].Serial == serial {
			return &ms[i]
		}
	}
	return nil
}
