package main

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/scheduler"
)

func mustSchedule(t *testing.T, spec string) scheduler.Schedule {
	t.Helper()
	s, err := scheduler.ParseSchedule(spec)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPrintClusterDrill: a cluster with a drill schedule gets a drill
// line after its backup line, with its own runs in its own zone; one
// without gets none. The Berlin backup has no run on 2026-03-29, whose
// 02:30 the clocks skip.
func TestPrintClusterDrill(t *testing.T) {
	now := time.Date(2026, 3, 28, 12, 0, 0, 0, time.UTC)
	cl := scheduler.Cluster{ID: "c1", Backup: mustSchedule(t, "CRON_TZ=Europe/Berlin 30 2 * * *"), Drill: mustSchedule(t, "CRON_TZ=Asia/Tokyo 0 6 * * 1")}
	var b strings.Builder
	printCluster(&b, cl, now)
	want := `c1
  backup: CRON_TZ=Europe/Berlin 30 2 * * * (zone Europe/Berlin)
    2026-03-30 02:30 CEST (00:30Z)
    2026-03-31 02:30 CEST (00:30Z)
    2026-04-01 02:30 CEST (00:30Z)
  drill: CRON_TZ=Asia/Tokyo 0 6 * * 1 (zone Asia/Tokyo)
    2026-03-30 06:00 JST (2026-03-29 21:00Z)
    2026-04-06 06:00 JST (2026-04-05 21:00Z)
    2026-04-13 06:00 JST (2026-04-12 21:00Z)
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}

	b.Reset()
	printCluster(&b, scheduler.Cluster{ID: "c2", Drill: cl.Drill}, now)
	if !strings.HasPrefix(b.String(), "c2\n  backup: not scheduled\n  drill: CRON_TZ=Asia/Tokyo") {
		t.Errorf("unscheduled backup, scheduled drill:\n%s", b.String())
	}
	b.Reset()
	printCluster(&b, scheduler.Cluster{ID: "c3", Backup: cl.Backup}, now)
	if strings.Contains(b.String(), "drill") {
		t.Errorf("a drill line for a cluster without a drill:\n%s", b.String())
	}

	var out bytes.Buffer
	d := scheduleOf(cl.Drill, now)
	if err := writeJSONLine(&out, msgSchedule, clusterScheduleJSON{ClusterID: "c1", scheduleJSON: scheduleOf(cl.Backup, now), Drill: &d}); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Schedule string `json:"schedule"`
		Drill    struct {
			Schedule string   `json:"schedule"`
			Zone     string   `json:"zone"`
			Next     []string `json:"next"`
		} `json:"drill"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.Schedule != cl.Backup.Spec() || got.Drill.Schedule != cl.Drill.Spec() || got.Drill.Zone != "Asia/Tokyo" ||
		len(got.Drill.Next) != 3 || got.Drill.Next[0] != "2026-03-30T06:00:00+09:00" {
		t.Errorf("JSON line %s", out.String())
	}
}

// TestRunsText: runs in their zone and in UTC, the UTC date where it is
// another day's, the seconds where a schedule's seconds field sets them.
func TestRunsText(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	got := runsText([]time.Time{
		time.Date(2026, 12, 4, 2, 30, 0, 0, time.UTC),
		time.Date(2026, 11, 1, 1, 30, 0, 0, ny),
		time.Date(2026, 12, 4, 22, 0, 0, 0, ny),
	})
	want := []string{"2026-12-04 02:30 UTC (02:30Z)", "2026-11-01 01:30 EDT (05:30Z)", "2026-12-04 22:00 EST (2026-12-05 03:00Z)"}
	if !slices.Equal(got, want) {
		t.Errorf("runsText = %q, want %q", got, want)
	}
	s := mustSchedule(t, "*/20 * * * * *")
	got = runsText(upcoming(s, time.Date(2026, 11, 1, 4, 0, 0, 0, time.UTC)))
	want = []string{"2026-11-01 04:00:20 UTC (04:00:20Z)", "2026-11-01 04:00:40 UTC (04:00:40Z)", "2026-11-01 04:01:00 UTC (04:01:00Z)"}
	if !slices.Equal(got, want) {
		t.Errorf("runs of %s: %q, want %q", s.Spec(), got, want)
	}
}
