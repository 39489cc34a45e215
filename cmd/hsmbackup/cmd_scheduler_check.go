package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/scheduler"
)

// nextRuns is how many runs of each schedule scheduler check shows.
const nextRuns = 3

// schedulerCheckOptions are the flags of scheduler check.
type schedulerCheckOptions struct {
	now time.Time // the next runs are those after it
}

func schedulerCheckCommand() *cli.Command {
	return &cli.Command{
		Name:  "check",
		Usage: "check the config and show each cluster's schedule and its next runs (no HSM, no store)",
		Description: "Reads the config as every command does (a fault is reported with its line\n" +
			"and exits 2), then prints the scheduler's settings, defaults marked, and\n" +
			"for each cluster its schedule (and its drill schedule, if any), its zone\n" +
			"and its next three runs, in the schedule's zone and in UTC. Nothing else\n" +
			"is read: no HSM, no store.",
		Flags: []cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "now", Usage: "show the runs after `TIME` (RFC 3339, 2026-10-31T12:00:00Z) instead of now: to try out a schedule, across a DST change say"},
			jsonFlag(),
		},
		OnUsageError: usageError,
		Action: envAction("scheduler check", func(c *cli.Context, e *env) error {
			opts := schedulerCheckOptions{now: time.Now()}
			if v := c.String("now"); v != "" {
				t, err := time.Parse(time.RFC3339, v)
				if err != nil {
					return usagef("--now %q: want an RFC 3339 time (2026-10-31T12:00:00Z)", v)
				}
				opts.now = t
			}
			return runSchedulerCheck(e, opts)
		}),
	}
}

// runSchedulerCheck prints the scheduler settings of e's config and each
// cluster's schedules with their next runs after opts.now. The config was
// checked as it was read: every schedule in it parses.
func runSchedulerCheck(e *env, opts schedulerCheckOptions) error {
	if e.g.config == "" {
		return usagef("no config: give --config FILE or set $%s", configEnv)
	}
	clusters, err := configuredClusters(e) // sorted by id
	if err != nil {
		return err
	}
	settings := settingsOf(e.cfg.Scheduler)
	if e.g.json {
		if err := writeJSONLine(e.stdout, msgSettings, settingsJSON(settings)); err != nil {
			return err
		}
		for _, cl := range clusters {
			line := clusterScheduleJSON{ClusterID: cl.ID, scheduleJSON: scheduleOf(cl.Backup, opts.now)}
			if !cl.Drill.IsZero() {
				d := scheduleOf(cl.Drill, opts.now)
				line.Drill = &d
			}
			if err := writeJSONLine(e.stdout, msgSchedule, line); err != nil {
				return err
			}
		}
		return nil
	}
	w := e.stdout
	fmt.Fprintf(w, "config %s: valid\n", e.g.config)
	fmt.Fprintln(w, "scheduler:")
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	for _, s := range settings {
		mark := ""
		if s.isDefault {
			mark = " (default)"
		}
		fmt.Fprintf(tw, "  %s:\t%s%s\n", s.name, s.text, mark)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "next runs after %s:\n", opts.now.UTC().Format(time.RFC3339))
	for _, cl := range clusters {
		printCluster(w, cl, opts.now)
	}
	return nil
}

// printCluster prints a cluster's id, then its backup schedule and, if
// it has one, its drill schedule.
func printCluster(w io.Writer, cl scheduler.Cluster, now time.Time) {
	fmt.Fprintln(w, cl.ID)
	printSchedule(w, "backup", cl.Backup, now)
	if !cl.Drill.IsZero() {
		printSchedule(w, "drill", cl.Drill, now)
	}
}

// printSchedule prints one schedule of a cluster, labelled (backup…): its
// spec and zone and its next runs after now, each in the schedule's zone
// and in UTC; "not scheduled" for the zero Schedule.
func printSchedule(w io.Writer, label string, s scheduler.Schedule, now time.Time) {
	if s.IsZero() {
		fmt.Fprintf(w, "  %s: not scheduled\n", label)
		return
	}
	fmt.Fprintf(w, "  %s: %s (zone %s)\n", label, s.Spec(), s.Location())
	for _, r := range runsText(upcoming(s, now)) {
		fmt.Fprintf(w, "    %s\n", r)
	}
}

// upcoming returns the next nextRuns runs of s after now, in s's zone (fewer
// if there are none within the scheduler's search window).
func upcoming(s scheduler.Schedule, now time.Time) []time.Time {
	out := []time.Time{}
	for t := now; len(out) < nextRuns; {
		if t = scheduler.Next(s, t); t.IsZero() {
			break
		}
		out = append(out, t)
	}
	return out
}

// runsText are runs, each in its zone with the zone's abbreviation and
// the UTC instant: "2026-12-04 02:30 CET (01:30Z)", with the UTC date too
// where it is another day; with the seconds if a run has any (a schedule
// with a seconds field).
func runsText(ts []time.Time) []string {
	clock := "15:04"
	for _, t := range ts {
		if t.Second() != 0 {
			clock = "15:04:05"
		}
	}
	out := make([]string, len(ts))
	for i, t := range ts {
		u := t.UTC()
		utc := u.Format(clock + "Z")
		if u.Format(time.DateOnly) != t.Format(time.DateOnly) {
			utc = u.Format(time.DateOnly + " " + clock + "Z")
		}
		out[i] = t.Format(time.DateOnly+" "+clock+" MST") + " (" + utc + ")"
	}
	return out
}

// schedulerSetting is one scheduler setting as scheduler check shows it.
type schedulerSetting struct {
	name, key string // "lease duration", and its config key lease_duration
	text      string
	value     any // for JSON: a number, or a duration as text
	isDefault bool
}

// settingsOf returns the effective scheduler settings of c, each marked
// if it is the default (unset).
func settingsOf(c schedulerConfig) []schedulerSetting {
	s := c.settings()
	dur := func(name, key string, d time.Duration, p *time.Duration) schedulerSetting {
		return schedulerSetting{name: name, key: key, text: durationText(d), value: durationText(d), isDefault: p == nil}
	}
	return []schedulerSetting{
		{name: "concurrency", key: "concurrency", text: fmt.Sprint(s.Concurrency), value: s.Concurrency, isDefault: c.Concurrency == nil},
		dur("jitter", "jitter", s.Jitter, c.Jitter),
		dur("lease duration", "lease_duration", s.LeaseDuration, c.LeaseDuration),
		dur("drain timeout", "drain_timeout", s.DrainTimeout, c.DrainTimeout),
	}
}

// durationText is d as the config writes it: 2m, not 2m0s.
func durationText(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// The message types of scheduler check --json.
const (
	msgSettings = "settings"
	msgSchedule = "schedule"
)

// settingsJSON is the settings line: each setting by its config key, and
// the keys left at their defaults.
func settingsJSON(settings []schedulerSetting) map[string]any {
	m := map[string]any{}
	defaults := []string{}
	for _, s := range settings {
		m[s.key] = s.value
		if s.isDefault {
			defaults = append(defaults, s.key)
		}
	}
	sort.Strings(defaults)
	m["defaults"] = defaults
	return m
}

// scheduleJSON is a schedule in JSON: the spec ("" when not scheduled), its
// zone and its next runs (RFC 3339, in its zone).
type scheduleJSON struct {
	Schedule string      `json:"schedule"`
	Zone     string      `json:"zone,omitempty"`
	Next     []time.Time `json:"next"`
}

func scheduleOf(s scheduler.Schedule, now time.Time) scheduleJSON {
	if s.IsZero() {
		return scheduleJSON{Next: []time.Time{}}
	}
	return scheduleJSON{Schedule: s.Spec(), Zone: s.Location().String(), Next: upcoming(s, now)}
}

// clusterScheduleJSON is a cluster's line of scheduler check --json: its
// backup schedule, and its drill schedule if it has one.
type clusterScheduleJSON struct {
	ClusterID string `json:"cluster_id"`
	scheduleJSON
	Drill *scheduleJSON `json:"drill,omitempty"`
}
