package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/urfave/cli/v2"
)

func listBackups(e *env, c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	tags, err := parseTags(c.StringSlice("tag"))
	if err != nil {
		return err
	}
	f := backup.Filter{ClusterID: c.String("cluster"), State: backup.State(strings.ToUpper(c.String("state"))), Tags: tags}
	switch f.State {
	case "", backup.StateReady, backup.StatePendingDeletion, backup.StateDeleted:
	default:
		return fmt.Errorf("--state %q: want READY, PENDING_DELETION or DELETED", c.String("state"))
	}
	ms, err := backup.List(c.Context, e.repo, f)
	if err != nil {
		return err
	}
	if wantJSON(c) {
		out := make([]backupSummary, len(ms))
		for i, m := range ms {
			out[i] = summarize(m)
		}
		return writeJSON(c.App.Writer, out)
	}
	if len(ms) == 0 {
		_, err := fmt.Fprintln(c.App.Writer, "no backups")
		return err
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKUP\tCLUSTER\tSTATE\tCREATED\tSIZE\tSOURCE HSM\tEXPIRY\tTAGS")
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.ClusterID, m.State, m.Created.Format(time.DateTime),
			sizeText(m.ObjectSize), m.Source.Serial, expiryText(m), tagsText(m.Tags))
	}
	return tw.Flush()
}

func describeBackup(e *env, c *cli.Context, cluster, id string) error {
	m, err := backup.Describe(c.Context, e.repo, cluster, id)
	if err != nil {
		return err
	}
	if wantJSON(c) {
		return writeJSON(c.App.Writer, m) // the manifest as stored, signature included
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
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
	row("tags", tagsText(m.Tags))
	if m.SourceBackupID != "" {
		row("copied from", m.SourceBackupID+" of cluster "+m.SourceClusterID)
	}
	return tw.Flush()
}
