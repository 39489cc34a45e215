package main

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/restore"
)

func restoreCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "backup", Usage: "`ID` of the backup to restore, a unique prefix of it, or latest (required)"},
		&cli.StringFlag{Name: "cluster", Usage: "`ID` of the backup's cluster (default: found in the store)"},
		&cli.StringSliceFlag{Name: "to", Usage: "target: `HOST:PORT` of an HSM, or the id of a cluster in --config (repeatable; required)"},
		&cli.StringSliceFlag{Name: "serial", Usage: "`HOST:PORT=SERIAL`: the target at HOST:PORT must attest to serial SERIAL; another genuine HSM there is refused (repeatable)"},
		&cli.BoolFlag{Name: "dry-run", Usage: "make every check, including the targets' attestation, and stop before any HSM changes"},
		&cli.BoolFlag{Name: "force", Usage: "restore into an initialized HSM even if it holds users or keys the backup lacks, replacing them"},
		manufacturerRootFlag(),
		operatorRootFlag(),
		&cli.StringFlag{Name: "user", Usage: "crypto officer `NAME`: to import into an initialized target, and to clone further targets (a user of the backup)"},
		passwordFileFlag(),
		&cli.StringFlag{Name: "cert", Usage: "client certificate `FILE` from the backup's customer CA, to reach targets once restored"},
		&cli.StringFlag{Name: "key", Usage: "its private key `FILE` (mode 0600)"},
		claimFlag(),
	}
	return &cli.Command{
		Name:  "restore",
		Usage: "restore a backup into attested HSMs of matching hardware",
		Description: "Verifies the backup in full (signature, object hash, outer layer, inner\n" +
			"header), has every target attest to a fresh nonce against the trusted\n" +
			"roots (class, manufacturer and operator equal to the backup's, firmware no\n" +
			"older, FIPS into FIPS only, same PBK, the serial --serial names), and only\n" +
			"then streams the image into the first target, which checks it again and\n" +
			"commits atomically. The image goes only to the attested HSM: the TLS peer\n" +
			"that answered the attestation, and every connection the image takes, must\n" +
			"present its device key (or, initialized, the backup's cluster certificate).\n" +
			"Further targets (new, uninitialized HSMs) are cloned from the first, as\n" +
			"CloudHSM adds HSMs to a cluster. An initialized HSM that holds users or\n" +
			"keys the backup lacks is refused, with what would be lost, unless --force.\n" +
			"A new HSM is set up only by the holder of its claim secret: give the\n" +
			"claim file 'hsm manufacture' wrote for each new target with --claim.\n" +
			"A refused restore leaves every target unchanged.",
		Flags:        append(flags, serviceFlags()...),
		OnUsageError: usageError,
		Action:       action("restore", restoreAction),
	}
}

// restoreOptions are the flags of restore that are not about reaching
// the targets (those make its target).
type restoreOptions struct {
	backupID string
	dryRun   bool
	force    bool
	serials  map[string]string // the serial a target must attest to, by address
}

func restoreAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	opts := restoreOptions{backupID: c.String("backup"), dryRun: c.Bool("dry-run"), force: c.Bool("force")}
	if opts.backupID == "" || len(c.StringSlice("to")) == 0 {
		return fmt.Errorf("--backup and --to are required (run '%s --help')", c.Command.HelpName)
	}
	e, err := newStoreEnv(c)
	if err != nil {
		return err
	}
	defer e.close()
	clusterID, id, err := e.resolve(opts.backupID)
	if err != nil {
		return err
	}
	opts.backupID = id
	t, err := e.restoreTarget(c, clusterID)
	if err != nil {
		return err
	}
	if opts.serials, err = targetSerials(c.StringSlice("serial"), t.members); err != nil {
		return err
	}
	return runRestore(c.Context, e, opts, clusterID, t)
}

// targetSerials parses the --serial flags, HOST:PORT=SERIAL each, for
// the targets members.
func targetSerials(flags, members []string) (map[string]string, error) {
	out := map[string]string{}
	for _, f := range flags {
		i := strings.LastIndexByte(f, '=')
		if i < 0 || f[i+1:] == "" {
			return nil, usagef("--serial %q: want HOST:PORT=SERIAL", f)
		}
		addr, serial := f[:i], f[i+1:]
		if !slices.Contains(members, addr) {
			return nil, usagef("--serial %q: %s is not a target (--to)", f, addr)
		}
		if prev, ok := out[addr]; ok && prev != serial {
			return nil, usagef("--serial: two serials for %s", addr)
		}
		out[addr] = serial
	}
	return out, nil
}

// runRestore restores backup opts.backupID of cluster clusterID into the
// target's members, the first by image, the others cloned from it, and
// prints what it did.
func runRestore(ctx context.Context, e *env, opts restoreOptions, clusterID string, t *target) error {
	id := opts.backupID
	results, err := restoreBackup(ctx, e, opts, clusterID, t)
	if err != nil {
		return err
	}
	if e.g.json {
		return writeJSON(e.stdout, struct {
			BackupID string                 `json:"backup_id"`
			Cluster  string                 `json:"cluster_id"`
			DryRun   bool                   `json:"dry_run"`
			Targets  []restore.TargetResult `json:"targets"`
		}{id, clusterID, opts.dryRun, results})
	}
	verbs := map[restore.Action]string{restore.Checked: "would restore into", restore.Restored: "restored into", restore.Cloned: "cloned into"}
	for _, r := range results {
		replaced := ""
		if r.Replaced != nil {
			replaced = fmt.Sprintf(", replacing what the backup lacks: %s", r.Replaced)
		}
		fmt.Fprintf(e.stdout, "%s %s HSM %s at %s%s\n", id, verbs[r.Action], r.Serial, r.Addr, replaced)
	}
	if opts.dryRun {
		_, err = fmt.Fprintln(e.stdout, "dry run: every check passed; no HSM was changed")
	}
	return err
}

// restoreBackup is the restore: backup opts.backupID of cluster clusterID
// into the target's members, the first by image, the others cloned from
// it (restore.Cluster), with its logs; it prints nothing. The restore
// command and the drill (scheduler drill) restore through it. The target's
// trust is set from the backup's manifest (trustBackup).
func restoreBackup(ctx context.Context, e *env, opts restoreOptions, clusterID string, t *target) ([]restore.TargetResult, error) {
	id := opts.backupID
	pub, err := e.publicKey()
	if err != nil {
		return nil, err
	}
	ids, err := e.identities(ctx)
	if err != nil {
		return nil, err
	}
	mfr, op, err := e.roots()
	if err != nil {
		return nil, err
	}
	// The manifest names the cluster's certificate and customer CA: once
	// restored, the targets present that certificate. It is trusted only
	// once the manifest's signature is checked.
	m, err := backup.Describe(ctx, e.repo, clusterID, id)
	if err != nil {
		return nil, err
	}
	if err := m.Verify(pub); err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	switch m.State {
	case backup.StateReady:
	case backup.StatePendingDeletion:
		return nil, fmt.Errorf("backup %s is %s: only READY backups are restored (run 'hsmbackup backup restore-deleted %s' first)", id, m.State, id)
	default:
		return nil, fmt.Errorf("backup %s is %s: its image was purged; it cannot be restored (its manifest stays as the record of it)", id, m.State)
	}
	if err := t.trustBackup(m, mfr); err != nil {
		return nil, err
	}
	if len(t.members) > 1 && (t.tls.Certificate == nil || t.user == "") {
		return nil, errors.New("cloning further targets needs a crypto officer of the backup (--user, and a password) and a client certificate from its customer CA (--cert, --key)")
	}
	targets := make([]restore.ClusterTarget, len(t.members))
	for i, a := range t.members {
		cl, err := t.dial(a)
		if err != nil {
			return nil, err
		}
		defer cl.Close()
		cl.hasCert = true // a target is a new HSM or the backup's cluster's: only hints about reaching it apply
		member := &restoreMember{conn: cl}
		if i == 0 {
			member.login = t
			defer member.logout(ctx)
		}
		targets[i] = restore.ClusterTarget{Addr: a, Member: member, Serial: opts.serials[a]}
	}
	// Clones are added through the restored HSM, trusted as the backup's
	// cluster, logged in as one of its crypto officers.
	first := *t
	first.members = t.members[:1]
	open := func(ctx context.Context) (restore.Cloner, error) { return first.open(ctx, e.log, mfr, op) }
	ropts := restore.Options{PublicKey: pub, Identities: ids, ManufacturerRoots: mfr, OperatorRoots: op, DryRun: opts.dryRun, Force: opts.force}
	req := restore.ClusterRequest{Repo: e.repo, ClusterID: clusterID, BackupID: id, Targets: targets, Open: open}
	results, err := restore.Cluster(ctx, req, ropts)
	for _, r := range results {
		e.log.Info("target "+string(r.Action), "addr", r.Addr, "serial", r.Serial, "backup", id)
		if r.Replaced != nil {
			e.log.Warn("target state replaced (--force)", "addr", r.Addr, "users", r.Replaced.UserCount, "keys", r.Replaced.KeyCount,
				"note", "only this HSM changes: other members of its cluster keep their state, and the cluster client re-syncs a minority from the majority")
		}
	}
	if errors.Is(err, restore.ErrWouldLose) {
		return nil, fmt.Errorf("%w (only this HSM would change: other members of its cluster keep their state; give --force to replace it)", err)
	}
	return results, err
}

// restoreMember is a target HSM as the restore command reaches it (its
// errors do not name it: restore.Cluster does): its errors of reaching it
// explained, and, for the first target, a login as the crypto officer
// once the HSM has attested, if the HSM has users: to list what it holds
// (Holdings) and to import (an import into such an HSM takes an
// officer's session). No password is sent before the attestation passed.
type restoreMember struct {
	*conn
	login    *target // first target only
	loggedIn bool
}

func (m *restoreMember) Health(ctx context.Context) (api.Health, error) {
	h, err := m.conn.Health(ctx)
	return h, m.explain(err)
}

func (m *restoreMember) Attest(ctx context.Context, nonce []byte) (*hsmcore.Attestation, error) {
	a, err := m.conn.Attest(ctx, nonce)
	return a, m.explain(err)
}

// officer logs in as the crypto officer if the HSM has users (once), and
// reports whether it has.
func (m *restoreMember) officer(ctx context.Context) (bool, error) {
	h, err := m.Health(ctx)
	if err != nil {
		return false, err
	}
	if !h.Initialized || m.loggedIn {
		return h.Initialized, nil
	}
	if m.login.user == "" {
		return true, errors.New("it is initialized: give --user and a password of its crypto officer")
	}
	role, err := m.login.login(ctx, m.conn)
	if err != nil {
		return true, err
	}
	if role != hsmcore.CryptoOfficer {
		return true, fmt.Errorf("%s is a %s, not a crypto officer", m.login.user, role)
	}
	m.loggedIn = true
	return true, nil
}

// Holdings lists the users and keys of the first target, if it has users.
func (m *restoreMember) Holdings(ctx context.Context) (*restore.Holdings, error) {
	if m.login == nil {
		return nil, nil // a further target: it must be new (restore.ErrNotNew)
	}
	initialized, err := m.officer(ctx)
	if err != nil || !initialized {
		return nil, err
	}
	users, err := m.conn.Users(ctx)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", m.explain(err))
	}
	keys, err := m.conn.Keys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", m.explain(err))
	}
	return &restore.Holdings{Users: users, Keys: keys}, nil
}

func (m *restoreMember) ImportImage(ctx context.Context, r io.Reader) (api.ImportResponse, error) {
	if m.login != nil {
		if _, err := m.officer(ctx); err != nil {
			return api.ImportResponse{}, err
		}
	}
	resp, err := m.conn.ImportImage(ctx, r)
	if err == nil {
		m.loggedIn = false // the import ended the session
	}
	return resp, err
}

// logout ends the session officer opened, if the import did not
// (best effort).
func (m *restoreMember) logout(ctx context.Context) {
	if m.loggedIn {
		_ = m.conn.Logout(context.WithoutCancel(ctx))
	}
}

// restoreTarget resolves --to into the restore's target: a HOST:PORT is
// one HSM, a configured cluster id stands for its members. The user,
// password and client certificate come from the flags, else from the
// entry of the --to cluster, else from the backup's cluster's entry. The
// password is read now, so that a dry run checks it too. Trust is set
// from the backup's manifest (trustBackup).
func (e *env) restoreTarget(c *cli.Context, backupCluster string) (*target, error) {
	t := &target{}
	var cc *clusterConfig
	for _, to := range c.StringSlice("to") {
		if _, _, err := net.SplitHostPort(to); err == nil {
			t.members = append(t.members, to)
			continue
		}
		tc, err := e.cluster(to)
		if err != nil {
			return nil, fmt.Errorf("--to %q is neither HOST:PORT nor a configured cluster: %w", to, err)
		}
		cc = tc
		t.members = append(t.members, tc.Members...)
	}
	if cc == nil {
		cc = e.cfg.Clusters[backupCluster] // the backup's cluster's credentials, if configured
	}
	if cc == nil {
		cc = &clusterConfig{}
	}
	t.user = cmp.Or(c.String("user"), cc.User)
	cert, err := clientCertOf(c, cc, nil)
	if err != nil {
		return nil, err
	}
	t.tls.Certificate = cert
	if t.tls.Claims, err = loadClaims(c.StringSlice("claim")...); err != nil {
		return nil, err
	}
	if t.user != "" {
		pw, err := passwordOf(c, cc)()
		if err != nil {
			return nil, err
		}
		t = t.withPassword(pw)
	}
	return t, nil
}

// trustBackup trusts a target either as a new HSM (its device certificate
// from the manufacturer roots) or as a member of the backup's cluster (its
// cluster certificate from the customer CA the manifest names).
func (t *target) trustBackup(m *backup.Manifest, mfr *x509.CertPool) error {
	t.clusterID = m.ClusterID
	t.tls.ClusterID, t.tls.ManufacturerRoots = m.ClusterID, mfr
	if len(m.CustomerCA) > 0 {
		ca, err := x509.ParseCertificate(m.CustomerCA)
		if err != nil {
			return fmt.Errorf("backup %s: customer CA: %w", m.ID, err)
		}
		t.tls.CustomerCA = ca
		if t.tls.Certificate != nil {
			if err := checkClientCertificate(t.tls.Certificate, ca); err != nil {
				return fmt.Errorf("client certificate: %w", err)
			}
		}
	}
	return nil
}
