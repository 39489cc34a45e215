package quorum

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a settable clock for a Tracker.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock(tb testing.TB) *fakeClock {
	tb.Helper()
	return &fakeClock{now: time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// testOfficers are five officers, "co0" to "co4", and their registered keys.
type testOfficers struct {
	names []string
	privs map[string]ed25519.PrivateKey
	keys  map[string]ed25519.PublicKey
}

func newOfficers(tb testing.TB) *testOfficers {
	tb.Helper()
	o := &testOfficers{privs: map[string]ed25519.PrivateKey{}, keys: map[string]ed25519.PublicKey{}}
	for i := range 5 {
		name := fmt.Sprintf("co%d", i)
		o.names = append(o.names, name)
		o.privs[name] = testKey(tb, name)
		o.keys[name] = o.privs[name].Public().(ed25519.PublicKey)
	}
	return o
}

// approve returns the approvals of tok by the officers numbered in who.
func (o *testOfficers) approve(tb testing.TB, tok Token, who ...int) []Approval {
	tb.Helper()
	as := make([]Approval, 0, len(who))
	for _, i := range who {
		as = append(as, Sign(o.privs[o.names[i]], o.names[i], tok))
	}
	return as
}

func TestConsume(t *testing.T) {
	const ttl = 10 * time.Minute
	tests := []struct {
		name      string
		m         int
		op        string // "" for the token's own
		object    string // "" for the token's own
		advance   time.Duration
		approvals func(tb testing.TB, o *testOfficers, tok Token) []Approval
		keys      func(keys map[string]ed25519.PublicKey) // edits the registered keys
		want      error
	}{
		{
			name: "M approvals", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval { return o.approve(tb, tok, 0, 1) },
		},
		{
			name: "more than M", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval { return o.approve(tb, tok, 4, 2, 0) },
		},
		{
			name: "all five for M=5", m: 5,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval { return o.approve(tb, tok, 0, 1, 2, 3, 4) },
		},
		{
			name: "just before expiry", m: 2, advance: ttl - time.Nanosecond,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval { return o.approve(tb, tok, 0, 1) },
		},
		{
			name: "M-1 approvals", m: 3,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval { return o.approve(tb, tok, 0, 1) },
			want:      ErrNotEnoughApprovals,
		},
		{
			name: "no approvals", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval { return nil },
			want:      ErrNotEnoughApprovals,
		},
		{
			name: "M greater than N", m: 8,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval { return o.approve(tb, tok, 0, 1, 2, 3, 4) },
			want:      ErrNotEnoughApprovals,
		},
		{
			name: "duplicate officer counted once", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval { return o.approve(tb, tok, 3, 3, 3) },
			want:      ErrNotEnoughApprovals,
		},
		{
			name: "duplicate officer plus another", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval { return o.approve(tb, tok, 3, 3, 1) },
		},
		{
			name: "two officers sharing a key counted once", m: 2,
			keys: func(keys map[string]ed25519.PublicKey) { keys["alias"] = keys["co0"] },
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval {
				return append(o.approve(tb, tok, 0), Sign(o.privs["co0"], "alias", tok))
			},
			want: ErrNotEnoughApprovals,
		},
		{
			name: "forged signature", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval {
				as := o.approve(tb, tok, 0, 1)
				as[1].Signature[10] ^= 0x40
				return as
			},
			want: ErrBadSignature,
		},
		{
			name: "forged signature among enough good ones", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval {
				as := o.approve(tb, tok, 0, 1, 2, 3)
				as[3].Signature[0] ^= 1
				return as
			},
			want: ErrBadSignature,
		},
		{
			name: "signature over another token", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval {
				other := tok
				other.ID[0] ^= 1
				return append(o.approve(tb, tok, 0), o.approve(tb, other, 1)...)
			},
			want: ErrBadSignature,
		},
		{
			name: "signature over the token with a later expiry", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval {
				other := tok
				other.Expires = other.Expires.Add(time.Hour)
				return append(o.approve(tb, tok, 0), o.approve(tb, other, 1)...)
			},
			want: ErrBadSignature,
		},
		{
			name: "signature over another object", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval {
				other := tok
				other.Object = "carol"
				return append(o.approve(tb, tok, 0), o.approve(tb, other, 1)...)
			},
			want: ErrBadSignature,
		},
		{
			name: "plain signature without the token format", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval {
				sig := ed25519.Sign(o.privs["co1"], tok.ID[:])
				return append(o.approve(tb, tok, 0), Approval{Officer: "co1", Signature: sig})
			},
			want: ErrBadSignature,
		},
		{
			name: "unknown officer", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval {
				return append(o.approve(tb, tok, 0, 1), Sign(testKey(tb, "mallory"), "mallory", tok))
			},
			want: ErrBadSignature,
		},
		{
			name: "valid signature under another officer's name", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval {
				as := o.approve(tb, tok, 0, 0)
				as[1].Officer = "co1"
				return as
			},
			want: ErrBadSignature,
		},
		{
			name: "truncated signature", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval {
				as := o.approve(tb, tok, 0, 1)
				as[1].Signature = as[1].Signature[:63]
				return as
			},
			want: ErrBadSignature,
		},
		{
			name: "empty signature", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval {
				return append(o.approve(tb, tok, 0, 1), Approval{Officer: "co2"})
			},
			want: ErrBadSignature,
		},
		{
			name: "registered key of the wrong size", m: 2,
			keys: func(keys map[string]ed25519.PublicKey) { keys["broken"] = make(ed25519.PublicKey, 31) },
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval {
				return append(o.approve(tb, tok, 0, 1), Approval{Officer: "broken", Signature: make([]byte, 64)})
			},
			want: ErrBadSignature,
		},
		{
			name: "too many approvals", m: 2,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval {
				var as []Approval
				for range MaxApprovals + 1 {
					as = append(as, o.approve(tb, tok, len(as)%5)...)
				}
				return as
			},
			want: ErrBadSignature,
		},
		{
			name: "wrong op", m: 2, op: "user.create",
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval { return o.approve(tb, tok, 0, 1) },
			want:      ErrMismatch,
		},
		{
			name: "wrong object", m: 2, object: "carol",
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval { return o.approve(tb, tok, 0, 1) },
			want:      ErrMismatch,
		},
		{
			name: "object prefix", m: 2, object: "bo",
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval { return o.approve(tb, tok, 0, 1) },
			want:      ErrMismatch,
		},
		{
			name: "expired", m: 2, advance: ttl,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval { return o.approve(tb, tok, 0, 1) },
			want:      ErrExpired,
		},
		{
			name: "expired long ago, without approvals", m: 2, advance: 48 * time.Hour,
			approvals: func(tb testing.TB, o *testOfficers, tok Token) []Approval { return nil },
			want:      ErrExpired,
		},
	}
	sentinels := []error{ErrUnknownToken, ErrExpired, ErrMismatch, ErrNotEnoughApprovals, ErrBadSignature}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock(t)
			tr := NewTracker(clock.Now, ttl)
			o := newOfficers(t)
			if tt.keys != nil {
				tt.keys(o.keys)
			}
			tok, err := tr.Issue("user.delete", "bob")
			if err != nil {
				t.Fatal(err)
			}
			op, object := tt.op, tt.object
			if op == "" {
				op = tok.Op
			}
			if object == "" {
				object = tok.Object
			}
			clock.Advance(tt.advance)

			err = tr.Consume(tok.ID, op, object, tt.m, tt.approvals(t, o, tok), o.keys)
			if !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
				t.Fatalf("Consume = %v, want %v", err, tt.want)
			}
			if err != nil {
				n := 0
				for _, s := range sentinels {
					if errors.Is(err, s) {
						n++
					}
				}
				if n != 1 || !strings.HasPrefix(err.Error(), "quorum: ") {
					t.Errorf("error %q wraps %d sentinels, or lacks the prefix", err, n)
				}
			}

			// Afterwards the token is gone if it was used or expired, and
			// otherwise still usable with the right request.
			good := o.approve(t, tok, 0, 1)
			err = tr.Consume(tok.ID, tok.Op, tok.Object, 2, good, o.keys)
			switch tt.want {
			case nil, ErrExpired:
				if !errors.Is(err, ErrUnknownToken) {
					t.Errorf("second Consume = %v, want ErrUnknownToken", err)
				}
			default:
				if err != nil {
					t.Errorf("token not usable after a failed Consume: %v", err)
				}
			}
			if len(tr.byID) != 0 || tr.order.Len() != 0 {
				t.Errorf("%d/%d tokens left outstanding", len(tr.byID), tr.order.Len())
			}
		})
	}
}

func TestConsumeUnknownToken(t *testing.T) {
	tr := NewTracker(nil, 0)
	o := newOfficers(t)
	tok, err := tr.Issue("key.trust", "0x2a")
	if err != nil {
		t.Fatal(err)
	}
	other := tok
	other.ID[7] ^= 0x10
	for _, id := range [][16]byte{{}, other.ID} {
		err := tr.Consume(id, tok.Op, tok.Object, 2, o.approve(t, other, 0, 1), o.keys)
		if !errors.Is(err, ErrUnknownToken) {
			t.Errorf("Consume(%x) = %v, want ErrUnknownToken", id, err)
		}
	}
	if err := tr.Consume(tok.ID, tok.Op, tok.Object, 2, o.approve(t, tok, 0, 1), o.keys); err != nil {
		t.Errorf("Consume = %v", err)
	}
}

func TestConsumePanicsOnZeroM(t *testing.T) {
	tr := NewTracker(nil, 0)
	tok, err := tr.Issue("key.trust", "0x2a")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if recover() == nil {
			t.Error("Consume with m=0 did not panic")
		}
	}()
	_ = tr.Consume(tok.ID, tok.Op, tok.Object, 0, nil, nil)
}

func TestIssue(t *testing.T) {
	clock := newFakeClock(t)
	tr := NewTracker(clock.Now, 0)
	tok, err := tr.Issue("image.import", "")
	if err != nil {
		t.Fatal(err)
	}
	if tok.ID == ([16]byte{}) || tok.Op != "image.import" || tok.Object != "" {
		t.Errorf("Issue = %+v", tok)
	}
	if !tok.Issued.Equal(clock.Now()) || tok.Expires.Sub(tok.Issued) != DefaultTTL {
		t.Errorf("Issued %v, Expires %v: want now and now+%v", tok.Issued, tok.Expires, DefaultTTL)
	}
	if _, err := tok.MarshalJSON(); err != nil {
		t.Errorf("issued token does not marshal: %v", err)
	}
	tok2, err := tr.Issue("image.import", "")
	if err != nil {
		t.Fatal(err)
	}
	if tok2.ID == tok.ID {
		t.Error("two tokens share an ID")
	}

	// The clock's zone and monotonic reading do not leak into the token.
	tr = NewTracker(func() time.Time { return time.Now().In(time.FixedZone("X", 7200)) }, time.Minute)
	tok, err = tr.Issue("user.delete", "bob")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Issued.Location() != time.UTC || tok.Expires.Sub(tok.Issued) != time.Minute {
		t.Errorf("Issue = %+v", tok)
	}
	if _, err := tok.MarshalJSON(); err != nil {
		t.Errorf("issued token does not marshal: %v", err)
	}

	bad := []struct{ op, object string }{
		{"", "bob"},
		{"User.Delete", "bob"},
		{strings.Repeat("a", MaxOpLen+1), "bob"},
		{"user.delete", strings.Repeat("b", MaxObjectLen+1)},
		{"user.delete", "b\x00b"},
		{"user.delete", "b\xffb"},
	}
	for _, b := range bad {
		if _, err := tr.Issue(b.op, b.object); err == nil || !strings.HasPrefix(err.Error(), "quorum: ") {
			t.Errorf("Issue(%q, %q) = %v, want an error", b.op, b.object, err)
		}
	}
	tr = NewTracker(func() time.Time { return time.Time{} }, 0)
	if _, err := tr.Issue("user.delete", "bob"); err == nil {
		t.Error("Issue with a clock out of range succeeded")
	}
	if len(tr.byID) != 0 {
		t.Error("a failed Issue holds a token")
	}
}

func TestNewTrackerPanicsOnNegativeTTL(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NewTracker with a negative TTL did not panic")
		}
	}()
	NewTracker(nil, -time.Second)
}

// With time.Now, a token's life is measured on the monotonic clock, so that
// setting the wall clock does not change it. A time.Time cannot be built
// with an arbitrary monotonic reading, so check that the deadline keeps the
// clock's reading (time.Time.Before then compares monotonic readings).
func TestExpiryUsesMonotonicClock(t *testing.T) {
	tr := NewTracker(nil, time.Hour)
	tok, err := tr.Issue("user.delete", "bob")
	if err != nil {
		t.Fatal(err)
	}
	p := tr.byID[tok.ID].Value.(*pending)
	if !strings.Contains(p.deadline.String(), " m=") {
		t.Errorf("deadline %v lost the monotonic clock reading", p.deadline)
	}
	if strings.Contains(tok.Issued.String(), " m=") || strings.Contains(tok.Expires.String(), " m=") {
		t.Errorf("token times carry a monotonic reading: %v, %v", tok.Issued, tok.Expires)
	}
}

func TestOutstandingBound(t *testing.T) {
	clock := newFakeClock(t)
	tr := NewTracker(clock.Now, time.Hour)
	o := newOfficers(t)

	var toks []Token
	for range MaxOutstanding {
		tok, err := tr.Issue("user.delete", "bob")
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
		clock.Advance(time.Millisecond)
	}
	if len(tr.byID) != MaxOutstanding {
		t.Fatalf("%d outstanding, want %d", len(tr.byID), MaxOutstanding)
	}

	// Full and none expired: the oldest goes.
	extra, err := tr.Issue("user.delete", "bob")
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.byID) != MaxOutstanding || tr.order.Len() != MaxOutstanding {
		t.Fatalf("%d/%d outstanding, want %d", len(tr.byID), tr.order.Len(), MaxOutstanding)
	}
	if err := tr.Consume(toks[0].ID, "user.delete", "bob", 2, o.approve(t, toks[0], 0, 1), o.keys); !errors.Is(err, ErrUnknownToken) {
		t.Errorf("oldest token: Consume = %v, want ErrUnknownToken", err)
	}
	for _, tok := range []Token{toks[1], toks[MaxOutstanding-1], extra} {
		if err := tr.Consume(tok.ID, "user.delete", "bob", 2, o.approve(t, tok, 0, 1), o.keys); err != nil {
			t.Errorf("Consume = %v", err)
		}
	}

	// Many issues never hold more than the bound.
	for range 3 * MaxOutstanding {
		if _, err := tr.Issue("user.delete", "bob"); err != nil {
			t.Fatal(err)
		}
		if len(tr.byID) > MaxOutstanding {
			t.Fatalf("%d outstanding", len(tr.byID))
		}
	}
}

// When full, every expired token goes, not only the oldest.
func TestOutstandingBoundEvictsExpired(t *testing.T) {
	clock := newFakeClock(t)
	tr := NewTracker(clock.Now, time.Hour)
	o := newOfficers(t)
	for range MaxOutstanding / 2 {
		if _, err := tr.Issue("user.delete", "old"); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(time.Hour) // the first half expire
	var fresh []Token
	for range MaxOutstanding/2 + 1 {
		tok, err := tr.Issue("user.delete", "new")
		if err != nil {
			t.Fatal(err)
		}
		fresh = append(fresh, tok)
	}
	if got, want := len(tr.byID), MaxOutstanding/2+1; got != want || tr.order.Len() != want {
		t.Fatalf("%d/%d outstanding, want %d", got, tr.order.Len(), want)
	}
	for _, tok := range fresh {
		if err := tr.Consume(tok.ID, "user.delete", "new", 2, o.approve(t, tok, 0, 1), o.keys); err != nil {
			t.Fatalf("Consume = %v", err)
		}
	}
}

// Run with -race. Concurrent Issue and Consume work; of several concurrent
// Consume calls on one token exactly one succeeds.
func TestConcurrent(t *testing.T) {
	tr := NewTracker(nil, 0)
	o := newOfficers(t)
	const workers, rounds = 8, 20
	var wg sync.WaitGroup
	var wins atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				obj := fmt.Sprintf("w%d-r%d", w, r)
				tok, err := tr.Issue("key.trust", obj)
				if err != nil {
					t.Error(err)
					return
				}
				if err := tr.Consume(tok.ID, "key.trust", "other", 2, o.approve(t, tok, 0, 1), o.keys); !errors.Is(err, ErrMismatch) {
					t.Errorf("Consume = %v, want ErrMismatch", err)
				}
				if err := tr.Consume(tok.ID, "key.trust", obj, 2, o.approve(t, tok, 2, 3), o.keys); err != nil {
					t.Errorf("Consume = %v", err)
				}
			}
		}()
	}
	shared, err := tr.Issue("user.delete", "bob")
	if err != nil {
		t.Fatal(err)
	}
	approvals := o.approve(t, shared, 0, 1, 2)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := tr.Consume(shared.ID, "user.delete", "bob", 3, approvals, o.keys)
			switch {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, ErrUnknownToken):
				t.Errorf("Consume = %v", err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Errorf("%d Consume calls succeeded on one token, want 1", wins.Load())
	}
	if len(tr.byID) != 0 {
		t.Errorf("%d tokens left outstanding", len(tr.byID))
	}
}

func TestAdoptServesOnceAcrossMembers(t *testing.T) {
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := func() time.Time { return clock }
	issuer, member := NewTracker(now, 0), NewTracker(now, 0)
	pub, priv, _ := ed25519.GenerateKey(nil)
	pub2, priv2, _ := ed25519.GenerateKey(nil)
	keys := map[string]ed25519.PublicKey{"co1": pub, "co2": pub2}
	tok, err := issuer.Issue("user.delete", "bob")
	if err != nil {
		t.Fatal(err)
	}
	approvals := []Approval{Sign(priv, "co1", tok), Sign(priv2, "co2", tok)}
	if err := member.Adopt(tok); err != nil {
		t.Fatal(err)
	}
	if err := member.Adopt(tok); err != nil {
		t.Fatalf("adopting twice before use: %v", err)
	}
	for _, tr := range []*Tracker{issuer, member} {
		if err := tr.Consume(tok.ID, "user.delete", "bob", 2, approvals, keys); err != nil {
			t.Fatal(err)
		}
	}
	if err := member.Adopt(tok); !errors.Is(err, ErrUnknownToken) {
		t.Fatalf("re-adopting a used token: got %v, want ErrUnknownToken", err)
	}
	long := tok
	long.ID[0] ^= 1
	long.Expires = long.Issued.Add(time.Hour)
	if err := member.Adopt(long); !errors.Is(err, ErrMismatch) {
		t.Fatalf("token with a stretched life: got %v, want ErrMismatch", err)
	}
	clock = clock.Add(DefaultTTL)
	late := tok
	late.ID[1] ^= 1
	if err := member.Adopt(late); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired token: got %v, want ErrExpired", err)
	}
}

// A new Tracker given another's Spent list (an HSM after a restart)
// refuses to adopt the tokens that one consumed, until they expire, and
// forgets them after.
func TestSpentCarriesOverToANewTracker(t *testing.T) {
	clock := newFakeClock(t)
	o := newOfficers(t)
	old := NewTracker(clock.Now, 0)
	tok, err := old.Issue("image.export", "cluster=c1")
	if err != nil {
		t.Fatal(err)
	}
	if got := old.Spent(); len(got) != 0 {
		t.Fatalf("spent before any consumption: %v", got)
	}
	if err := old.Consume(tok.ID, "image.export", "cluster=c1", 2, o.approve(t, tok, 0, 1), o.keys); err != nil {
		t.Fatal(err)
	}
	spent := old.Spent()
	if len(spent) != 1 || spent[0].ID != tok.ID || !spent[0].Expires.Equal(tok.Expires) {
		t.Fatalf("Spent() = %v, want the consumed token until %v", spent, tok.Expires)
	}

	restarted := NewTracker(clock.Now, 0)
	if err := restarted.MarkSpent(spent); err != nil {
		t.Fatal(err)
	}
	if err := restarted.Adopt(tok); !errors.Is(err, ErrUnknownToken) {
		t.Fatalf("adopting a spent token after a restart: got %v, want ErrUnknownToken", err)
	}
	// An outstanding token of that ID is removed too.
	fresh := NewTracker(clock.Now, 0)
	if err := fresh.Adopt(tok); err != nil {
		t.Fatal(err)
	}
	if err := fresh.MarkSpent(spent); err != nil {
		t.Fatal(err)
	}
	if err := fresh.Consume(tok.ID, "image.export", "cluster=c1", 2, o.approve(t, tok, 0, 1), o.keys); !errors.Is(err, ErrUnknownToken) {
		t.Fatalf("consuming a token marked spent: got %v, want ErrUnknownToken", err)
	}
	clock.Advance(DefaultTTL)
	if got := restarted.Spent(); len(got) != 0 {
		t.Fatalf("an expired token is still remembered: %v", got)
	}
	if err := restarted.MarkSpent(spent); err != nil || len(restarted.Spent()) != 0 {
		t.Fatalf("marking an expired token spent: %v, %v", err, restarted.Spent())
	}
}

// A Tracker remembers at most MaxSpent unexpired tokens: MarkSpent
// refuses more, recording none.
func TestMarkSpentBounded(t *testing.T) {
	clock := newFakeClock(t)
	tr := NewTracker(clock.Now, 0)
	list := make([]Spent, MaxSpent+1)
	for i := range list {
		list[i] = Spent{Expires: clock.Now().Add(time.Minute)}
		list[i].ID[0], list[i].ID[1], list[i].ID[2] = 1, byte(i>>8), byte(i)
	}
	if err := tr.MarkSpent(list); err == nil {
		t.Fatal("MarkSpent took more than MaxSpent tokens")
	}
	if n := len(tr.Spent()); n != 0 {
		t.Fatalf("a refused MarkSpent recorded %d tokens", n)
	}
	if err := tr.MarkSpent(list[:MaxSpent]); err != nil {
		t.Fatal(err)
	}
}

// Void drops the outstanding tokens and keeps the consumed ones.
func TestVoidKeepsSpent(t *testing.T) {
	clock := newFakeClock(t)
	o := newOfficers(t)
	tr := NewTracker(clock.Now, 0)
	used, _ := tr.Issue("user.delete", "bob role=CU")
	open, _ := tr.Issue("user.delete", "carol role=CU")
	if err := tr.Consume(used.ID, used.Op, used.Object, 2, o.approve(t, used, 0, 1), o.keys); err != nil {
		t.Fatal(err)
	}
	tr.Void()
	if err := tr.Consume(open.ID, open.Op, open.Object, 2, o.approve(t, open, 0, 1), o.keys); !errors.Is(err, ErrUnknownToken) {
		t.Fatalf("an outstanding token after Void: got %v, want ErrUnknownToken", err)
	}
	if err := tr.Adopt(used); !errors.Is(err, ErrUnknownToken) {
		t.Fatalf("adopting a consumed token after Void: got %v, want ErrUnknownToken", err)
	}
	if err := tr.Adopt(open); err != nil {
		t.Fatalf("adopting a voided, unused token: %v", err)
	}
}
