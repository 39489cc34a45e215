package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/urfave/cli/v2"
)

// listOptions are the flags of backup list.
type listOptions struct {
	cluster, state string
	tags           []string
}

func listBackups(e *env, c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if c.Bool("orphans") {
		if c.String("state") != "" || len(c.StringSlice("tag")) > 0 {
			return errors.New("--orphans lists objects, not backups: --state and --tag do not apply")
		}
		return runOrphans(c.Context, e, c.String("cluster"), c.Duration("orphan-grace"))
	}
	return runList(c.Context, e, listOptions{cluster: c.String("cluster"), state: c.String("state"), tags: c.StringSlice("tag")})
}

// runList prints the backups that match opts, oldest first.
func runList(ctx context.Context, e *env, opts listOptions) error {
	tags, err := parseTags(opts.tags)
	if err != nil {
		return err
	}
	f := backup.Filter{ClusterID: opts.cluster, State: backup.State(strings.ToUpper(opts.state)), Tags: tags}
	switch f.State {
	case "", backup.StateReady, backup.StatePendingDeletion, backup.StateDeleted:
	default:
		return fmt.Errorf("--state %q: want READY, PENDING_DELETION or DELETED", opts.state)
	}
	ms, err := backup.List(ctx, e.repo, f)
	if err != nil {
		return err
	}
	if e.g.json {
		out := make([]backupSummary, len(ms))
		for i, m := range ms {
			out[i] = summarize(m)
		}
		return writeJSONList(e.stdout, out, countSummary{len(out)})
	}
	if len(ms) == 0 {
		_, err := fmt.Fprintln(e.stdout, "no backups")
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKUP\tCLUSTER\tSTATE\tCREATED\tSIZE\tSOURCE HSM\tEXPIRY\tTAGS")
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.ClusterID, m.State, m.Created.Format(time.DateTime),
			sizeText(m.ObjectSize), m.Source.Serial, expiryText(m), tagsText(m.Tags))
	}
	return tw.Flush()
}

func describeBackup(e *env, c *cli.Context, cluster, id string) error {
	return runDescribe(c.Context, e, cluster, id)
}

// runDescribe prints backup id's manifest.
func runDescribe(ctx context.Context, e *env, cluster, id string) error {
	m, err := backup.Describe(ctx, e.repo, cluster, id)
	if err != nil {
		return err
	}
	if e.g.json {
		return writeJSON(e.stdout, struct {
			BackupID  string           `json:"backup_id"`
			ClusterID string           `json:"cluster_id"`
			Manifest  *backup.Manifest `json:"manifest"` // as stored, signature included
		}{m.ID, m.ClusterID, m})
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("backup", m.ID)
	row("cluster", m.ClusterID)
	row("state", string(m.State))
	row("created", m.Created.Format(time.RFC3339))
	if !m.DeletionRequested.IsZero() {
		row("deleted", m.DeletionRequested.Format(time.RFC3339))
	}
	row("source HSM", fmt.Sprintf("serial %s, class %s, manufacturer %s, operator %s, firmware %s, FIPS %t",
		m.Source.Serial, m.Source.Class, m.Source.Manufacturer, m.Source.Operator, m.Source.Firmware, m.Source.FIPS))
	row("PBK fingerprint", m.Source.PBKFingerprint)
	row("image", fmt.Sprintf("%s, %s", m.ImageID, sizeText(m.ImageSize)))
	row("stored object", fmt.Sprintf("%s, sha256 %s", sizeText(m.ObjectSize), m.ObjectSHA256))
	row("outer layer", strings.Join(m.Recipients, "; "))
	row("expiry", expiryText(m))
	if m.Lock != nil {
		row("object lock", fmt.Sprintf("%s until %s", m.Lock.Mode, m.Lock.Until.Format(time.RFC3339)))
	}
	row("tags", tagsText(m.Tags))
	if m.SourceBackupID != "" {
		row("copied from", m.SourceBackupID+" of cluster "+m.SourceClusterID)
	}
	return tw.Flush()
}

// runOrphans prints the stray objects in backup directories (see
// backup.Orphans), saying which prune would remove: those older than
// grace.
func runOrphans(ctx context.Context, e *env, cluster string, grace time.Duration) error {
	if grace < 0 {
		return fmt.Errorf("--orphan-grace %s: want 0 or more", grace)
	}
	now := time.Now()
	found, err := backup.Orphans(ctx, e.repo, cluster, now.Add(-grace))
	if err != nil {
		return err
	}
	if e.g.json {
		return writeJSONList(e.stdout, found, countSummary{len(found)})
	}
	if len(found) == 0 {
		_, err := fmt.Fprintln(e.stdout, "no orphans")
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "OBJECT\tCLUSTER\tSIZE\tMODIFIED\tWHAT\tPRUNE")
	for _, o := range found {
		verdict := "removes it"
		if !o.Stale {
			verdict = fmt.Sprintf("keeps it: %s old, within the %s grace period (it may be a backup being written)",
				backup.AgeText(now.Sub(o.Modified)), backup.AgeText(grace))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", o.Key, o.ClusterID, sizeText(o.Size), o.Modified.UTC().Format(time.DateTime), o.Reason, verdict)
	}
	return tw.Flush()
}
