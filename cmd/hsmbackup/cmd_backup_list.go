package main

import (
	"context"
	"errors"
	"fmt"
	"io"
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

// runList prints the backups that match opts, oldest first, then each
// manifest that could not be listed (backup.Scan: it does not parse, is
// misplaced, or its signature does not verify) as state INVALID with the
// reason. Invalid manifests do not fail the listing: they are shown and
// counted in a warning. Signatures are checked when a public key (or a
// signing key) is configured; else a warning says they were not.
func runList(ctx context.Context, e *env, opts listOptions) error {
	tags, err := parseTags(opts.tags)
	if err != nil {
		return err
	}
	f := backup.Filter{ClusterID: opts.cluster, State: backup.State(strings.ToUpper(opts.state)), Tags: tags}
	switch f.State {
	case "", backup.StateReady, backup.StatePendingDeletion, backup.StateDeleted, backup.StateInvalid:
	default:
		return fmt.Errorf("--state %q: want READY, PENDING_DELETION, DELETED or INVALID", opts.state)
	}
	pub, err := e.optionalPublicKey()
	if err != nil {
		return err
	}
	// No backup is in state INVALID: with that filter, Scan lists only
	// the invalid manifests, which it reports whatever the filter.
	l, err := backup.Scan(ctx, e.repo, backup.ListOptions{Filter: f, PublicKey: pub})
	if err != nil {
		return err
	}
	if !l.SignaturesChecked {
		e.log.Warn("signatures not checked: no public key", "note",
			"a manifest edited in the store could list as READY; give --public-key or set public_key or signing_key in --config")
	}
	if n := len(l.Invalid); n > 0 {
		e.log.Warn("invalid manifests listed as INVALID", "count", n, "note",
			"prune never acts on them; 'backup verify ID' checks one; an image left without its manifest is in 'backup list --orphans'")
	}
	if e.g.json {
		return writeListJSON(e.stdout, l)
	}
	if len(l.Backups)+len(l.Invalid) == 0 {
		_, err := fmt.Fprintln(e.stdout, "no backups")
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKUP\tCLUSTER\tSTATE\tCREATED\tSIZE\tSOURCE HSM\tEXPIRY\tTAGS")
	for _, m := range l.Backups {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.ClusterID, m.State, m.Created.Format(time.DateTime),
			sizeText(m.ObjectSize), m.Source.Serial, expiryText(m), tagsText(m.Tags))
	}
	// An invalid manifest's fields cannot be trusted: the reason takes
	// their place. It is the row's last cell, so it widens no column.
	for _, inv := range l.Invalid {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", inv.BackupID, inv.ClusterID, backup.StateInvalid, invalidText(inv))
	}
	return tw.Flush()
}

// invalidText is why a manifest is invalid, for the table: the reason
// without the "invalid manifest: " its state already says.
func invalidText(inv backup.Invalid) string {
	return strings.TrimPrefix(inv.Reason, backup.ErrManifest.Error()+": ")
}

// listSummary is the summary line of backup list --json.
type listSummary struct {
	Count             int  `json:"count"`   // result lines: backups listed
	Invalid           int  `json:"invalid"` // invalid lines: manifests skipped
	SignaturesChecked bool `json:"signatures_checked"`
}

// writeListJSON writes a listing as JSON lines: a result line per backup,
// an invalid line per manifest skipped, then the summary.
func writeListJSON(w io.Writer, l *backup.Listing) error {
	for _, m := range l.Backups {
		if err := writeJSON(w, summarize(m)); err != nil {
			return err
		}
	}
	for _, inv := range l.Invalid {
		if err := writeJSONLine(w, msgInvalid, inv); err != nil {
			return err
		}
	}
	return writeJSONLine(w, msgSummary, listSummary{Count: len(l.Backups), Invalid: len(l.Invalid), SignaturesChecked: l.SignaturesChecked})
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
	row("location", locationText(m))
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

// locationText says where m verifies: the location it signs, or that it
// signs none.
func locationText(m *backup.Manifest) string {
	if m.Bound() {
		return m.Location
	}
	return "unbound (written before manifests named their location: it verifies wherever it is copied)"
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
