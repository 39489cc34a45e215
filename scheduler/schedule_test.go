package scheduler

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseSchedule(t *testing.T) {
	good := []struct{ spec, zone string }{
		{"30 2 * * *", "UTC"},
		{"  */15 * * * 1-5 ", "UTC"},
		{"@daily", "UTC"},
		{"@hourly", "UTC"},
		{"@weekly", "UTC"},
		{"@yearly", "UTC"},
		{"0 0 29 2 *", "UTC"},
		{"CRON_TZ=America/New_York 30 1 * * *", "America/New_York"},
		{"CRON_TZ=Europe/Paris @daily", "Europe/Paris"},
		{"CRON_TZ=UTC 0 0 * * *", "UTC"},
		{"*/5 * * * * *", "UTC"},
		{"CRON_TZ=Asia/Tokyo 30 0 0 * * *", "Asia/Tokyo"},
	}
	for _, g := range good {
		s, err := ParseSchedule(g.spec)
		if err != nil {
			t.Errorf("ParseSchedule(%q): %v", g.spec, err)
			continue
		}
		if s.Location().String() != g.zone || s.Spec() != strings.TrimSpace(g.spec) {
			t.Errorf("ParseSchedule(%q): zone %s spec %q", g.spec, s.Location(), s.Spec())
		}
	}
	bad := []struct{ spec, want string }{
		{"", "empty"},
		{"TZ=UTC 0 0 * * *", "use CRON_TZ="},
		{"TZ=UTC", "use CRON_TZ="},
		{"TZ=", "use CRON_TZ="},
		{"CRON_TZ=UTC", "followed by a space"},
		{"CRON_TZ=", "followed by a space"},
		{"CRON_TZ= 0 0 * * *", "names no zone"},
		{"CRON_TZ=Mars/Olympus 0 0 * * *", "unknown time zone"},
		{"CRON_TZ=Local 0 0 * * *", "depends on the machine"},
		{"CRON_TZ=UTC TZ=UTC 0 0 * * *", "goes first"},
		{"0 0 31 2 *", "never fires"},
		{"0 0 30 2 *", "never fires"},
		{"@every 1h", "@every"},
		{"banana", "expected 5 to 6 fields"},
		{"0 0 * *", "found 4"},
		{"0 0 * * * * *", "found 7"},
		{"60 * * * * *", "above maximum"},
		{"61 * * * *", "above maximum"},
		{"@fortnightly", "unrecognized descriptor"},
	}
	for _, b := range bad {
		_, err := ParseSchedule(b.spec)
		if err == nil || !errors.Is(err, ErrSchedule) || !strings.Contains(err.Error(), b.want) {
			t.Errorf("ParseSchedule(%q) = %v, want an ErrSchedule with %q", b.spec, err, b.want)
		}
	}
}

func FuzzParseSchedule(f *testing.F) {
	for _, s := range []string{"30 2 * * *", "@daily", "CRON_TZ=UTC", "TZ=", "CRON_TZ=Europe/Paris 0 0 31 2 *", "@every 1s", "* * * * *"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		s, err := ParseSchedule(spec)
		if err != nil {
			if !errors.Is(err, ErrSchedule) {
				t.Fatalf("ParseSchedule(%q): %v does not wrap ErrSchedule", spec, err)
			}
			return
		}
		now := time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC)
		if Next(s, now).IsZero() {
			t.Fatalf("ParseSchedule(%q) accepted a schedule with no next slot", spec)
		}
	})
}
