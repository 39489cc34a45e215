package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/urfave/cli/v2"
)

// pruneOptions are the flags of backup prune; nil limits are the config's.
type pruneOptions struct {
	cluster       string
	retentionDays *int
	keepLast      *int
	dryRun        bool
}

func pruneBackups(e *env, c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	opts := pruneOptions{cluster: c.String("cluster"), dryRun: c.Bool("dry-run")}
	if c.IsSet("retention-days") {
		opts.retentionDays = ptr(c.Int("retention-days"))
	}
	if c.IsSet("keep-last") {
		opts.keepLast = ptr(c.Int("keep-last"))
	}
	return runPrune(c.Context, e, opts)
}

// runPrune applies retention to every cluster (or opts.cluster) and prints
// what changed, or with opts.dryRun what would.
func runPrune(ctx context.Context, e *env, opts pruneOptions) error {
	key, err := e.signingKey()
	if err != nil {
		return err
	}
	policy := func(cluster string) backup.Policy {
		r := e.cfg.Retention
		if cc := e.cfg.Clusters[cluster]; cc != nil && cc.Retention != nil {
			r = *cc.Retention
		}
		p := backup.Policy{RetentionDays: r.Days, KeepLast: r.KeepLast}
		if opts.retentionDays != nil {
			p.RetentionDays = *opts.retentionDays
		}
		if opts.keepLast != nil {
			p.KeepLast = *opts.keepLast
		}
		return p
	}
	if err := policy(opts.cluster).Validate(); err != nil {
		return err
	}
	actions, perr := backup.Prune(ctx, e.repo, backup.PruneOptions{
		LifecycleOptions: backup.LifecycleOptions{SigningKey: key},
		ClusterID:        opts.cluster, Policy: policy, DryRun: opts.dryRun,
	})
	if e.g.json {
		sum := pruneSummary{DryRun: opts.dryRun, Count: len(actions)}
		for _, a := range actions {
			if a.Error != "" {
				sum.Failed++
			}
		}
		if err := writeJSONList(e.stdout, actions, sum); err != nil {
			return err
		}
		return perr
	}
	w := e.stdout
	switch {
	case len(actions) == 0:
		fmt.Fprintln(w, "nothing to prune")
	case opts.dryRun:
		fmt.Fprintln(w, "dry run: nothing changed; prune would make these changes:")
	}
	if len(actions) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "BACKUP\tCLUSTER\tFROM\tTO\tWHY\tRESULT")
		for _, a := range actions {
			result := "done"
			switch {
			case a.Error != "":
				result = "FAILED: " + a.Error
			case opts.dryRun:
				result = "would"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.BackupID, a.ClusterID, a.From, a.To, a.Reason, result)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return perr
}

// pruneSummary is the summary line of backup prune --json.
type pruneSummary struct {
	DryRun bool `json:"dry_run"`
	Count  int  `json:"count"`  // actions taken, or with dry_run that would be
	Failed int  `json:"failed"` // actions that failed
}
