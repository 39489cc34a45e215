package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/store/storeurl"
	"github.com/hsmbackup/hsmbackup/wrap"
)

func backupCommand() *cli.Command {
	clusterFlag := func(usage string) cli.Flag { return &cli.StringFlag{Name: "cluster", Usage: usage} }
	// sub is a subcommand; fn gets its positional arguments, with the
	// flags among and after them applied.
	sub := func(name, usage, args string, flags []cli.Flag, fn func(s *service, c *cli.Context, args []string) error) *cli.Command {
		return &cli.Command{
			Name: name, Usage: usage, ArgsUsage: args,
			Flags:        append(flags, serviceFlags()...),
			OnUsageError: usageError,
			Action: action("backup "+name, func(c *cli.Context) error {
				args, help, err := flagsAfterArgs(c)
				if err != nil || help {
					return err
				}
				s, err := openService(c)
				if err != nil {
					return err
				}
				defer s.close()
				return fn(s, c, args)
			}),
		}
	}
	// argless adapts the function of a subcommand that takes no
	// arguments: it refuses them itself.
	argless := func(fn func(*service, *cli.Context) error) func(*service, *cli.Context, []string) error {
		return func(s *service, c *cli.Context, _ []string) error { return fn(s, c) }
	}
	byID := func(name, usage string, flags []cli.Flag, fn func(s *service, c *cli.Context, cluster, id string) error) *cli.Command {
		flags = append(flags, clusterFlag("`ID` of the backup's cluster (default: found in the store)"))
		return sub(name, usage, "BACKUP-ID", flags, func(s *service, c *cli.Context, args []string) error {
			id, err := oneArg(c, args, "BACKUP-ID")
			if err != nil {
				return err
			}
			if c.Bool("deep") && c.Bool("offline") { // verify's; a usage error comes before any lookup
				return errors.New("--deep needs the keyring, --offline has none: choose one")
			}
			cluster, err := s.locate(id)
			if err != nil {
				return err
			}
			return fn(s, c, cluster, id)
		})
	}
	return &cli.Command{
		Name:  "backup",
		Usage: "take, list, verify, copy and expire backups",
		Description: "A backup is a cluster member's image, encrypted by the HSM under a\n" +
			"hardware-bound key, wrapped again under the master keyring, stored with a\n" +
			"signed manifest. States as CloudHSM: READY, PENDING_DELETION (deleted, still\n" +
			"restorable for 7 days), DELETED.",
		Action:       groupAction,
		OnUsageError: usageError,
		Subcommands: []*cli.Command{
			sub("create", "back up a configured cluster from one healthy, in-sync member", "", []cli.Flag{
				clusterFlag("`ID` of the cluster in --config (required)"),
				&cli.StringSliceFlag{Name: "tag", Usage: "`KEY=VALUE` tag (repeatable)"},
				&cli.BoolFlag{Name: "never-expires", Usage: "pin the backup: retention never removes it"},
				&cli.IntFlag{Name: "retention-days", Usage: "retention of this backup in `DAYS` (7-379), instead of the cluster's"},
			}, argless(createBackup)),
			sub("list", "list backups", "", []cli.Flag{
				clusterFlag("list only cluster `ID`'s backups"),
				&cli.StringFlag{Name: "state", Usage: "list only backups in `STATE` (READY, PENDING_DELETION, DELETED)"},
				&cli.StringSliceFlag{Name: "tag", Usage: "list only backups with tag `KEY=VALUE` (repeatable: all must match)"},
			}, argless(listBackups)),
			byID("describe", "show a backup's manifest", nil, describeBackup),
			byID("verify", "check a backup: signature, object hash, outer layer (and inner header with --deep)", []cli.Flag{
				&cli.BoolFlag{Name: "deep", Usage: "also compare the inner image header with the manifest"},
				&cli.BoolFlag{Name: "offline", Usage: "check only the signature and object hash: needs the public key, no secret"},
			}, verifyBackup),
			byID("delete", "delete a backup: PENDING_DELETION, restorable for 7 days", nil, deleteBackup),
			byID("restore-deleted", "bring a PENDING_DELETION backup back to READY", nil, restoreDeleted),
			byID("tag", "add, change or remove a backup's tags", []cli.Flag{
				&cli.StringSliceFlag{Name: "set", Usage: "set tag `KEY=VALUE` (repeatable)"},
				&cli.StringSliceFlag{Name: "remove", Usage: "remove tag `KEY` (repeatable)"},
			}, tagBackup),
			byID("set-never-expires", "pin a backup so that retention never removes it (--off to unpin)", []cli.Flag{
				&cli.BoolFlag{Name: "off", Usage: "unpin: leave the backup to its cluster's retention"},
			}, setNeverExpires),
			byID("copy", "copy a backup to another store, re-wrapping its outer layer (no HSM involved)", []cli.Flag{
				&cli.StringFlag{Name: "to", Usage: "destination store `URL` (required)"},
				&cli.StringFlag{Name: "to-keyring", Usage: "keyring `FILE` whose current key wraps the copy (default: the master keys new backups are wrapped to)"},
				&cli.StringSliceFlag{Name: "to-hpke", Usage: "HPKE public key `FILE` to wrap the copy to (repeatable; with --to-keyring, both)"},
			}, copyBackup),
			sub("prune", "apply retention: expire old backups, purge those deleted over 7 days ago", "", []cli.Flag{
				clusterFlag("prune only cluster `ID`"),
				&cli.IntFlag{Name: "retention-days", Usage: "retention in `DAYS` (7-379) for every cluster, instead of the config's"},
				&cli.IntFlag{Name: "keep-last", Usage: "keep at least the `N` newest READY backups of each cluster, instead of the config's"},
				&cli.BoolFlag{Name: "dry-run", Usage: "show what would change, change nothing"},
			}, argless(pruneBackups)),
		},
	}
}

// oneArg returns the single positional argument in args.
func oneArg(c *cli.Context, args []string, name string) (string, error) {
	switch len(args) {
	case 0:
		return "", fmt.Errorf("%s is required (run '%s --help')", name, c.Command.HelpName)
	case 1:
		return args[0], nil
	}
	return "", fmt.Errorf("unexpected argument %q (run '%s --help')", args[1], c.Command.HelpName)
}

// flagsAfterArgs sets the command's flags that follow its positional
// arguments, as docs/CLI.md writes them ("backup tag ID --set K=V"):
// urfave/cli stops parsing flags at the first argument. It returns the
// positional arguments, and whether --help was among the flags, in which
// case it has shown the help and the command must do nothing.
func flagsAfterArgs(c *cli.Context) (args []string, help bool, err error) {
	isBool := map[string]bool{}
	for _, f := range c.Command.Flags {
		_, b := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			isBool[n] = b
		}
	}
	rest := c.Args().Slice()
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			args = append(args, rest[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			args = append(args, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a[1:], "-"), "=")
		b, known := isBool[name]
		switch {
		case !known:
			return nil, false, fmt.Errorf("flag provided but not defined: %s (run '%s --help')", a, c.Command.HelpName)
		case hasValue:
		case b:
			value = "true"
		case i+1 < len(rest):
			i++
			value = rest[i]
		default:
			return nil, false, fmt.Errorf("flag needs an argument: %s (run '%s --help')", a, c.Command.HelpName)
		}
		if err := c.Set(name, value); err != nil {
			return nil, false, fmt.Errorf("invalid value %q for flag %s: %w (run '%s --help')", value, a, err, c.Command.HelpName)
		}
	}
	if c.Bool("help") {
		return nil, true, cli.ShowCommandHelp(c.Lineage()[1], c.Command.Name)
	}
	return args, false, nil
}

// parseTags parses KEY=VALUE flags.
func parseTags(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	tags := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("tag %q: want KEY=VALUE", kv)
		}
		tags[k] = v
	}
	if err := backup.ValidateTags(tags); err != nil {
		return nil, err
	}
	return tags, nil
}

func createBackup(s *service, c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	id := c.String("cluster")
	if id == "" {
		return fmt.Errorf("--cluster is required (run '%s --help')", c.Command.HelpName)
	}
	cc, err := s.cluster(id)
	if err != nil {
		return err
	}
	tags, err := parseTags(c.StringSlice("tag"))
	if err != nil {
		return err
	}
	if len(cc.Tags) > 0 { // the config's tags, then the flags'
		merged := maps.Clone(cc.Tags)
		maps.Copy(merged, tags)
		if err := backup.ValidateTags(merged); err != nil {
			return fmt.Errorf("cluster %s: tags: %w", id, err)
		}
		tags = merged
	}
	days := c.Int("retention-days")
	if days != 0 {
		if c.Bool("never-expires") {
			return errors.New("--never-expires and --retention-days exclude each other: a pinned backup has no retention")
		}
		if err := (backup.Policy{RetentionDays: days}).Validate(); err != nil {
			return err
		}
	}
	ctx := c.Context
	recipients, err := s.recipients(ctx)
	if err != nil {
		return err
	}
	key, err := s.signingKey()
	if err != nil {
		return err
	}
	s.removeStaleUploads(ctx)
	member, health, err := s.pickMember(ctx, id)
	if err != nil {
		return err
	}
	defer member.Close()
	defer member.Logout(ctx) //nolint:errcheck // best effort: the session also ends with the connection
	certs, err := member.Certificates(ctx)
	if err != nil {
		return fmt.Errorf("read cluster certificates: %w", err)
	}
	m, err := backup.Create(ctx, member, s.repo, backup.CreateOptions{
		ClusterID: id, Recipients: recipients, SigningKey: key, Tags: tags,
		NeverExpires: c.Bool("never-expires"), RetentionDays: days,
		ClusterCertificate: certs.Cluster, CustomerCA: certs.CustomerCA,
	})
	if err != nil {
		return err
	}
	s.log.Info("backup created", "backup", m.ID, "cluster", id, "serial", health.Serial, "bytes", m.ObjectSize)
	if wantJSON(c) {
		return writeJSON(c.App.Writer, summarize(m))
	}
	_, err = fmt.Fprintf(c.App.Writer, "created %s: cluster %s, from HSM %s, %s stored, sha256 %s\n",
		m.ID, m.ClusterID, m.Source.Serial, sizeText(m.ObjectSize), m.ObjectSHA256)
	return err
}

func listBackups(s *service, c *cli.Context) error {
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
	ms, err := backup.List(c.Context, s.repo, f)
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

func describeBackup(s *service, c *cli.Context, cluster, id string) error {
	m, err := backup.Describe(c.Context, s.repo, cluster, id)
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

func verifyBackup(s *service, c *cli.Context, cluster, id string) error {
	pub, err := s.publicKey()
	if err != nil {
		return err
	}
	opts := backup.VerifyOptions{PublicKey: pub, Deep: c.Bool("deep")}
	checks := []string{"signature", "object hash"}
	if !c.Bool("offline") {
		ids, err := s.identities(c.Context)
		if err != nil {
			return fmt.Errorf("%w (or use --offline to check without it)", err)
		}
		opts.Identities = ids
		checks = append(checks, "outer layer")
		if opts.Deep {
			checks = append(checks, "inner header")
		}
	}
	if err := backup.Verify(c.Context, s.repo, cluster, id, opts); err != nil {
		return err
	}
	if wantJSON(c) {
		return writeJSON(c.App.Writer, struct {
			ID      string   `json:"backup_id"`
			Cluster string   `json:"cluster_id"`
			Checks  []string `json:"checks"`
		}{id, cluster, checks})
	}
	_, err = fmt.Fprintf(c.App.Writer, "%s of cluster %s: OK (%s)\n", id, cluster, strings.Join(checks, ", "))
	return err
}

// change runs a lifecycle change and prints the backup's new state.
func change(s *service, c *cli.Context, verb string, fn func(backup.LifecycleOptions) (*backup.Manifest, error)) error {
	key, err := s.signingKey()
	if err != nil {
		return err
	}
	m, err := fn(backup.LifecycleOptions{SigningKey: key})
	if err != nil {
		return err
	}
	if wantJSON(c) {
		return writeJSON(c.App.Writer, summarize(m))
	}
	_, err = fmt.Fprintf(c.App.Writer, "%s %s: %s, expiry %s, tags %s\n", verb, m.ID, m.State, expiryText(m), tagsText(m.Tags))
	return err
}

func deleteBackup(s *service, c *cli.Context, cluster, id string) error {
	return change(s, c, "deleted", func(o backup.LifecycleOptions) (*backup.Manifest, error) {
		return backup.Delete(c.Context, s.repo, cluster, id, o)
	})
}

func restoreDeleted(s *service, c *cli.Context, cluster, id string) error {
	return change(s, c, "restored", func(o backup.LifecycleOptions) (*backup.Manifest, error) {
		return backup.RestoreDeleted(c.Context, s.repo, cluster, id, o)
	})
}

func tagBackup(s *service, c *cli.Context, cluster, id string) error {
	set, err := parseTags(c.StringSlice("set"))
	if err != nil {
		return err
	}
	if len(set) == 0 && len(c.StringSlice("remove")) == 0 {
		return errors.New("nothing to do: give --set KEY=VALUE or --remove KEY")
	}
	return change(s, c, "tagged", func(o backup.LifecycleOptions) (*backup.Manifest, error) {
		return backup.SetTags(c.Context, s.repo, cluster, id, set, c.StringSlice("remove"), o)
	})
}

func setNeverExpires(s *service, c *cli.Context, cluster, id string) error {
	verb := "pinned"
	if c.Bool("off") {
		verb = "unpinned"
	}
	return change(s, c, verb, func(o backup.LifecycleOptions) (*backup.Manifest, error) {
		return backup.SetNeverExpires(c.Context, s.repo, cluster, id, !c.Bool("off"), o)
	})
}

func copyBackup(s *service, c *cli.Context, cluster, id string) error {
	to := c.String("to")
	if to == "" {
		return fmt.Errorf("--to is required (run '%s --help')", c.Command.HelpName)
	}
	ids, err := s.identities(c.Context)
	if err != nil {
		return err
	}
	pub, err := s.publicKey()
	if err != nil {
		return err
	}
	key, err := s.signingKey()
	if err != nil {
		return err
	}
	var recipients []wrap.Recipient
	for _, p := range c.StringSlice("to-hpke") {
		r, err := wrap.LoadHPKERecipient(p)
		if err != nil {
			return err
		}
		recipients = append(recipients, r)
	}
	switch p := c.String("to-keyring"); {
	case p != "":
		dk, err := wrap.LoadKeyring(p)
		if err != nil {
			return err
		}
		recipients = append(recipients, dk)
	case len(recipients) == 0:
		if recipients, err = s.recipients(c.Context); err != nil {
			return err
		}
	}
	dst, err := storeurl.Open(to, storeurl.Options{})
	if err != nil {
		return err
	}
	m, err := backup.Copy(c.Context, s.repo, cluster, id, backup.Repo{Store: s.prog.wrap(dst)}, backup.CopyOptions{
		PublicKey: pub, Identities: ids, Recipients: recipients, SigningKey: key,
	})
	if err != nil {
		return err
	}
	if wantJSON(c) {
		return writeJSON(c.App.Writer, summarize(m))
	}
	_, err = fmt.Fprintf(c.App.Writer, "copied %s to %s as %s (outer layer: %s)\n", id, to, m.ID, strings.Join(m.Recipients, "; "))
	return err
}

func pruneBackups(s *service, c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	key, err := s.signingKey()
	if err != nil {
		return err
	}
	policy := func(cluster string) backup.Policy {
		r := s.cfg.Retention
		if cc := s.cfg.Clusters[cluster]; cc != nil && cc.Retention != nil {
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
	actions, perr := backup.Prune(c.Context, s.repo, backup.PruneOptions{
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

// backupSummary is a backup in --json listings.
type backupSummary struct {
	ID                string            `json:"backup_id"`
	ClusterID         string            `json:"cluster_id"`
	State             backup.State      `json:"state"`
	Created           time.Time         `json:"created"`
	DeletionRequested *time.Time        `json:"deletion_requested,omitempty"`
	Source            backup.Source     `json:"source"`
	ImageID           string            `json:"image_id"`
	ImageSize         int64             `json:"image_size"`
	ObjectSize        int64             `json:"object_size"`
	ObjectSHA256      string            `json:"object_sha256"`
	Recipients        []string          `json:"recipients"`
	NeverExpires      bool              `json:"never_expires"`
	RetentionDays     int               `json:"retention_days,omitempty"`
	Tags              map[string]string `json:"tags,omitempty"`
	SourceBackupID    string            `json:"source_backup_id,omitempty"`
	SourceClusterID   string            `json:"source_cluster_id,omitempty"`
}

func summarize(m *backup.Manifest) backupSummary {
	s := backupSummary{
		ID: m.ID, ClusterID: m.ClusterID, State: m.State, Created: m.Created, Source: m.Source,
		ImageID: m.ImageID, ImageSize: m.ImageSize, ObjectSize: m.ObjectSize, ObjectSHA256: m.ObjectSHA256,
		Recipients: m.Recipients, NeverExpires: m.NeverExpires, RetentionDays: m.RetentionDays, Tags: m.Tags,
		SourceBackupID: m.SourceBackupID, SourceClusterID: m.SourceClusterID,
	}
	if !m.DeletionRequested.IsZero() {
		t := m.DeletionRequested
		s.DeletionRequested = &t
	}
	return s
}

func expiryText(m *backup.Manifest) string {
	switch {
	case m.State == backup.StatePendingDeletion:
		return "purged after " + m.DeletionRequested.Add(backup.PendingDeletionPeriod).Format(time.DateOnly)
	case m.State == backup.StateDeleted:
		return "-"
	case m.NeverExpires:
		return "never"
	case m.RetentionDays != 0:
		return strconv.Itoa(m.RetentionDays) + " days"
	}
	return "cluster policy"
}

func tagsText(tags map[string]string) string {
	if len(tags) == 0 {
		return "-"
	}
	var b []string
	for k, v := range tags {
		b = append(b, k+"="+v)
	}
	slices.Sort(b)
	return strings.Join(b, ",")
}

// sizeText prints a byte count in IEC units.
func sizeText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
