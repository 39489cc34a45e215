package audit

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLogAppend(t *testing.T) {
	l := New(Head{})
	if h := l.Head(); h != (Head{}) {
		t.Fatalf("new log Head = %+v, want zero", h)
	}
	paris := time.FixedZone("CET", 3600)
	now := time.Date(2025, 3, 14, 16, 9, 26, 535897932, paris)
	e1 := l.Append(now, "alice", "login", "", "ok")
	e2 := l.Append(time.Now(), "alice", "key.create", "0x2a", "ok")

	if e1.Seq != 1 || e1.Prev != (Hash{}) || e1.Hash != e1.ComputeHash() {
		t.Errorf("first entry = %+v", e1)
	}
	if e1.Time != now.UTC() || e1.Time.Location() != time.UTC {
		t.Errorf("Time = %v, want %v in UTC", e1.Time, now.UTC())
	}
	if e2.Seq != 2 || e2.Prev != e1.Hash || e2.Hash != e2.ComputeHash() {
		t.Errorf("second entry = %+v", e2)
	}
	if h := l.Head(); h != (Head{Seq: 2, Hash: e2.Hash}) {
		t.Errorf("Head = %+v, want seq 2 hash %s", h, e2.Hash)
	}
	// time.Now carries a monotonic reading; the entry must not.
	if e2.Time != e2.Time.Round(0) {
		t.Errorf("Time kept its monotonic clock reading")
	}
}

func TestLogResume(t *testing.T) {
	first, head := testLog(t, 10)
	l := New(head)
	var rest []Entry
	for i := range 5 {
		rest = append(rest, l.Append(time.Unix(int64(i), 0), "bob", "key.delete", "0x2a", "ok"))
	}
	want := l.Head()
	checkErr(t, Verify(append(first, rest...), &want), "")
	checkErr(t, VerifyFrom(head, rest, &want), "")
}

func TestLogAppendPanics(t *testing.T) {
	ok := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	long := strings.Repeat("a", MaxFieldLen+1)
	quotes := strings.Repeat(`"`, MaxFieldLen) // each encodes as 2 bytes
	tests := []struct {
		name                      string
		now                       time.Time
		actor, op, object, result string
	}{
		{"actor too long", ok, long, "login", "", "ok"},
		{"op too long", ok, "", long, "", "ok"},
		{"object too long", ok, "", "login", long, "ok"},
		{"result too long", ok, "", "login", "", long},
		{"invalid UTF-8", ok, "\xff", "login", "", "ok"},
		{"line too long", ok, quotes, quotes, "", "ok"},
		{"zero time", time.Time{}, "", "login", "", "ok"},
		{"time after 2262", time.Date(2263, 1, 1, 0, 0, 0, 0, time.UTC), "", "login", "", "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := New(Head{})
			defer func() {
				r := recover()
				msg, _ := r.(string)
				if !strings.HasPrefix(msg, "audit: ") {
					t.Errorf("recovered %v, want a panic starting with \"audit: \"", r)
				}
				if h := l.Head(); h != (Head{}) {
					t.Errorf("Head moved to %+v", h)
				}
			}()
			l.Append(tt.now, tt.actor, tt.op, tt.object, tt.result)
		})
	}

	// At the limits, Append succeeds.
	l := New(Head{})
	max := strings.Repeat("a", MaxFieldLen)
	e := l.Append(ok, max, max, "", "ok")
	checkErr(t, Verify([]Entry{e}, nil), "")
	l = New(Head{Seq: ^uint64(0) - 1})
	l.Append(ok, "", "login", "", "ok")
	defer func() {
		if r := recover(); r == nil {
			t.Error("Append after seq 2^64-1 did not panic")
		}
	}()
	l.Append(ok, "", "login", "", "ok")
}

// Concurrent appends get distinct, consecutive sequence numbers and form one
// chain. Run with -race.
func TestLogConcurrent(t *testing.T) {
	const workers, each = 8, 200
	l := New(Head{})
	got := make([][]Entry, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range each {
				got[w] = append(got[w], l.Append(time.Now(), "worker", "key.wrap", "", "ok"))
				_ = l.Head()
			}
		})
	}
	wg.Wait()

	var all []Entry
	for _, es := range got {
		if !slices.IsSortedFunc(es, func(a, b Entry) int { return cmp.Compare(a.Seq, b.Seq) }) {
			t.Fatal("one goroutine's entries are out of order")
		}
		all = append(all, es...)
	}
	slices.SortFunc(all, func(a, b Entry) int { return cmp.Compare(a.Seq, b.Seq) })
	head := l.Head()
	if head.Seq != workers*each {
		t.Fatalf("Head.Seq = %d, want %d", head.Seq, workers*each)
	}
	checkErr(t, Verify(all, &head), "")
}

// Next does not move the Head: a writer whose write fails consumes no
// sequence number. Advance moves it, only to an entry that continues it.
func TestLogNextAdvance(t *testing.T) {
	_, head := testLog(t, 4)
	l := New(head)
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	failed := l.Next(now, "alice", "login", "", "ok")
	if l.Head() != head {
		t.Fatal("Next moved the head")
	}
	e := l.Next(now.Add(time.Second), "alice", "login", "", "ok")
	if e.Seq != failed.Seq || e.Prev != head.Hash {
		t.Fatalf("after an unused Next: seq %d prev %s, want %d %s", e.Seq, e.Prev, failed.Seq, head.Hash)
	}
	l.Advance(e)
	if l.Head() != (Head{Seq: e.Seq, Hash: e.Hash}) {
		t.Fatal("Advance did not move the head")
	}
	for name, bad := range map[string]Entry{"stale": failed, "replayed": e} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Advance with a %s entry did not panic", name)
				}
			}()
			l.Advance(bad)
		}()
	}
}
