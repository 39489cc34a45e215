package client

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
)

// chain is a log of n entries, and its head.
func chain(n int, actor string) ([]audit.Entry, audit.Head) {
	l := audit.New(audit.Head{})
	var out []audit.Entry
	for i := range n {
		out = append(out, l.Append(time.Unix(1_800_000_000+int64(i), 0), actor, "key.wrap", fmt.Sprint(i), "ok"))
	}
	return out, l.Head()
}

// pages answers from log as an HSM would: at most 7 entries from from,
// with head; edit, if set, changes each page before it goes.
func pages(log []audit.Entry, head audit.Head, edit func(from uint64, p []audit.Entry) []audit.Entry) func(uint64) (api.AuditResponse, error) {
	return func(from uint64) (api.AuditResponse, error) {
		var p []audit.Entry
		if from <= uint64(len(log)) {
			p = append(p, log[from-1:min(uint64(len(log)), from+6)]...)
		}
		if edit != nil {
			p = edit(from, p)
		}
		return api.AuditResponse{Entries: p, Head: hsmcore.SignedHead{Serial: "HSM-1", Head: head}}, nil
	}
}

// readAuditLog returns the whole log up to the first page's head, page
// by page, and refuses pages that do not chain to it.
func TestReadAuditLogChainsPages(t *testing.T) {
	log, head := chain(20, "alice")
	var got []audit.Entry
	visits := 0
	sh, err := readAuditLog(pages(log, head, nil), func(p []audit.Entry) error { visits++; got = append(got, p...); return nil })
	if err != nil || sh.Head != head || len(got) != 20 || visits != 3 || got[19] != log[19] {
		t.Fatalf("read of 20 entries in pages of 7: head %v (want %v), %d entries in %d pages, %v", sh.Head, head, len(got), visits, err)
	}

	// The log grows while it is read: the read ends at the first head.
	longer, _ := chain(25, "alice")
	got = nil
	first := true
	grown := func(from uint64) (api.AuditResponse, error) {
		r, err := pages(longer, head, nil)(from)
		if !first {
			_, r.Head.Head = chain(25, "alice")
		}
		first = false
		return r, err
	}
	if sh, err := readAuditLog(grown, func(p []audit.Entry) error { got = append(got, p...); return nil }); err != nil || sh.Head != head || len(got) != 20 {
		t.Fatalf("read of a growing log: head %v, %d entries, %v; want the 20 to the first head", sh.Head, len(got), err)
	}

	forked, _ := chain(20, "mallory") // another log of the same length
	for _, c := range []struct {
		name string
		edit func(from uint64, p []audit.Entry) []audit.Entry
	}{
		{"an entry edited", func(from uint64, p []audit.Entry) []audit.Entry {
			if from == 8 {
				p[2].Object = "edited"
			}
			return p
		}},
		{"an entry left out", func(from uint64, p []audit.Entry) []audit.Entry {
			if from == 8 {
				p = append(p[:1:1], p[2:]...)
			}
			return p
		}},
		{"a page from another log", func(from uint64, p []audit.Entry) []audit.Entry {
			if from == 8 {
				p = forked[7:14]
			}
			return p
		}},
		{"the log stopping short of its head", func(from uint64, p []audit.Entry) []audit.Entry {
			if from > 14 {
				return nil
			}
			return p
		}},
		{"a page starting elsewhere", func(from uint64, p []audit.Entry) []audit.Entry {
			if from == 8 {
				p = log[8:15]
			}
			return p
		}},
	} {
		_, err := readAuditLog(pages(log, head, c.edit), func([]audit.Entry) error { return nil })
		if !errors.Is(err, audit.ErrBroken) || !errors.Is(err, hsmcore.ErrTampered) {
			t.Errorf("%s: %v, want audit.ErrBroken and hsmcore.ErrTampered", c.name, err)
		}
	}

	// A head the chain does not reach: the tail removed and the head
	// replaced by another log's.
	_, other := chain(20, "mallory")
	if _, err := readAuditLog(pages(log, other, nil), func([]audit.Entry) error { return nil }); !errors.Is(err, audit.ErrBroken) {
		t.Errorf("a chain that does not end at the head: %v, want audit.ErrBroken", err)
	}
}
