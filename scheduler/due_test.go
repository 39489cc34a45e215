package scheduler

import (
	"testing"
	"time"
)

func mustParse(t testing.TB, spec string) Schedule {
	t.Helper()
	s, err := ParseSchedule(spec)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t.UTC()
}

// TestDue runs the due rule against a fake clock: each case is a
// schedule, the newest READY backup's time and now.
func TestDue(t *testing.T) {
	const daily = "30 2 * * *"
	const nyDaily0230 = "CRON_TZ=America/New_York 30 2 * * *"
	const nyDaily0130 = "CRON_TZ=America/New_York 30 1 * * *"
	cases := []struct {
		name      string
		spec      string
		lastReady string // "" for none
		now       string
		slot      string // RFC 3339; "" for none
		due       bool
		next      string // the first slot after now
	}{
		{"first run, no backup yet", daily, "", "2026-12-03T08:00:00Z", "2026-12-03T02:30:00Z", true, "2026-12-04T02:30:00Z"},
		{"just ran", daily, "2026-12-03T02:31:10Z", "2026-12-03T02:32:00Z", "2026-12-03T02:30:00Z", false, "2026-12-04T02:30:00Z"},
		{"almost due", daily, "2026-12-03T02:31:10Z", "2026-12-04T02:29:59.999Z", "2026-12-03T02:30:00Z", false, "2026-12-04T02:30:00Z"},
		{"at the slot", daily, "2026-12-03T02:31:10Z", "2026-12-04T02:30:00Z", "2026-12-04T02:30:00Z", true, "2026-12-05T02:30:00Z"},
		{"a backup at the slot's instant covers it", daily, "2026-12-04T02:30:00Z", "2026-12-04T02:30:00Z", "2026-12-04T02:30:00Z", false, "2026-12-05T02:30:00Z"},
		{"missed while down: one catch-up, the latest slot", daily, "2026-11-28T02:31:00Z", "2026-12-03T08:00:00Z", "2026-12-03T02:30:00Z", true, "2026-12-04T02:30:00Z"},
		{"clock stepped back below the last backup", daily, "2026-12-03T09:00:00Z", "2026-12-03T08:00:00Z", "2026-12-03T02:30:00Z", false, "2026-12-04T02:30:00Z"},
		{"clock stepped back a day", daily, "2026-12-03T02:31:00Z", "2026-12-02T20:00:00Z", "2026-12-02T02:30:00Z", false, "2026-12-03T02:30:00Z"},
		{"hourly, sub-second now", "@hourly", "2026-12-03T09:00:05Z", "2026-12-03T10:00:00.5Z", "2026-12-03T10:00:00Z", true, "2026-12-03T11:00:00Z"},
		{"weekly: Sunday 00:00", "@weekly", "2026-11-22T00:10:00Z", "2026-12-03T08:00:00Z", "2026-11-29T00:00:00Z", true, "2026-12-06T00:00:00Z"},
		{"every 29 February", "0 0 29 2 *", "", "2026-12-03T08:00:00Z", "2024-02-29T00:00:00Z", true, "2028-02-29T00:00:00Z"},
		{"every minute", "* * * * *", "2026-12-03T07:59:00Z", "2026-12-03T08:00:30Z", "2026-12-03T08:00:00Z", true, "2026-12-03T08:01:00Z"},
		// 03:00 Europe/Paris (CET, UTC+1) is 02:00Z.
		{"CRON_TZ zone", "CRON_TZ=Europe/Paris 0 3 * * *", "2026-12-02T02:05:00Z", "2026-12-03T02:30:00Z", "2026-12-03T02:00:00Z", true, "2026-12-04T02:00:00Z"},
		{"CRON_TZ zone, before its slot", "CRON_TZ=Europe/Paris 0 3 * * *", "2026-12-02T02:05:00Z", "2026-12-03T01:59:00Z", "2026-12-02T02:00:00Z", false, "2026-12-03T02:00:00Z"},
		// Spring forward, 2026-03-08: 02:00 EST becomes 03:00 EDT, so
		// 02:30 does not exist that day and robfig skips the day.
		{"DST spring forward: the missing 02:30 is skipped", nyDaily0230, "2026-03-07T07:31:00Z", "2026-03-08T16:00:00Z", "2026-03-07T07:30:00Z", false, "2026-03-09T06:30:00Z"},
		{"DST spring forward: the next day is due", nyDaily0230, "2026-03-07T07:31:00Z", "2026-03-09T06:31:00Z", "2026-03-09T06:30:00Z", true, "2026-03-10T06:30:00Z"},
		// Fall back, 2026-11-01: 01:30 happens twice, 05:30Z (EDT) and
		// 06:30Z (EST): two instants, two slots.
		{"DST fall back: the first 01:30 (EDT)", nyDaily0130, "2026-10-31T05:31:00Z", "2026-11-01T05:45:00Z", "2026-11-01T05:30:00Z", true, "2026-11-01T06:30:00Z"},
		{"DST fall back: the second 01:30 (EST) is a slot of its own", nyDaily0130, "2026-11-01T05:31:00Z", "2026-11-01T06:45:00Z", "2026-11-01T06:30:00Z", true, "2026-11-02T06:30:00Z"},
		{"DST fall back: both done", nyDaily0130, "2026-11-01T06:31:00Z", "2026-11-01T16:00:00Z", "2026-11-01T06:30:00Z", false, "2026-11-02T06:30:00Z"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := mustParse(t, c.spec)
			var last time.Time
			if c.lastReady != "" {
				last = utc(c.lastReady)
			}
			now := utc(c.now)
			slot, due := Due(s, last, now)
			if !slot.Equal(utc(c.slot)) || due != c.due {
				t.Errorf("Due(%q, %s, %s) = %s, %v; want %s, %v", c.spec, c.lastReady, c.now, slot.UTC().Format(time.RFC3339), due, c.slot, c.due)
			}
			if slot.Location() != s.Location() {
				t.Errorf("slot in %s, want the schedule's zone %s", slot.Location(), s.Location())
			}
			if next := Next(s, now); !next.Equal(utc(c.next)) || next.Location() != s.Location() {
				t.Errorf("Next(%q, %s) = %s, want %s", c.spec, c.now, next, c.next)
			}
		})
	}
}

// TestDueNoRepeat: after a backup is taken for the slot Due named, it is
// not due again until the next slot, whatever the polling rate.
func TestDueNoRepeat(t *testing.T) {
	s := mustParse(t, "CRON_TZ=America/New_York 0 */6 * * *")
	now := utc("2026-10-30T00:00:00Z")
	var last time.Time
	backups := 0
	for end := now.Add(7 * 24 * time.Hour); now.Before(end); now = now.Add(7 * time.Minute) {
		if _, due := Due(s, last, now); due {
			backups++
			last = now.Add(time.Minute) // the backup takes a minute
		}
	}
	// 00, 06, 12 and 18 local time: the catch-up of 10-29 18:00 EDT,
	// then four a day from 10-30 to 11-05 (across the fall back).
	if backups != 29 {
		t.Errorf("%d backups in a week of a 6-hourly schedule, want 29", backups)
	}
}

func TestZeroSchedule(t *testing.T) {
	var s Schedule
	if !s.IsZero() || !Next(s, time.Now()).IsZero() {
		t.Error("the zero Schedule has a next slot")
	}
	if _, due := Due(s, time.Time{}, time.Now()); due {
		t.Error("the zero Schedule is due")
	}
}
