package audit

import (
	"fmt"
)

// Verify checks that entries are a whole log from its first entry: see
// VerifyFrom, with start the zero Head.
func Verify(entries []Entry, want *Head) error {
	return VerifyFrom(Head{}, entries, want)
}

// VerifyFrom checks that entries continue a log right after start, the Head
// of the entry before the first one. It makes these checks, in this order,
// entry by entry, and stops at the first failure:
//
//  1. the first entry has Seq start.Seq+1 and Prev start.Hash
//     ("start mismatch": entries missing or replaced at the start);
//  2. each later entry has Seq one more than the entry before it
//     ("sequence gap": an entry removed or reordered);
//  3. each later entry's Prev is the Hash of the entry before it
//     ("prev mismatch": an entry inserted or replaced);
//  4. each entry's Time is within the range of UnixNano, and its Hash is
//     its ComputeHash ("time out of range", "hash mismatch": edited);
//  5. if want is not nil, the log ends at want: the last entry's Seq and
//     Hash equal it, or start equals it if entries is empty
//     ("head mismatch": tail removed or log rewritten).
//
// Every error wraps ErrBroken and names the check and the sequence number
// at which the chain broke, counted from start rather than read from the
// entry, which may have been edited.
//
// Without want, Verify cannot detect a removed tail, nor a log rewritten by
// someone who recomputed every hash. The want Head must come from somewhere
// the log's writer cannot forge, such as a Head signed by the HSM. A signed
// Head older than the log verifies a prefix: pass entries[:want.Seq-start.Seq].
// Times are not checked for order, since a device clock may be set back.
func VerifyFrom(start Head, entries []Entry, want *Head) error {
	prev := start
	for i := range entries {
		e := &entries[i]
		n := prev.Seq + 1 // the sequence number e must have
		switch {
		case i == 0 && (e.Seq != n || e.Prev != prev.Hash):
			return broken(n, "start mismatch (removed or replaced): found seq %d", e.Seq)
		case e.Seq != n || n == 0:
			return broken(n, "sequence gap (removed or reordered): found seq %d", e.Seq)
		case e.Prev != prev.Hash:
			return broken(n, "prev mismatch (inserted or replaced)")
		case !timeInRange(e.Time):
			return broken(n, "time out of range (edited)")
		case e.ComputeHash() != e.Hash:
			return broken(n, "hash mismatch (edited)")
		}
		prev = Head{Seq: e.Seq, Hash: e.Hash}
	}
	if want != nil && prev != *want {
		return broken(prev.Seq, "head mismatch (tail removed or log rewritten): want seq %d", want.Seq)
	}
	return nil
}

func broken(seq uint64, format string, args ...any) error {
	return fmt.Errorf("audit: entry %d: %s: %w", seq, fmt.Sprintf(format, args...), ErrBroken)
}
