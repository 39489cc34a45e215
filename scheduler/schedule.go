// Package scheduler decides when each configured cluster is due for a
// backup: it parses and checks cron schedules (robfig/cron/v3 syntax,
// guarded against that parser's traps) and computes, from a clock and the
// time of a cluster's newest READY backup, whether a backup is due and for
// which slot. It takes no backups itself and touches no HSM: the decision
// is pure, so that it is tested with a fake clock. docs/SCHEDULER.md
// describes the rules.
package scheduler

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// ErrSchedule is the sentinel of every fault of a schedule spec:
// errors.Is(err, ErrSchedule) holds for what ParseSchedule returns.
var ErrSchedule = errors.New("invalid schedule")

// Schedule is a parsed, checked cron schedule. Its times are evaluated in
// its zone: the CRON_TZ= prefix's, else UTC, never the machine's. The
// zero Schedule is not valid; get one from ParseSchedule.
type Schedule struct {
	spec string
	loc  *time.Location
	s    *cron.SpecSchedule
}

// Spec is the schedule as written.
func (s Schedule) Spec() string { return s.spec }

// Location is the zone the schedule is evaluated in (UTC by default).
func (s Schedule) Location() *time.Location { return s.loc }

// IsZero reports whether s is the zero Schedule.
func (s Schedule) IsZero() bool { return s.s == nil }

// parser is robfig's standard parser, five fields (minute hour
// day-of-month month day-of-week) and @descriptors, with an optional
// leading seconds field: "*/5 * * * * *" fires every five seconds, for
// trials and tests of the scheduler itself.
var parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// neverCheckFrom is the reference the never-fires check searches from: a
// fixed time, so that the check does not depend on the clock. Every
// five-field spec that fires at all fires within robfig's five-year
// search window from any time.
var neverCheckFrom = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// ParseSchedule parses a cron spec: five fields ("30 2 * * *"), six with
// a leading seconds field ("*/10 * * * * *"), or a descriptor (@yearly, @monthly, @weekly, @daily, @midnight, @hourly),
// optionally after a "CRON_TZ=Zone " prefix naming an IANA zone. It
// refuses, with an error wrapping ErrSchedule, what robfig/cron v3.0.1
// would panic on or accept wrongly: the legacy TZ= prefix, a prefix with
// no space after the zone (robfig/cron#554 panics), @every (not tied to
// the clock, so it has no slots), the machine-dependent zone Local, and a
// spec that never fires (0 0 31 2 *).
func ParseSchedule(spec string) (Schedule, error) {
	spec = strings.TrimSpace(spec)
	fail := func(format string, args ...any) (Schedule, error) {
		return Schedule{}, fmt.Errorf("%w %q: %s", ErrSchedule, spec, fmt.Sprintf(format, args...))
	}
	if spec == "" {
		return fail("empty")
	}
	body := spec
	zone := "UTC"
	switch {
	case strings.HasPrefix(spec, "TZ="):
		return fail("the TZ= prefix is not supported: use CRON_TZ=ZONE")
	case strings.HasPrefix(spec, "CRON_TZ="):
		rest := strings.TrimPrefix(spec, "CRON_TZ=")
		z, b, ok := strings.Cut(rest, " ")
		if !ok || strings.TrimSpace(b) == "" {
			return fail("CRON_TZ=ZONE must be followed by a space and the schedule")
		}
		if z == "" {
			return fail("CRON_TZ= names no zone")
		}
		zone, body = z, strings.TrimSpace(b)
	}
	if strings.Contains(body, "TZ=") {
		return fail("a zone prefix goes first, once: CRON_TZ=ZONE then the schedule")
	}
	if strings.HasPrefix(body, "@every") {
		return fail("@every is not tied to the clock: use five fields or @hourly, @daily…")
	}
	if zone == "Local" {
		return fail("zone Local depends on the machine: name an IANA zone (CRON_TZ=Europe/Paris) or leave UTC")
	}
	loc, err := time.LoadLocation(zone)
	if err != nil {
		return fail("unknown time zone %q", zone)
	}
	parsed, err := parse("CRON_TZ=" + zone + " " + body)
	if err != nil {
		return fail("%v", err)
	}
	ss, ok := parsed.(*cron.SpecSchedule)
	if !ok { // only @every gives another type, refused above
		return fail("unsupported kind of schedule")
	}
	s := Schedule{spec: spec, loc: loc, s: ss}
	if s.s.Next(neverCheckFrom).IsZero() {
		return fail("never fires (no such date)")
	}
	return s, nil
}

// parse is robfig's parser with its panics turned into errors.
func parse(spec string) (s cron.Schedule, err error) {
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("unparsable (%v)", r)
		}
	}()
	return parser.Parse(spec)
}
