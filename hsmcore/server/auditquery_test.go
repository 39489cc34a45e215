package server

import (
	"errors"
	"net/url"
	"strconv"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
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
