package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/scheduler"
)

func schedulerStatusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "print every cluster's readiness (RPO, last run, last drill) from the store alone",
		Description: "Reads what the scheduler's replicas left in the store, and the backups\n" +
			"themselves, so any machine with the config can ask. A cluster is red when\n" +
			"a slot went without a READY backup for longer than its grace (a quarter of\n" +
			"its period, at least two lease durations) or its last drill failed.",
		Flags:        serviceFlags(),
		OnUsageError: usageError,
		Action: action("scheduler status", func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			e, err := newStoreEnv(c)
			if err != nil {
				return err
			}
			defer e.close()
			return runSchedulerStatus(c.Context, e, time.Now())
		}),
	}
}

// configuredClusters are the config's clusters with their schedules
// parsed (checked when the config was loaded).
func configuredClusters(e *env) ([]scheduler.Cluster, error) {
	var out []scheduler.Cluster
	for _, id := range e.cfg.clusterIDs() {
		cl, err := clusterSchedules(id, e.cfg.Clusters[id])
		if err != nil {
			return nil, err
		}
		out = append(out, cl)
	}
	if len(out) == 0 {
		return nil, usagef("no clusters in the config")
	}
	return out, nil
}

// clusterSchedules is cluster id's schedules, parsed (checked when the
// config was loaded): its backups' and its drill's.
func clusterSchedules(id string, cc *clusterConfig) (scheduler.Cluster, error) {
	cl := scheduler.Cluster{ID: id}
	var err error
	if cc.Schedule != "" {
		if cl.Backup, err = scheduler.ParseSchedule(cc.Schedule); err != nil {
			return cl, fmt.Errorf("cluster %s: %w", id, err)
		}
	}
	if cc.Drill != nil && cc.Drill.Schedule != "" {
		if cl.Drill, err = scheduler.ParseSchedule(cc.Drill.Schedule); err != nil {
			return cl, fmt.Errorf("cluster %s: drill: %w", id, err)
		}
	}
	return cl, nil
}

func runSchedulerStatus(ctx context.Context, e *env, now time.Time) error {
	clusters, err := configuredClusters(e)
	if err != nil {
		return err
	}
	pub, err := e.publicKey()
	if err != nil {
		return err
	}
	st, err := scheduler.Collect(ctx, e.repo, pub, clusters, e.cfg.Scheduler.settings(), now)
	if err != nil {
		return err
	}
	if e.g.json {
		red := 0
		for _, s := range st {
			if s.Colour == scheduler.Red {
				red++
			}
		}
		return writeJSONList(e.stdout, st, struct {
			Count int `json:"count"`
			Red   int `json:"red"`
		}{len(st), red})
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tSTATE\tNEWEST READY\tRPO\tLAST RUN\tNEXT RUN\tLAST DRILL\tPROBLEMS")
	for _, s := range st {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Cluster, strings.ToUpper(string(s.Colour)),
			orNone(s.NewestBackup), rpoText(s), lastRunText(s.LastRun), nextText(s.NextRun, now), drillText(s.Drill), orNone(strings.Join(s.Problems, "; ")))
	}
	return tw.Flush()
}

func rpoText(s scheduler.ClusterStatus) string {
	if s.NewestReady == nil {
		return "-"
	}
	return scheduler.Age(time.Duration(s.RPOSeconds * float64(time.Second)))
}

func lastRunText(r *scheduler.RunRecord) string {
	if r == nil {
		return "-"
	}
	result := "ok"
	if !r.OK {
		result = "FAILED"
	}
	return result + " " + r.Finished.UTC().Format(time.DateTime)
}

func nextText(t *time.Time, now time.Time) string {
	if t == nil {
		return "not scheduled"
	}
	return "in " + scheduler.Age(t.Sub(now))
}

func drillText(d *scheduler.DrillStatus) string {
	switch {
	case d == nil:
		return "-"
	case d.Last == nil:
		return "not run yet"
	case d.Last.OK:
		return fmt.Sprintf("passed %s (restore %.2fs)", d.Last.Finished.UTC().Format(time.DateTime), d.Last.RestoreSeconds)
	default:
		return "FAILED " + d.Last.Finished.UTC().Format(time.DateTime)
	}
}
