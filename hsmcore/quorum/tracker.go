package quorum

import (
	"bytes"
	"container/list"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Tracker issues tokens and consumes them against approvals. It holds the
// outstanding tokens in memory, at most MaxOutstanding of them, and the
// consumed ones until they expire, at most MaxSpent (Spent, MarkSpent). It
// is safe for concurrent use.
//
// A token's life is measured on the Tracker's clock from the moment of
// issue. With time.Now that is Go's monotonic clock, so setting the wall
// clock neither shortens nor extends it; the Expires field shows the wall
// time at which the token was due to expire.
type Tracker struct {
	now func() time.Time
	ttl time.Duration

	mu    sync.Mutex
	byID  map[[16]byte]*list.Element // values *pending
	order list.List                  // of *pending, oldest issue first
	spent map[[16]byte]time.Time     // consumed tokens, until their Expires (wall clock)
}

// Spent is a token a Tracker consumed, remembered until it expires so that
// its sealed copy cannot be adopted again. An HSM persists its Tracker's
// Spent list and restores it with MarkSpent after a restart.
type Spent struct {
	ID      [16]byte
	Expires time.Time // the token's Expires field
}

// pending is an outstanding token.
type pending struct {
	tok      Token
	deadline time.Time // issue time + TTL, as read from now (with any monotonic reading)
}

// NewTracker returns a Tracker that reads time from now (time.Now if nil)
// and issues tokens valid for ttl (DefaultTTL if 0). It panics if ttl is
// negative.
func NewTracker(now func() time.Time, ttl time.Duration) *Tracker {
	if ttl < 0 {
		panic("quorum: negative TTL")
	}
	if ttl == 0 {
		ttl = DefaultTTL
	}
	if now == nil {
		now = time.Now
	}
	return &Tracker{now: now, ttl: ttl, byID: make(map[[16]byte]*list.Element), spent: make(map[[16]byte]time.Time)}
}

// Issue returns a new token for op on object and holds it until it is
// consumed, expires, or is evicted. If MaxOutstanding tokens are already
// held, Issue first removes the expired ones and, if none has expired, the
// oldest. It fails if op or object breaks the limits in the package
// documentation, or if the clock reads outside the years 1678 to 2262.
func (t *Tracker) Issue(op, object string) (Token, error) {
	if err := checkOp(op); err != nil {
		return Token{}, fmt.Errorf("quorum: issue: %w", err)
	}
	if err := checkObject(object); err != nil {
		return Token{}, fmt.Errorf("quorum: issue: %w", err)
	}
	now := t.now()
	tok := Token{Op: op, Object: object, Issued: now.UTC(), Expires: now.Add(t.ttl).UTC()}
	if !timeInRange(tok.Issued) || !timeInRange(tok.Expires) {
		return Token{}, errors.New("quorum: issue: clock out of range")
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		_, _ = rand.Read(tok.ID[:]) // never fails (Go 1.24 and later)
		if tok.ID != ([16]byte{}) && t.byID[tok.ID] == nil {
			break
		}
	}
	if len(t.byID) >= MaxOutstanding {
		t.evict(now)
	}
	t.byID[tok.ID] = t.order.PushBack(&pending{tok: tok, deadline: now.Add(t.ttl)})
	return tok, nil
}

// evict makes room for one token: it removes every expired token and, if
// none had expired, the oldest. t.mu must be held.
func (t *Tracker) evict(now time.Time) {
	for e := t.order.Front(); e != nil; {
		next := e.Next()
		if !now.Before(e.Value.(*pending).deadline) {
			t.remove(e)
		}
		e = next
	}
	if len(t.byID) >= MaxOutstanding {
		t.remove(t.order.Front())
	}
}

// remove drops one outstanding token. t.mu must be held.
func (t *Tracker) remove(e *list.Element) {
	delete(t.byID, e.Value.(*pending).tok.ID)
	t.order.Remove(e)
}

// Consume approves one run of op on object, which needs m approvals, with
// the token id. It makes the checks listed in the package documentation, in
// that order, taking the officers' registered keys from keys. On success
// it removes the token and remembers it as spent until it expires, so that
// it cannot be used again; with MaxSpent tokens remembered it fails with
// ErrUnknownToken instead, leaving the token outstanding.
//
// Every error wraps exactly one of the sentinel errors. On ErrExpired the
// token is removed; on ErrMismatch, ErrBadSignature and
// ErrNotEnoughApprovals it stays usable, so that the caller can retry with
// the right operation or approvals.
//
// m comes from Policy.Required; Consume panics if m < 1, since an
// operation that needs no approval should not consume a token.
func (t *Tracker) Consume(id [16]byte, op, object string, m int, approvals []Approval, keys map[string]ed25519.PublicKey) error {
	if m < 1 {
		panic("quorum: Consume with m < 1")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.byID[id]
	if e == nil {
		return fmt.Errorf("%w: %x", ErrUnknownToken, id)
	}
	p := e.Value.(*pending)
	if !t.now().Before(p.deadline) {
		t.remove(e)
		return fmt.Errorf("%w: %x", ErrExpired, id)
	}
	if op != p.tok.Op || object != p.tok.Object {
		return fmt.Errorf("%w: %x", ErrMismatch, id)
	}
	if err := checkApprovals(&p.tok, m, approvals, keys); err != nil {
		return err
	}
	if t.pruneSpent(t.now()) >= MaxSpent {
		return fmt.Errorf("%w: too many tokens in use", ErrUnknownToken)
	}
	t.remove(e)
	t.spent[id] = p.tok.Expires
	return nil
}

// pruneSpent forgets the consumed tokens that have expired by the wall
// clock, as Adopt judges expiry, and returns how many remain. t.mu must be
// held.
func (t *Tracker) pruneSpent(now time.Time) int {
	now = now.Round(0) // compare wall clocks, as Adopt does with Expires
	for id, until := range t.spent {
		if !now.Before(until) {
			delete(t.spent, id)
		}
	}
	return len(t.spent)
}

// Spent returns the consumed tokens that have not expired, ordered by ID,
// for the caller to persist. A token is in the list from the moment
// Consume accepts it.
func (t *Tracker) Spent() []Spent {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pruneSpent(t.now())
	out := make([]Spent, 0, len(t.spent))
	for id, until := range t.spent {
		out = append(out, Spent{ID: id, Expires: until})
	}
	slices.SortFunc(out, func(a, b Spent) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	return out
}

// Void drops every outstanding token, as a restart does; the consumed
// tokens stay remembered.
func (t *Tracker) Void() {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.byID)
	t.order.Init()
}

// MarkSpent records tokens as consumed, as if this Tracker had consumed
// them: Adopt refuses them until they expire, and an outstanding token of
// the same ID is removed. Expired entries are ignored. It fails, recording
// nothing, if the unexpired ones would exceed MaxSpent.
func (t *Tracker) MarkSpent(spent []Spent) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now().Round(0)
	n := t.pruneSpent(now)
	for _, s := range spent {
		if _, ok := t.spent[s.ID]; !ok && now.Before(s.Expires) {
			n++
		}
	}
	if n > MaxSpent {
		return fmt.Errorf("quorum: mark spent: more than %d tokens", MaxSpent)
	}
	for _, s := range spent {
		if !now.Before(s.Expires) {
			continue
		}
		if until, ok := t.spent[s.ID]; !ok || until.Before(s.Expires) {
			t.spent[s.ID] = s.Expires.Round(0)
		}
		if e := t.byID[s.ID]; e != nil {
			t.remove(e)
		}
	}
	return nil
}

// Lookup returns the outstanding token id, if this tracker holds it.
func (t *Tracker) Lookup(id [16]byte) (Token, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.byID[id]; e != nil {
		return e.Value.(*pending).tok, true
	}
	return Token{}, false
}

// Adopt holds a token that another HSM of the same cluster issued, so that
// one set of approvals serves every member; the caller MUST have
// authenticated tok as issued by a member (hsmcore seals it under the
// cluster key). The token keeps its own expiry, which may not be further
// than the TTL from its issue; a token this tracker already consumed (or
// MarkSpent recorded) is refused, so each member still runs the operation
// at most once.
func (t *Tracker) Adopt(tok Token) error {
	if err := checkOp(tok.Op); err != nil {
		return fmt.Errorf("quorum: adopt: %w", err)
	}
	if err := checkObject(tok.Object); err != nil {
		return fmt.Errorf("quorum: adopt: %w", err)
	}
	now := t.now()
	if tok.ID == ([16]byte{}) || !tok.Expires.After(tok.Issued) || tok.Expires.Sub(tok.Issued) > t.ttl {
		return fmt.Errorf("%w: bad validity", ErrMismatch)
	}
	if !now.Before(tok.Expires) {
		return fmt.Errorf("%w: %x", ErrExpired, tok.ID)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.pruneSpent(now)
	if _, ok := t.spent[tok.ID]; ok {
		return fmt.Errorf("%w: %x already used", ErrUnknownToken, tok.ID)
	}
	if n >= MaxSpent {
		return fmt.Errorf("%w: too many tokens in use", ErrUnknownToken)
	}
	if t.byID[tok.ID] != nil {
		return nil
	}
	if len(t.byID) >= MaxOutstanding {
		t.evict(now)
	}
	t.byID[tok.ID] = t.order.PushBack(&pending{tok: tok, deadline: tok.Expires})
	return nil
}

// checkApprovals makes checks 4 to 6 of the package documentation.
func checkApprovals(tok *Token, m int, approvals []Approval, keys map[string]ed25519.PublicKey) error {
	if len(approvals) > MaxApprovals {
		return fmt.Errorf("%w: more than %d approvals", ErrBadSignature, MaxApprovals)
	}
	msg := tok.SigningBytes()
	officers := make(map[string]bool, len(approvals))
	pubs := make(map[string]bool, len(approvals))
	n := 0
	for _, a := range approvals {
		pub, ok := keys[a.Officer]
		// ed25519.Verify panics on a public key of the wrong size; a
		// signature of the wrong size merely fails.
		if !ok || len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, msg, a.Signature) {
			return fmt.Errorf("%w: officer %q", ErrBadSignature, clip(a.Officer))
		}
		if officers[a.Officer] || pubs[string(pub)] {
			continue
		}
		officers[a.Officer] = true
		pubs[string(pub)] = true
		n++
	}
	if n < m {
		return fmt.Errorf("%w: %d of %d", ErrNotEnoughApprovals, n, m)
	}
	return nil
}

// clip bounds a client-supplied name quoted in an error.
func clip(s string) string {
	const maxLen = 64
	if len(s) > maxLen {
		return s[:maxLen] + "..."
	}
	return s
}
