package device

import (
	"bytes"
	"cmp"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
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

// Members of a cluster replicate state as change records. Every change a
// member makes to an object (a user, a key, the quorum policy, the member
// list) is stamped with the member's serial and its next sequence number,
// and remembers the stamp it replaced, who made it and the quorum
// approvals it carried. A deleted object keeps its last stamp as a
// tombstone.
//
// A change travels as a record that names the cluster, the object, the
// stamps and the member it is for, carries the object's new record
// encrypted to that member's device key, and is signed by the device key
// of the member that made it. A member applies a change only if the
// signer is in its member list, the change is the next one it expects
// from that signer (no gap, no replay), the object still has the stamp
// the change replaced (a concurrent or older change is refused, never
// merged), and the importing session's user could make the same change on
// this member: its role, its ownership, and the quorum this member's
// policy asks, from the approvals the change carries. The importer's own
// vector of sequence numbers (Version) then says how new its state is.

// stamp names one change: the member that made it and its sequence number
// there.
type stamp struct {
	Origin string `json:"origin"`
	Seq    uint64 `json:"seq"`
}

// changeMeta is what a member keeps of the last change of an object.
type changeMeta struct {
	Object string       `json:"object"`
	Stamp  stamp        `json:"stamp"`
	Prev   *stamp       `json:"prev,omitempty"`
	Actor  string       `json:"actor"`
	Op     string       `json:"op"`
	Proof  *quorumProof `json:"quorum,omitempty"`
}

// quorumProof is the token and approvals a change consumed.
type quorumProof struct {
	Token     quorum.Token      `json:"token"`
	Approvals []quorum.Approval `json:"approvals"`
}

// memberRecord is one member of the cluster: its serial and the public
// half of its device key, which signs its changes and receives the
// changes of others.
type memberRecord struct {
	Serial string `json:"serial"`
	Key    []byte `json:"device_key"` // PKIX DER, ECDSA P-384
}

func (m memberRecord) publicKey() (*ecdsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(m.Key)
	if err != nil {
		return nil, err
	}
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("member %s: device key is not ECDSA", m.Serial)
	}
	return pub, nil
}

// Object names.
func userObject(name string) string { return "user:" + name }
func keyObject(h uint64) string     { return "key:" + strconv.FormatUint(h, 10) }

const (
	quorumObject  = "quorum"
	membersObject = "members"
)

// checkObjectName validates an object name as stored or received.
func checkObjectName(o string) error {
	switch {
	case o == quorumObject || o == membersObject:
		return nil
	case strings.HasPrefix(o, "user:"):
		return hsmcore.CheckName(o[len("user:"):])
	case strings.HasPrefix(o, "key:"):
		h, err := strconv.ParseUint(o[len("key:"):], 10, 64)
		if err != nil || h == 0 || h >= firstSessionHandle || keyObject(h) != o {
			return fmt.Errorf("object %q", o)
		}
		return nil
	}
	return fmt.Errorf("object %q", o)
}

func (m *changeMeta) check() error {
	if err := checkObjectName(m.Object); err != nil {
		return err
	}
	if hsmcore.CheckName(m.Stamp.Origin) != nil || m.Stamp.Seq == 0 {
		return fmt.Errorf("change of %s: bad stamp", m.Object)
	}
	if m.Prev != nil && (hsmcore.CheckName(m.Prev.Origin) != nil || m.Prev.Seq == 0) {
		return fmt.Errorf("change of %s: bad previous stamp", m.Object)
	}
	if m.Actor != "" && hsmcore.CheckName(m.Actor) != nil {
		return fmt.Errorf("change of %s: bad actor", m.Object)
	}
	if !slices.Contains(changeOps, m.Op) {
		return fmt.Errorf("change of %s: operation %q", m.Object, m.Op)
	}
	return nil
}

// changeOps are the operations a change record can carry.
var changeOps = []string{
	"user.create", "user.delete", "user.password", "quorum.key",
	"key.create", "key.unwrap", "key.delete", "key.attr", "key.share", "key.trust",
	"quorum.set", "member.add",
}

// commitChange records a change of object made in next (see record) and
// commits next. The caller holds d.mu, and audits a failed commit (a full
// or failing disk) as an error of its operation, so that the log shows
// what was attempted.
func (d *Device) commitChange(next *contents, s *Session, op, object string) error {
	if err := d.record(next, s, op, object); err != nil {
		return err
	}
	return d.commit(next)
}

// record stamps a change of object made in next by the session's user
// (s nil: by the device itself), with the quorum approvals the session
// consumed for op, if it did. The caller holds d.mu.
func (d *Device) record(next *contents, s *Session, op, object string) error {
	seq := next.Clock[d.id.Serial] + 1
	next.Clock[d.id.Serial] = seq
	m := &changeMeta{Object: object, Stamp: stamp{Origin: d.id.Serial, Seq: seq}, Op: op}
	if old := next.Changes.Get(object); old != nil {
		prev := old.Stamp
		m.Prev = &prev
	}
	if s != nil {
		m.Actor = s.user
		if s.proof != nil && s.proof.Token.Op == op {
			m.Proof = s.proof
		}
		s.proof = nil // approvals of an operation that is not replicated (image export) go nowhere
	}
	return next.Changes.Set(m)
}

// State returns the device's state digest (StateDigest) and version:
// for each member that made changes, the sequence number of the last one
// this device holds. A state whose version is at least another's for
// every member holds every change the other holds.
func (d *Device) State() (digest string, version map[string]uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	sum := d.stateDigest()
	return hex.EncodeToString(sum[:]), maps.Clone(d.st.Clock)
}

// changeBody is the signed part of a change record.
type changeBody struct {
	Cluster string     `json:"cluster"`
	To      string     `json:"to"` // the serial of the member it is for
	Meta    changeMeta `json:"change"`
	Sealed  []byte     `json:"sealed,omitempty"` // the new record, encrypted to To; none for a delete
}

// changeEnvelope is a change record as it travels.
type changeEnvelope struct {
	Body      []byte `json:"body"`      // changeBody as JSON
	Signature []byte `json:"signature"` // ECDSA P-384 over SHA-384(changeDomain || Body), ASN.1
}

var changeDomain = []byte("hsmcore change v2\n")

const maxChanges = 256 // per ExportChanges answer

// ExportChanges returns the changes this device made after its sequence
// number since, in order, as records for the member with serial to, at
// most maxChanges of them, and the sequence number of the last one. Only
// a current member of the cluster can open them: each carries its
// object's record encrypted to that member's device key. If a change
// after since was itself replaced by a later change of the same object,
// the other member can no longer be brought up to date change by change
// (ErrConflict): it needs a re-sync by image.
func (s *Session) ExportChanges(since uint64, to string) ([][]byte, uint64, error) {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("sync.export"); err != nil {
		return nil, 0, err
	}
	if !d.st.clusterInitialized() {
		return nil, 0, fmt.Errorf("export changes: device is not a member of an initialized cluster: %w", hsmcore.ErrPermission)
	}
	dest := d.st.member(to)
	if dest == nil || to == d.id.Serial {
		d.audit(s.user, "sync.export", auditField(to), "denied")
		return nil, 0, fmt.Errorf("export changes: %s is not another member of cluster %s: %w", auditName(to), d.st.clusterID(), hsmcore.ErrPermission)
	}
	destKey, err := dest.publicKey()
	if err != nil {
		return nil, 0, fmt.Errorf("export changes: %w", err)
	}
	var metas []*changeMeta
	for o, st := range d.st.Changes.Stamps() { // decode only the changes sent
		if st.Origin == d.id.Serial && st.Seq > since {
			metas = append(metas, d.st.Changes.Get(o))
		}
	}
	slices.SortFunc(metas, func(a, b *changeMeta) int { return cmp.Compare(a.Stamp.Seq, b.Stamp.Seq) })
	last := d.st.Clock[d.id.Serial]
	if since > last {
		return nil, 0, fmt.Errorf("export changes: since %d, but the last change is %d: %w", since, last, hsmcore.ErrInvalid)
	}
	for i, m := range metas {
		if m.Stamp.Seq != since+uint64(i)+1 {
			return nil, 0, fmt.Errorf("export changes: change %d was replaced by a later one; re-sync by image: %w", since+uint64(i)+1, hsmcore.ErrConflict)
		}
	}
	if uint64(len(metas)) != last-since {
		return nil, 0, fmt.Errorf("export changes: changes up to %d are no longer held; re-sync by image: %w", last, hsmcore.ErrConflict)
	}
	if len(metas) > maxChanges {
		metas = metas[:maxChanges]
	}
	out := make([][]byte, 0, len(metas))
	upto := since
	for _, m := range metas {
		rec, err := d.sealChange(m, to, destKey)
		if err != nil {
			return nil, 0, fmt.Errorf("export changes: %w", err)
		}
		out = append(out, rec)
		upto = m.Stamp.Seq
	}
	if len(out) > 0 {
		if err := d.audit(s.user, "sync.export", fmt.Sprintf("%s %d..%d", to, since+1, upto), "ok"); err != nil {
			return nil, 0, err
		}
	}
	return out, upto, nil
}

// objectRecord returns the JSON of object's current record, or nil if it
// was deleted. The caller holds d.mu.
func (c *contents) objectRecord(object string) ([]byte, error) {
	var v any
	switch {
	case object == quorumObject:
		v = c.Quorum
	case object == membersObject:
		v = c.Members
	case strings.HasPrefix(object, "user:"):
		if u := c.Users[object[len("user:"):]]; u != nil {
			v = u
		}
	default:
		h, _ := strconv.ParseUint(object[len("key:"):], 10, 64)
		if k := c.Keys.Get(h); k != nil {
			v = k
		}
	}
	if v == nil {
		return nil, nil
	}
	return json.Marshal(v)
}

func (d *Device) sealChange(m *changeMeta, to string, destKey *ecdsa.PublicKey) ([]byte, error) {
	body := changeBody{Cluster: d.st.clusterID(), To: to, Meta: *m}
	plain, err := d.st.objectRecord(m.Object)
	if err != nil {
		return nil, err
	}
	if plain != nil {
		defer clear(plain)
		if body.Sealed, err = sealTo(destKey, plain, changeAAD(&body)); err != nil {
			return nil, err
		}
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	sig, err := ecdsa.SignASN1(rand.Reader, d.deviceKey, changeDigest(b))
	if err != nil {
		return nil, err
	}
	return json.Marshal(changeEnvelope{Body: b, Signature: sig})
}

func changeDigest(body []byte) []byte {
	h := sha512.New384()
	h.Write(changeDomain)
	h.Write(body)
	return h.Sum(nil)
}

// changeAAD binds a sealed record to the change that carries it.
func changeAAD(b *changeBody) []byte {
	return fmt.Appendf(nil, "%s\x00%s\x00%s\x00%s\x00%d", b.Cluster, b.To, b.Meta.Object, b.Meta.Stamp.Origin, b.Meta.Stamp.Seq)
}

// sealTo encrypts plain to an ECDSA P-384 public key: ephemeral ECDH,
// HKDF-SHA-384, AES-256-GCM under a key used once (so a zero nonce). The
// result is the ephemeral public key, uncompressed, then the ciphertext.
func sealTo(pub *ecdsa.PublicKey, plain, aad []byte) ([]byte, error) {
	recipient, err := pub.ECDH()
	if err != nil {
		return nil, err
	}
	eph, err := ecdh.P384().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	shared, err := eph.ECDH(recipient)
	if err != nil {
		return nil, err
	}
	key, err := sealKeyFrom(shared, eph.PublicKey().Bytes(), recipient.Bytes())
	if err != nil {
		return nil, err
	}
	g := newGCM(key)
	return g.Seal(eph.PublicKey().Bytes(), make([]byte, g.NonceSize()), plain, aad), nil
}

// openSealed is the reverse of sealTo with the device key.
func openSealed(priv *ecdsa.PrivateKey, sealed, aad []byte) ([]byte, error) {
	const pubLen = 97
	if len(sealed) < pubLen+16 {
		return nil, hsmcore.ErrMalformed
	}
	me, err := priv.ECDH()
	if err != nil {
		return nil, err
	}
	eph, err := ecdh.P384().NewPublicKey(sealed[:pubLen])
	if err != nil {
		return nil, hsmcore.ErrMalformed
	}
	shared, err := me.ECDH(eph)
	if err != nil {
		return nil, hsmcore.ErrMalformed
	}
	key, err := sealKeyFrom(shared, sealed[:pubLen], me.PublicKey().Bytes())
	if err != nil {
		return nil, err
	}
	g := newGCM(key)
	plain, err := g.Open(nil, make([]byte, g.NonceSize()), sealed[pubLen:], aad)
	if err != nil {
		return nil, hsmcore.ErrTampered
	}
	return plain, nil
}

func sealKeyFrom(shared, ephPub, recipientPub []byte) ([]byte, error) {
	info := append(append([]byte("hsmcore change v2 seal\x00"), ephPub...), recipientPub...)
	return hkdf.Key(sha512.New384, shared, nil, string(info), 32)
}

// parseChange decodes and checks the form of a change record, without
// verifying its signature.
func parseChange(rec []byte) (*changeBody, *changeEnvelope, error) {
	if len(rec) > maxRecordLine {
		return nil, nil, fmt.Errorf("change record over %d bytes: %w", maxRecordLine, hsmcore.ErrMalformed)
	}
	var env changeEnvelope
	if err := strictjson.Unmarshal(rec, &env); err != nil {
		return nil, nil, fmt.Errorf("change record: %w: %w", err, hsmcore.ErrMalformed)
	}
	if again, err := json.Marshal(env); err != nil || !bytes.Equal(again, rec) {
		return nil, nil, fmt.Errorf("change record: not in canonical form: %w", hsmcore.ErrMalformed)
	}
	var b changeBody
	if err := strictjson.Unmarshal(env.Body, &b); err != nil {
		return nil, nil, fmt.Errorf("change record: %w: %w", err, hsmcore.ErrMalformed)
	}
	if hsmcore.CheckName(b.Cluster) != nil || hsmcore.CheckName(b.To) != nil {
		return nil, nil, fmt.Errorf("change record: cluster or member name: %w", hsmcore.ErrMalformed)
	}
	if err := b.Meta.check(); err != nil {
		return nil, nil, fmt.Errorf("change record: %v: %w", err, hsmcore.ErrMalformed)
	}
	if deleted := strings.HasSuffix(b.Meta.Op, ".delete"); deleted != (len(b.Sealed) == 0) {
		return nil, nil, fmt.Errorf("change record: a %s must carry a record exactly when it is not a delete: %w", b.Meta.Op, hsmcore.ErrMalformed)
	}
	return &b, &env, nil
}

// ImportChange applies a change record another member made (see the
// package comment above for every check). The session's user must be the
// change's actor: a member applies a change only as the user who made it,
// under its own rules.
func (s *Session) ImportChange(rec []byte) error {
	_, err := s.ImportChanges([][]byte{rec})
	return err
}

// maxImportChanges bounds the records of one ImportChanges.
const maxImportChanges = maxChanges

// ImportChanges applies change records in order, each as ImportChange
// would on the state the ones before it left, and commits them once: a
// replica catches up on a batch of changes with one write of its sealed
// state. At the first record refused it stops, commits the ones before
// it, and returns how many were applied with the refusal.
func (s *Session) ImportChanges(recs [][]byte) (int, error) {
	if len(recs) > maxImportChanges {
		return 0, fmt.Errorf("import changes: %d records, at most %d at once: %w", len(recs), maxImportChanges, hsmcore.ErrInvalid)
	}
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("sync.import"); err != nil {
		return 0, err
	}
	next := d.st.clone()
	var done []string // audit objects of the applied records
	var refusal error
	for _, rec := range recs {
		object, err := s.importChange(next, rec)
		if err != nil {
			refusal = err
			break
		}
		done = append(done, object)
	}
	if len(done) == 0 {
		return 0, refusal
	}
	if err := d.commit(next); err != nil {
		d.audit(s.user, "sync.import", fmt.Sprintf("%d changes", len(done)), "error")
		return 0, fmt.Errorf("import change: %w", err)
	}
	if u := next.Users[s.user]; u != nil {
		s.rec = u // its own new password or key: this session goes on
	}
	for _, object := range done {
		if err := d.audit(s.user, "sync.import", object, "ok"); err != nil {
			return len(done), err
		}
	}
	return len(done), refusal
}

// importChange checks change record rec against next, the state the
// records before it left, and applies it there. It returns the audit
// object of the applied change; a refusal is audited here. The caller
// holds d.mu.
func (s *Session) importChange(next *contents, rec []byte) (string, error) {
	d := s.d
	b, env, err := parseChange(rec)
	if err != nil {
		d.audit(s.user, "sync.import", "", "malformed")
		return "", fmt.Errorf("import change: %w", err)
	}
	object := b.Meta.Object
	refuse := func(result string, err error) (string, error) {
		d.audit(s.user, "sync.import", object+" from "+b.Meta.Stamp.Origin, result)
		return "", fmt.Errorf("import change %s %s from %s: %w", b.Meta.Op, object, b.Meta.Stamp.Origin, err)
	}
	if !next.clusterInitialized() || b.Cluster != next.clusterID() || b.To != d.id.Serial {
		return refuse("refused", fmt.Errorf("made for %s in cluster %s: %w", b.To, b.Cluster, hsmcore.ErrPermission))
	}
	origin := next.member(b.Meta.Stamp.Origin)
	if origin == nil || origin.Serial == d.id.Serial {
		return refuse("refused", fmt.Errorf("not made by another current member: %w", hsmcore.ErrPermission))
	}
	pub, err := origin.publicKey()
	if err != nil || !ecdsa.VerifyASN1(pub, changeDigest(env.Body), env.Signature) {
		return refuse("refused", fmt.Errorf("signature: %w", hsmcore.ErrTampered))
	}
	if want := next.Clock[origin.Serial] + 1; b.Meta.Stamp.Seq != want {
		return refuse("stale", fmt.Errorf("change %d, but the next from %s is %d (replayed, or changes were missed): %w", b.Meta.Stamp.Seq, origin.Serial, want, hsmcore.ErrConflict))
	}
	var held *stamp
	if m := next.Changes.Get(object); m != nil {
		held = &m.Stamp
	}
	if !equalStamp(held, b.Meta.Prev) {
		return refuse("conflict", fmt.Errorf("replaces a version of %s this member does not hold: %w", object, hsmcore.ErrConflict))
	}
	if b.Meta.Actor != s.user {
		return refuse("denied", fmt.Errorf("made by %s, imported by %s: %w", auditName(b.Meta.Actor), s.user, hsmcore.ErrPermission))
	}
	var plain []byte
	if len(b.Sealed) > 0 {
		if plain, err = openSealed(d.deviceKey, b.Sealed, changeAAD(b)); err != nil {
			return refuse("refused", err)
		}
		defer clear(plain)
	}
	if err := s.applyChange(next, &b.Meta, plain); err != nil {
		return refuse("denied", err)
	}
	meta := b.Meta
	if err := next.Changes.Set(&meta); err != nil {
		return refuse("refused", fmt.Errorf("%v: %w", err, hsmcore.ErrMalformed))
	}
	next.Clock[origin.Serial] = meta.Stamp.Seq
	return fmt.Sprintf("%s %s from %s/%d", meta.Op, object, meta.Stamp.Origin, meta.Stamp.Seq), nil
}

func equalStamp(a, b *stamp) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// member returns the member with serial, or nil.
func (c *contents) member(serial string) *memberRecord { return findMember(c.Members, serial) }
