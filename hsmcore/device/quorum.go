package device

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
)

// QuorumOps are the operations a quorum policy can protect. A token's
// object names every parameter of the call it approves, built by the
// hsmcore function named with each.
var QuorumOps = []string{
	"user.create",  // hsmcore.UserCreateObject: name and role
	"user.delete",  // hsmcore.UserDeleteObject: name and current role
	"key.trust",    // hsmcore.KeyTrustObject: handle and value
	"image.export", // hsmcore.ImageExportObject: cluster id (or serial)
	"image.import", // hsmcore.ImageImportObject: SHA-256 of the image
	"quorum.set",   // hsmcore.QuorumSetObject: operation and new M
	"member.add",   // the new member's serial (its certificate is bound to it)
	// hsmcore.ZeroizeObject: the device's serial. A zeroization needs at
	// least as many approvals as any operation the policy protects
	// (Session.Zeroize).
	"device.zeroize",
}

// Quorum returns the device's quorum policy.
func (d *Device) Quorum() quorum.Policy {
	d.mu.Lock()
	defer d.mu.Unlock()
	return quorum.Policy{Ops: maps.Clone(d.st.Quorum.Ops)}
}

// RegisterSigningKey sets the Ed25519 public key with which the session's
// crypto officer approves quorum tokens.
func (s *Session) RegisterSigningKey(pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("register signing key: not an Ed25519 public key: %w", hsmcore.ErrInvalid)
	}
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("quorum.key", hsmcore.CryptoOfficer); err != nil {
		return err
	}
	u := *s.rec
	u.SigningKey = bytes.Clone(pub)
	next := d.st.clone()
	next.Users[s.user] = &u
	if err := d.commitChange(next, s, "quorum.key", userObject(s.user)); err != nil {
		d.audit(s.user, "quorum.key", s.user, "error")
		return fmt.Errorf("register signing key: %w", err)
	}
	s.rec = &u
	return d.audit(s.user, "quorum.key", s.user, "ok")
}

// SetQuorum makes op need m approvals from crypto officers (2 to 8), or
// none when m is 0. m may not exceed the number of officers with a
// registered signing key. Crypto officers only; itself under quorum once
// "quorum.set" is protected.
func (s *Session) SetQuorum(op string, m int) error {
	if !slices.Contains(QuorumOps, op) {
		return fmt.Errorf("set quorum: %q is not an operation quorum protects: %w", op, hsmcore.ErrInvalid)
	}
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("quorum.set", hsmcore.CryptoOfficer); err != nil {
		return err
	}
	ops := maps.Clone(d.st.Quorum.Ops)
	if ops == nil {
		ops = map[string]int{}
	}
	if m == 0 {
		delete(ops, op)
	} else {
		ops[op] = m
	}
	p := quorum.Policy{Ops: ops}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("set quorum: %v: %w", err, hsmcore.ErrInvalid)
	}
	if n := len(d.officerKeys()); m > n {
		return fmt.Errorf("set quorum: %d approvals needed but %d officers have signing keys: %w", m, n, hsmcore.ErrInvalid)
	}
	if err := s.requireQuorum("quorum.set", hsmcore.QuorumSetObject(op, m)); err != nil {
		return err
	}
	next := d.st.clone()
	next.Quorum = p
	if err := d.commitChange(next, s, "quorum.set", quorumObject); err != nil {
		d.audit(s.user, "quorum.set", hsmcore.QuorumSetObject(op, m), "error")
		return fmt.Errorf("set quorum: %w", err)
	}
	return d.audit(s.user, "quorum.set", hsmcore.QuorumSetObject(op, m), "ok")
}

// officerKeys returns the crypto officers' registered signing keys. The
// caller holds d.mu.
func (d *Device) officerKeys() map[string]ed25519.PublicKey { return d.st.officerKeys() }

// officerKeys are the quorum signing keys of c's crypto officers.
func (c *contents) officerKeys() map[string]ed25519.PublicKey {
	keys := map[string]ed25519.PublicKey{}
	for name, u := range c.Users {
		if u.Role == hsmcore.CryptoOfficer && len(u.SigningKey) == ed25519.PublicKeySize {
			keys[name] = ed25519.PublicKey(u.SigningKey)
		}
	}
	return keys
}

// QuorumToken issues a token for op on object, for crypto officers to
// approve. On a cluster member it also returns the token sealed under the
// cluster key, which the other members adopt (AdoptQuorumToken) so that
// one set of approvals serves the whole cluster.
func (s *Session) QuorumToken(op, object string) (quorum.Token, []byte, error) {
	if !slices.Contains(QuorumOps, op) {
		return quorum.Token{}, nil, fmt.Errorf("quorum token: %q is not an operation quorum protects: %w", op, hsmcore.ErrInvalid)
	}
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("quorum.token"); err != nil {
		return quorum.Token{}, nil, err
	}
	tok, err := d.tracker.Issue(op, object)
	if err != nil {
		return quorum.Token{}, nil, fmt.Errorf("quorum token: %v: %w", err, hsmcore.ErrInvalid)
	}
	var sealed []byte
	if d.st.clusterInitialized() {
		b, err := json.Marshal(tok)
		if err != nil {
			return quorum.Token{}, nil, fmt.Errorf("quorum token: %w", err)
		}
		if sealed, err = d.sealSync(syncRecord{Token: b}); err != nil {
			return quorum.Token{}, nil, fmt.Errorf("quorum token: %w", err)
		}
	}
	if err := d.audit(s.user, "quorum.token", op+" "+object, "ok"); err != nil {
		return quorum.Token{}, nil, err
	}
	return tok, sealed, nil
}

// AdoptQuorumToken accepts a token another member of the cluster issued.
func (s *Session) AdoptQuorumToken(sealed []byte) (quorum.Token, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("quorum.adopt"); err != nil {
		return quorum.Token{}, err
	}
	r, err := d.openSync(s, sealed)
	if err != nil {
		return quorum.Token{}, fmt.Errorf("adopt quorum token: %w", err)
	}
	var tok quorum.Token
	if r.Token == nil || json.Unmarshal(r.Token, &tok) != nil {
		return quorum.Token{}, fmt.Errorf("adopt quorum token: %w", hsmcore.ErrMalformed)
	}
	if err := d.tracker.Adopt(tok); err != nil {
		return quorum.Token{}, fmt.Errorf("adopt quorum token: %v: %w", err, hsmcore.ErrQuorum)
	}
	return tok, nil
}

// Approve attaches approvals of token id to the session; the next
// operation that needs quorum consumes them.
func (s *Session) Approve(id [16]byte, approvals []quorum.Approval) {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	s.approval = &approval{id: id, approvals: slices.Clone(approvals)}
}

type approval struct {
	id        [16]byte
	approvals []quorum.Approval
}

// requireQuorum consumes the session's approvals if the policy protects
// op; the caller holds d.mu and has made every other check, so a refused
// operation never spends a token.
func (s *Session) requireQuorum(op, object string) error {
	return s.requireQuorumOf(op, object, s.d.st.Quorum.Required(op))
}

// requireQuorumOf is requireQuorum with m approvals needed (none if 0).
func (s *Session) requireQuorumOf(op, object string, m int) error {
	d := s.d
	if m == 0 {
		return nil
	}
	a := s.approval
	s.approval = nil
	if a == nil {
		d.audit(s.user, op, auditField(object), "quorum")
		return fmt.Errorf("%s: needs %d approvals: %w", op, m, hsmcore.ErrQuorum)
	}
	tok, _ := d.tracker.Lookup(a.id)
	if err := d.tracker.Consume(a.id, op, object, m, a.approvals, d.officerKeys()); err != nil {
		d.audit(s.user, op, auditField(object), "quorum")
		return fmt.Errorf("%s: %v: %w", op, err, hsmcore.ErrQuorum)
	}
	// On disk before the operation commits: a restart, even a crash
	// right after, does not let the token's sealed copy be adopted again.
	if err := d.saveSpent(); err != nil {
		d.audit(s.user, op, auditField(object), "error")
		return fmt.Errorf("%s: %w", op, err)
	}
	s.proof = &quorumProof{Token: tok, Approvals: a.approvals}
	return nil
}
