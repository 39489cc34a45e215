package server

import (
	"encoding/json"
	"errors"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
)

// GET /v1/audit's page: defaults, bounds, and a clear refusal of
// anything else.
func TestAuditQuery(t *testing.T) {
	for _, c := range []struct {
		query string
		from  uint64
		limit int
	}{
		{"", 1, api.MaxAuditPage},
		{"from=70000", 70000, api.MaxAuditPage},
		{"from=18446744073709551615&limit=1", 1<<64 - 1, 1},
		{"limit=" + strconv.Itoa(api.MaxAuditPage), 1, api.MaxAuditPage},
	} {
		q, _ := url.ParseQuery(c.query)
		from, limit, err := auditQuery(q)
		if err != nil || from != c.from || limit != c.limit {
			t.Errorf("%q: from %d, limit %d, %v; want %d, %d", c.query, from, limit, err, c.from, c.limit)
		}
	}
	for _, query := range []string{"from=0", "from=-1", "from=1e3", "from=18446744073709551616", "from=x",
		"limit=0", "limit=-5", "limit=" + strconv.Itoa(api.MaxAuditPage+1), "limit=ten"} {
		q, _ := url.ParseQuery(query)
		if _, _, err := auditQuery(q); !errors.Is(err, hsmcore.ErrInvalid) {
			t.Errorf("%q: %v, want ErrInvalid", query, err)
		}
	}
}

// A page stays within its byte budget, cut between entries, and holds at
// least one entry whatever its size.
func TestPageWithin(t *testing.T) {
	l := audit.New(audit.Head{})
	var entries []audit.Entry
	for i := range 10 {
		entries = append(entries, l.Append(time.Unix(1_800_000_000, 0), "alice", "key.wrap", strings.Repeat("x", 100*i), "ok"))
	}
	size := func(es []audit.Entry) int {
		n := 0
		for _, e := range es {
			b, _ := json.Marshal(e)
			n += len(b) + 1
		}
		return n
	}
	for _, budget := range []int{1, 500, 2000, 5000, size(entries), 1 << 20} {
		got, err := pageWithin(entries, budget)
		if err != nil {
			t.Fatal(err)
		}
		n := len(got)
		switch {
		case n == 0 || !slices.Equal(got, entries[:n]):
			t.Fatalf("budget %d: %d entries, not a prefix of at least one", budget, n)
		case n > 1 && size(got) > budget:
			t.Fatalf("budget %d: %d entries of %d bytes", budget, n, size(got))
		case n < len(entries) && size(entries[:n+1]) <= budget:
			t.Fatalf("budget %d: cut at %d entries, though %d fit", budget, n, n+1)
		}
	}
}
