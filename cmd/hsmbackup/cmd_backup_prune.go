package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/urfave/cli/v2"
)

// pruneOptions are the flags of backup prune; nil limits are the config's.
type pruneOptions struct {
	cluster       string
	retentionDays *int
	keepLast      *int
	dryRun        bool
	orphanGrace   time.Duration // stray objects younger than this are left
}

func pruneBackups(e *env, c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	opts := pruneOptions{cluster: c.String("cluster"), dryRun: c.Bool("dry-run"), orphanGrace: c.Duration("orphan-grace")}
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
		p := e.retention(cluster)
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
	grace := opts.orphanGrace
	switch {
	case grace < 0:
		return fmt.Errorf("--orphan-grace %s: want 0 or more", grace)
	case grace == 0:
		grace = backup.NoOrphanGrace
	}
	actions, perr := backup.Prune(ctx, e.repo, backup.PruneOptions{
		LifecycleOptions: backup.LifecycleOptions{SigningKey: key},
		ClusterID:        opts.cluster, Policy: policy, DryRun: opts.dryRun, OrphanGrace: grace,
	})
	if e.g.json {
		sum := pruneSummary{DryRun: opts.dryRun, Count: len(actions)}
		for _, a := range actions {
			switch {
			case a.Error != "":
				sum.Failed++
			case a.Locked:
				sum.Locked++
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
			case a.Locked && a.Object != "":
				result = a.LockText() + ", not removed"
			case a.Locked:
				result = a.LockText() + ", not deleted"
			case opts.dryRun:
				result = "would"
			}
			from, to, why := string(a.From), string(a.To), a.Reason
			if a.Object != "" { // a stray object, not a backup
				from, to, why = "-", "removed", a.Reason+": "+a.Object
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.BackupID, a.ClusterID, from, to, why, result)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if perr == nil && opts.orphanGrace > 0 {
		// Younger stray objects are left: say so, once.
		if found, err := backup.Orphans(ctx, e.repo, opts.cluster, time.Now().Add(-opts.orphanGrace)); err == nil {
			young := 0
			for _, o := range found {
				if !o.Stale {
					young++
				}
			}
			if young > 0 {
				fmt.Fprintf(w, "%d stray objects younger than %s left (they may be backups being written): see 'hsmbackup backup list --orphans'\n", young, backup.AgeText(opts.orphanGrace))
			}
		}
	}
	return perr
}

// retention is cluster's retention policy in the config: its own, else
// the config's default.
func (e *env) retention(cluster string) backup.Policy {
	r := e.cfg.Retention
	if cc := e.cfg.Clusters[cluster]; cc != nil && cc.Retention != nil {
		r = *cc.Retention
	}
	return backup.Policy{RetentionDays: r.Days, KeepLast: r.KeepLast}
}

// pruneSummary is the summary line of backup prune --json.
type pruneSummary struct {
	DryRun bool `json:"dry_run"`
	Count  int  `json:"count"`  // actions taken, or with dry_run that would be
	Failed int  `json:"failed"` // actions that failed
	Locked int  `json:"locked"` // actions not taken: their objects are under object lock
}
