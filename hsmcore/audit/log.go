package audit

import (
	"math"
	"sync"
	"time"
	"unicode/utf8"
)

// Log assigns sequence numbers and chains hashes for new entries. It holds
// only the current Head, not the entries: the caller records each entry that
// Append returns. It is safe for concurrent use, but a caller that appends
// from several goroutines must still store entries in Seq order, for example
// by holding its own lock across Append and the write.
type Log struct {
	mu   sync.Mutex
	head Head
}

// New returns a Log that continues after head: the Head of the last recorded
// entry, or the zero Head for a new log.
func New(head Head) *Log {
	return &Log{head: head}
}

// Head returns the Head after the most recent Append.
func (l *Log) Head() Head {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.head
}

// Append adds an entry for one operation at time now (stored in UTC) and
// returns it with Seq, Prev and Hash filled in: Next, then Advance.
//
// The strings are built by the caller, so Append panics, as for any
// programmer error, if one is longer than MaxFieldLen or not valid UTF-8, if
// the entry would encode to a line longer than MaxLineLen, or if now lies
// outside the years 1678 to 2262. Callers must bound and check any part that
// comes from a client, such as a user name, before calling Append.
func (l *Log) Append(now time.Time, actor, op, object, result string) Entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.next(now, actor, op, object, result)
	l.head = Head{Seq: e.Seq, Hash: e.Hash}
	return e
}

// Next returns the entry Append would add, without adding it: the Head
// stays where it is until Advance. A writer that must store an entry
// before it counts (write, then sync) calls Next, stores the entry, and
// calls Advance only once it is stored, so that a failed write consumes
// no sequence number. It panics as Append does.
func (l *Log) Next(now time.Time, actor, op, object, result string) Entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next(now, actor, op, object, result)
}

// Advance moves the Head to e, an entry from Next that is now stored. It
// panics, as for any programmer error, if e does not continue the Head.
func (l *Log) Advance(e Entry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e.Seq != l.head.Seq+1 || e.Prev != l.head.Hash || e.Hash != e.ComputeHash() {
		panic("audit: Advance with an entry that does not continue the head")
	}
	l.head = Head{Seq: e.Seq, Hash: e.Hash}
}

// next builds the entry after the Head; l.mu is held.
func (l *Log) next(now time.Time, actor, op, object, result string) Entry {
	for _, s := range [...]string{actor, op, object, result} {
		if len(s) > MaxFieldLen {
			panic("audit: field longer than 1024 bytes")
		}
		if !utf8.ValidString(s) {
			panic("audit: field is not valid UTF-8")
		}
	}
	now = now.UTC() // also drops any monotonic clock reading
	if !timeInRange(now) {
		panic("audit: time out of range")
	}
	if l.head.Seq == math.MaxUint64 {
		panic("audit: sequence number overflow")
	}
	e := Entry{
		Seq:    l.head.Seq + 1,
		Time:   now,
		Actor:  actor,
		Op:     op,
		Object: object,
		Result: result,
		Prev:   l.head.Hash,
	}
	e.Hash = e.ComputeHash()
	if _, err := marshalLine(&e); err != nil {
		panic("audit: " + err.Error())
	}
	return e
}
