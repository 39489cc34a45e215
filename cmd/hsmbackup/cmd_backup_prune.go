package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/urfave/cli/v2"
)

func pruneBackups(e *env, c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
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
		if c.IsSet("retention-days") {
			p.RetentionDays = c.Int("retention-days")
		}
		if c.IsSet("keep-last") {
			p.KeepLast = c.Int("keep-last")
		}
		return p
	}
	if err := policy(c.String("cluster")).Validate(); err != nil {
		return err
	}
	actions, perr := backup.Prune(c.Context, e.repo, backup.PruneOptions{
		LifecycleOptions: backup.LifecycleOptions{SigningKey: key},
		ClusterID:        c.String("cluster"), Policy: policy, DryRun: c.Bool("dry-run"),
	})
	if wantJSON(c) {
		if actions == nil {
			actions = []backup.PruneAction{}
		}
		if err := writeJSON(c.App.Writer, actions); err != nil {
			return err
		}
		return perr
	}
	w := c.App.Writer
	switch {
	case len(actions) == 0:
		fmt.Fprintln(w, "nothing to prune")
	case c.Bool("dry-run"):
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
			case c.Bool("dry-run"):
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
