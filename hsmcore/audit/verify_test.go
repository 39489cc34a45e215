package audit

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestVerify(t *testing.T) {
	orig, head := testLog(t, 50)

	// forge returns a correctly hashed entry that follows prev.
	forge := func(prev Entry) Entry {
		e := Entry{Seq: prev.Seq + 1, Time: prev.Time, Actor: "mallory", Op: "key.delete", Object: "0x2a", Result: "ok", Prev: prev.Hash}
		e.Hash = e.ComputeHash()
		return e
	}
	// rehash renumbers and rechains entries from index i on, as someone who
	// can rewrite the whole log would.
	rehash := func(es []Entry, i int) []Entry {
		for ; i < len(es); i++ {
			es[i].Seq = es[i-1].Seq + 1
			es[i].Prev = es[i-1].Hash
			es[i].Hash = es[i].ComputeHash()
		}
		return es
	}
	edit := func(i int, f func(*Entry)) func([]Entry) []Entry {
		return func(es []Entry) []Entry { f(&es[i]); return es }
	}

	tests := []struct {
		name    string
		mutate  func([]Entry) []Entry // gets a copy of orig
		useHead bool                  // pass the trusted head as want
		wantErr string                // "" for success
	}{
		{name: "intact", wantErr: ""},
		{name: "intact with head", useHead: true, wantErr: ""},

		{name: "remove first", mutate: func(es []Entry) []Entry { return es[1:] }, wantErr: "entry 1: start mismatch"},
		{name: "remove middle", mutate: func(es []Entry) []Entry { return slices.Delete(es, 24, 25) }, wantErr: "entry 25: sequence gap"},
		{name: "remove last, no head", mutate: func(es []Entry) []Entry { return es[:49] }, wantErr: ""},
		{name: "remove last", mutate: func(es []Entry) []Entry { return es[:49] }, useHead: true, wantErr: "entry 49: head mismatch"},
		{name: "remove all", mutate: func(es []Entry) []Entry { return nil }, useHead: true, wantErr: "entry 0: head mismatch"},

		{name: "swap adjacent", mutate: func(es []Entry) []Entry { es[9], es[10] = es[10], es[9]; return es }, wantErr: "entry 10: sequence gap"},
		{name: "swap distant", mutate: func(es []Entry) []Entry { es[4], es[39] = es[39], es[4]; return es }, wantErr: "entry 5: sequence gap"},
		{name: "swap and renumber", mutate: func(es []Entry) []Entry {
			es[9], es[10] = es[10], es[9]
			es[9].Seq, es[10].Seq = 10, 11
			return es
		}, wantErr: "entry 10: prev mismatch"},

		{name: "edit actor", mutate: edit(24, func(e *Entry) { e.Actor = "bob" }), wantErr: "entry 25: hash mismatch (edited)"},
		{name: "edit op", mutate: edit(24, func(e *Entry) { e.Op = "key.unwrap" }), wantErr: "entry 25: hash mismatch (edited)"},
		{name: "edit object", mutate: edit(24, func(e *Entry) { e.Object = "0x2b" }), wantErr: "entry 25: hash mismatch (edited)"},
		{name: "edit result", mutate: edit(24, func(e *Entry) { e.Result = "denied" }), wantErr: "entry 25: hash mismatch (edited)"},
		{name: "edit time by 1ns", mutate: edit(24, func(e *Entry) { e.Time = e.Time.Add(1) }), wantErr: "entry 25: hash mismatch (edited)"},
		{name: "edit time by 2^64ns", mutate: edit(24, func(e *Entry) {
			e.Time = e.Time.Add(math.MaxInt64).Add(math.MaxInt64).Add(2) // same UnixNano
		}), wantErr: "entry 25: time out of range (edited)"},
		{name: "edit seq", mutate: edit(24, func(e *Entry) { e.Seq++ }), wantErr: "entry 25: sequence gap"},
		{name: "edit prev", mutate: edit(24, func(e *Entry) { e.Prev[0] ^= 1 }), wantErr: "entry 25: prev mismatch"},
		{name: "edit hash", mutate: edit(24, func(e *Entry) { e.Hash[31] ^= 1 }), wantErr: "entry 25: hash mismatch (edited)"},
		{name: "edit first actor", mutate: edit(0, func(e *Entry) { e.Actor = "alice" }), wantErr: "entry 1: hash mismatch (edited)"},
		{name: "edit first prev", mutate: edit(0, func(e *Entry) { e.Prev[0] ^= 1 }), wantErr: "entry 1: start mismatch"},
		{name: "edit first seq", mutate: edit(0, func(e *Entry) { e.Seq = 0 }), wantErr: "entry 1: start mismatch"},
		{name: "edit last result", mutate: edit(49, func(e *Entry) { e.Result = "denied" }), wantErr: "entry 50: hash mismatch (edited)"},

		{name: "insert forged", mutate: func(es []Entry) []Entry { return slices.Insert(es, 25, forge(es[24])) }, wantErr: "entry 27: sequence gap"},
		{name: "insert forged and renumber", mutate: func(es []Entry) []Entry {
			es = slices.Insert(es, 25, forge(es[24]))
			for i := 26; i < len(es); i++ {
				es[i].Seq++
			}
			return es
		}, wantErr: "entry 27: prev mismatch"},
		{name: "replace with forged", mutate: func(es []Entry) []Entry { es[25] = forge(es[24]); return es }, wantErr: "entry 27: prev mismatch"},
		{name: "append forged", mutate: func(es []Entry) []Entry { return append(es, forge(es[49])) }, useHead: true, wantErr: "entry 51: head mismatch"},

		// Someone who can rewrite the whole log defeats the chain alone;
		// only a trusted head catches it.
		{name: "insert forged and rehash, no head", mutate: func(es []Entry) []Entry {
			return rehash(slices.Insert(es, 25, forge(es[24])), 26)
		}, wantErr: ""},
		{name: "insert forged and rehash", mutate: func(es []Entry) []Entry {
			return rehash(slices.Insert(es, 25, forge(es[24])), 26)
		}, useHead: true, wantErr: "entry 51: head mismatch"},
		{name: "edit and rehash", mutate: func(es []Entry) []Entry {
			es[24].Actor = "bob"
			es[24].Hash = es[24].ComputeHash()
			return rehash(es, 25)
		}, useHead: true, wantErr: "entry 50: head mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entries := slices.Clone(orig)
			if tt.mutate != nil {
				entries = tt.mutate(entries)
			}
			var want *Head
			if tt.useHead {
				want = &head
			}
			err := Verify(entries, want)
			checkErr(t, err, tt.wantErr)
		})
	}
}

// checkErr checks that err is nil if want is "", and otherwise wraps
// ErrBroken and contains "audit: " + want.
func checkErr(tb testing.TB, err error, want string) {
	tb.Helper()
	switch {
	case want == "" && err != nil:
		tb.Fatalf("err = %v, want nil", err)
	case want == "":
	case err == nil:
		tb.Fatalf("err = nil, want %q", want)
	case !errors.Is(err, ErrBroken):
		tb.Fatalf("err = %v, does not wrap ErrBroken", err)
	case !strings.HasPrefix(err.Error(), "audit: "+want):
		tb.Fatalf("err = %v, want prefix %q", err, "audit: "+want)
	}
}

func TestVerifyMessage(t *testing.T) {
	entries, _ := testLog(t, 20)
	entries[16].Actor = "eve"
	err := Verify(entries, nil)
	want := "audit: entry 17: hash mismatch (edited): audit: chain broken"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

func TestVerifyEmpty(t *testing.T) {
	checkErr(t, Verify(nil, nil), "")
	checkErr(t, Verify(nil, &Head{}), "")
	checkErr(t, Verify([]Entry{}, &Head{Seq: 1}), "entry 0: head mismatch")
	start := Head{Seq: 7, Hash: Hash{7}}
	checkErr(t, VerifyFrom(start, nil, &start), "")
	checkErr(t, VerifyFrom(start, nil, &Head{}), "entry 7: head mismatch")
}

func TestVerifyFrom(t *testing.T) {
	entries, head := testLog(t, 50)
	start := Head{Seq: entries[19].Seq, Hash: entries[19].Hash}
	suffix := entries[20:]

	checkErr(t, VerifyFrom(start, suffix, &head), "")
	checkErr(t, VerifyFrom(start, suffix[1:], &head), "entry 21: start mismatch")
	checkErr(t, VerifyFrom(Head{Seq: 20}, suffix, &head), "entry 21: start mismatch")
	checkErr(t, VerifyFrom(Head{Seq: 19, Hash: start.Hash}, suffix, &head), "entry 20: start mismatch")
	checkErr(t, Verify(suffix, &head), "entry 1: start mismatch")

	// A signed head older than the log verifies the prefix it names.
	old := Head{Seq: entries[29].Seq, Hash: entries[29].Hash}
	checkErr(t, VerifyFrom(start, suffix[:old.Seq-start.Seq], &old), "")
	checkErr(t, VerifyFrom(start, suffix, &old), "entry 50: head mismatch")

	// Sequence numbers do not wrap around.
	last := Head{Seq: math.MaxUint64, Hash: Hash{1}}
	e := Entry{Seq: 0, Time: time.Unix(0, 0).UTC(), Op: "login", Result: "ok", Prev: last.Hash}
	e.Hash = e.ComputeHash()
	checkErr(t, VerifyFrom(last, []Entry{e}, nil), "entry 0: sequence gap")
}
