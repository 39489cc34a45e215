package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/restore"
)

func restoreCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "backup", Usage: "`ID` of the backup to restore (required)"},
		&cli.StringFlag{Name: "cluster", Usage: "`ID` of the backup's cluster (default: found in the store)"},
		&cli.StringSliceFlag{Name: "to", Usage: "target: `HOST:PORT` of an HSM, or the id of a cluster in --config (repeatable; required)"},
		&cli.BoolFlag{Name: "dry-run", Usage: "make every check, including the targets' attestation, and stop before any HSM changes"},
		manufacturerRootFlag(),
		operatorRootFlag(),
		&cli.StringFlag{Name: "user", Usage: "crypto officer `NAME`: to import into an initialized target, and to clone further targets (a user of the backup)"},
		passwordFileFlag(),
		&cli.StringFlag{Name: "cert", Usage: "client certificate `FILE` from the backup's customer CA, to reach targets once restored"},
		&cli.StringFlag{Name: "key", Usage: "its private key `FILE` (mode 0600)"},
	}
	return &cli.Command{
		Name:  "restore",
		Usage: "restore a backup into attested HSMs of matching hardware",
		Description: "Verifies the backup in full (signature, object hash, outer layer, inner\n" +
			"header), has every target attest to a fresh nonce against the trusted\n" +
			"roots (class, manufacturer and operator equal to the backup's, firmware no\n" +
			"older, FIPS into FIPS only, same PBK), and only then streams the image into\n" +
			"the first target, which checks it again and commits atomically. Further\n" +
			"targets (new, uninitialized HSMs) are cloned from the first, as CloudHSM\n" +
			"adds HSMs to a cluster. A refused restore leaves every target unchanged.",
		Flags:        append(flags, serviceFlags()...),
		OnUsageError: usageError,
		Action: action("restore", func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			s, err := openService(c)
			if err != nil {
				return err
			}
			defer s.close()
			return runRestore(s, c)
		}),
	}
}

func runRestore(s *service, c *cli.Context) error {
	ctx := c.Context
	id := c.String("backup")
	if id == "" || len(c.StringSlice("to")) == 0 {
		return fmt.Errorf("--backup and --to are required (run '%s --help')", c.Command.HelpName)
	}
	clusterID, err := s.locate(id)
	if err != nil {
		return err
	}
	pub, err := s.publicKey()
	if err != nil {
		return err
	}
	ids, err := s.identities(ctx)
	if err != nil {
		return err
	}
	mfr, op, err := s.roots()
	if err != nil {
		return err
	}
	// The manifest names the cluster's certificate and customer CA: once
	// restored, the targets present that certificate. It is trusted only
	// once the manifest's signature is checked.
	m, err := backup.Describe(ctx, s.repo, clusterID, id)
	if err == nil {
		err = m.Verify(pub)
	}
	if err != nil {
		return err
	}
	if m.State != backup.StateReady {
		return fmt.Errorf("backup %s is %s: only READY backups are restored (run 'hsmbackup backup restore-deleted %s' first)", id, m.State, id)
	}
	addrs, login, err := s.restoreTargets(c, clusterID)
	if err != nil {
		return err
	}
	tcfg, err := targetConfig(m, mfr, login)
	if err != nil {
		return err
	}
	if len(addrs) > 1 && (login.cert == nil || login.user == "") {
		return errors.New("cloning further targets needs a crypto officer of the backup (--user, and a password) and a client certificate from its customer CA (--cert, --key)")
	}
	targets := make([]restore.ClusterTarget, len(addrs))
	for i, a := range addrs {
		cfg := tcfg
		cfg.Addr = a
		cl, err := client.New(cfg)
		if err != nil {
			return err
		}
		defer cl.Close()
		member := &restoreMember{Client: cl, addr: a}
		if i == 0 {
			member.login = &login
		}
		targets[i] = restore.ClusterTarget{Addr: a, Member: member}
	}
	// Clones are added through the restored HSM, trusted as the backup's
	// cluster, logged in as one of its crypto officers.
	open := func(ctx context.Context) (restore.Cloner, error) {
		ccfg := tcfg
		ccfg.ManufacturerRoots = mfr
		return cluster.Open(ctx, cluster.Config{Members: addrs[:1], Client: ccfg, OperatorRoots: op, Logger: s.log}, login.user, login.password)
	}
	opts := restore.Options{PublicKey: pub, Identities: ids, ManufacturerRoots: mfr, OperatorRoots: op, DryRun: c.Bool("dry-run")}
	req := restore.ClusterRequest{Repo: s.repo, ClusterID: clusterID, BackupID: id, Targets: targets, Open: open}
	results, err := restore.Cluster(ctx, req, opts)
	for _, r := range results {
		s.log.Info("target "+string(r.Action), "addr", r.Addr, "serial", r.Serial, "backup", id)
	}
	if err != nil {
		return err
	}
	if wantJSON(c) {
		return writeJSON(c.App.Writer, struct {
			BackupID string                 `json:"backup_id"`
			Cluster  string                 `json:"cluster_id"`
			DryRun   bool                   `json:"dry_run"`
			Targets  []restore.TargetResult `json:"targets"`
		}{id, clusterID, opts.DryRun, results})
	}
	verbs := map[restore.Action]string{restore.Checked: "would restore into", restore.Restored: "restored into", restore.Cloned: "cloned into"}
	for _, r := range results {
		fmt.Fprintf(c.App.Writer, "%s %s HSM %s at %s\n", id, verbs[r.Action], r.Serial, r.Addr)
	}
	if opts.DryRun {
		_, err = fmt.Fprintln(c.App.Writer, "dry run: every check passed; no HSM was changed")
	}
	return err
}

// restoreMember is a target HSM as the restore command reaches it (its
// errors do not name it: restore.Cluster does): its errors of reaching it
// explained, and, for the first target, a login as
// the crypto officer just before the import if the HSM has users (an
// import into such an HSM takes an officer's session), so that no
// password is sent before every check has passed.
type restoreMember struct {
	*client.Client
	addr  string
	login *restoreLogin // first target only
}

// explain adds the hints of conn.explain: a target is a new HSM or a
// member of the backup's cluster, so only those about reaching it apply.
func (m *restoreMember) explain(err error) error {
	return (&conn{Client: m.Client, addr: m.addr, hasCert: true}).explain(err)
}

func (m *restoreMember) Health(ctx context.Context) (api.Health, error) {
	h, err := m.Client.Health(ctx)
	return h, m.explain(err)
}

func (m *restoreMember) Attest(ctx context.Context, nonce []byte) (*hsmcore.Attestation, error) {
	a, err := m.Client.Attest(ctx, nonce)
	return a, m.explain(err)
}

func (m *restoreMember) ImportImage(ctx context.Context, r io.Reader) (api.ImportResponse, error) {
	if m.login != nil {
		h, err := m.Health(ctx)
		if err != nil {
			return api.ImportResponse{}, err
		}
		if h.Initialized {
			if m.login.user == "" {
				return api.ImportResponse{}, errors.New("it is initialized: give --user and a password of its crypto officer")
			}
			role, err := m.Login(ctx, m.login.user, m.login.password)
			if err != nil {
				return api.ImportResponse{}, fmt.Errorf("log in: %w", err)
			}
			if role != hsmcore.CryptoOfficer {
				return api.ImportResponse{}, fmt.Errorf("%s is a %s, not a crypto officer", m.login.user, role)
			}
		}
	}
	return m.Client.ImportImage(ctx, r)
}

// restoreLogin is how the command logs in to and authenticates to targets.
type restoreLogin struct {
	user, password string
	cert           *tls.Certificate
}

// restoreTargets resolves --to into addresses and the login to use: a
// configured cluster id stands for its members, with its user, password
// and client certificate; flags override those.
func (s *service) restoreTargets(c *cli.Context, backupCluster string) ([]string, restoreLogin, error) {
	var addrs []string
	var login restoreLogin
	var cc *clusterConfig
	for _, to := range c.StringSlice("to") {
		if _, _, err := net.SplitHostPort(to); err == nil {
			addrs = append(addrs, to)
			continue
		}
		tc, err := s.cluster(to)
		if err != nil {
			return nil, login, fmt.Errorf("--to %q is neither HOST:PORT nor a configured cluster: %w", to, err)
		}
		cc = tc
		addrs = append(addrs, tc.Members...)
	}
	if cc == nil {
		cc = s.cfg.Clusters[backupCluster] // the backup's cluster's credentials, if configured
	}
	if cc == nil {
		cc = &clusterConfig{}
	}
	login.user = cmp.Or(c.String("user"), cc.User)
	certPath, keyPath := cmp.Or(c.String("cert"), cc.Cert), cmp.Or(c.String("key"), cc.Key)
	if (certPath == "") != (keyPath == "") {
		return nil, login, errors.New("--cert and --key go together")
	}
	if certPath != "" {
		cert, err := loadClientCertificate(certPath, keyPath)
		if err != nil {
			return nil, login, err
		}
		login.cert = cert
	}
	if login.user != "" {
		pwFile, how := cc.PasswordFile, "password_file in the config"
		if p := c.String("password-file"); p != "" {
			pwFile, how = p, "--password-file"
		}
		pw, err := passwordFrom(pwFile, how)
		if err != nil {
			return nil, login, err
		}
		login.password = pw
	}
	return addrs, login, nil
}

// targetConfig trusts a target either as a new HSM (its device certificate
// from the manufacturer roots) or as a member of the backup's cluster (its
// cluster certificate from the customer CA the manifest names).
func targetConfig(m *backup.Manifest, mfr *x509.CertPool, login restoreLogin) (client.Config, error) {
	cfg := client.Config{ManufacturerRoots: mfr, ClusterID: m.ClusterID}
	if len(m.CustomerCA) > 0 {
		ca, err := x509.ParseCertificate(m.CustomerCA)
		if err != nil {
			return cfg, fmt.Errorf("backup %s: customer CA: %w", m.ID, err)
		}
		cfg.CustomerCA = ca
		if login.cert != nil {
			if err := checkClientCertificate(login.cert, ca); err != nil {
				return cfg, fmt.Errorf("client certificate: %w", err)
			}
		}
	}
	cfg.Certificate = login.cert
	return cfg, nil
}
