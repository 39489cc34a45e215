package main

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/storeurl"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// service is what the backup and restore commands share: the config, the
// store (with progress bars on a terminal), keys loaded on demand, and the
// logger (stderr).
type service struct {
	c    *cli.Context
	cfg  *config
	repo backup.Repo // where backups live: the store, with progress bars
	base store.Store // repo's store without the progress bars
	prog *progress   // nil off a terminal
	log  *slog.Logger

	// The HSM-held master key, once used (see hsmKey).
	hsmKeyCluster   *cluster.Cluster
	hsmKeyRecipient *wrap.HSMRecipient
}

// openService reads the config, if any, and opens the store. The caller
// calls close when done.
func openService(c *cli.Context) (*service, error) {
	cfg, err := readConfig(c)
	if err != nil {
		return nil, err
	}
	url := cmp.Or(flagValue(c, "store"), cfg.Store)
	if url == "" {
		return nil, errors.New("no store: give --store URL or 'store:' in --config")
	}
	st, err := storeurl.Open(url, storeurl.Options{})
	if err != nil {
		return nil, err
	}
	prog := newProgress(c.Context, c.App.ErrWriter)
	// Logs go to stderr: as text, or as JSON lines beside --json output.
	var h slog.Handler = slog.NewTextHandler(prog.logTo(c.App.ErrWriter), nil)
	if wantJSON(c) {
		h = slog.NewJSONHandler(prog.logTo(c.App.ErrWriter), nil)
	}
	return &service{c: c, cfg: cfg, base: st, repo: backup.Repo{Store: prog.wrap(st)}, prog: prog, log: slog.New(h)}, nil
}

// readConfig reads the --config file, if any.
func readConfig(c *cli.Context) (*config, error) {
	if p := flagValue(c, "config"); p != "" {
		return loadConfig(p)
	}
	return new(config), nil
}

// openConfig is openService for the commands that need the config but no
// store: it neither opens one nor shows progress.
func openConfig(c *cli.Context) (*service, error) {
	cfg, err := readConfig(c)
	if err != nil {
		return nil, err
	}
	var h slog.Handler = slog.NewTextHandler(c.App.ErrWriter, nil)
	if wantJSON(c) {
		h = slog.NewJSONHandler(c.App.ErrWriter, nil)
	}
	return &service{c: c, cfg: cfg, log: slog.New(h)}, nil
}

// staleUploadAge is how long an upload must have been idle before
// removeStaleUploads takes it for the leftover of a killed writer. The
// file store also spares live writers however idle; S3 cannot tell.
const staleUploadAge = 24 * time.Hour

// removeStaleUploads removes, best effort, what uploads killed mid-way
// left in the store (file-store temporary files, incomplete S3 multipart
// uploads): they are never listed, but take space.
func (s *service) removeStaleUploads(ctx context.Context) {
	r, ok := store.As[store.StaleUploadRemover](s.base)
	if !ok {
		return
	}
	n, err := r.RemoveStaleUploads(ctx, time.Now().Add(-staleUploadAge))
	switch {
	case err != nil:
		s.log.Warn("stale uploads not removed", "err", err)
	case n > 0:
		s.log.Info("stale uploads removed", "count", n)
	}
}

// close ends what the service opened: the HSM-held master key's session,
// the progress bars.
func (s *service) close() {
	if s.hsmKeyCluster != nil {
		s.hsmKeyCluster.Close()
	}
	s.prog.wait()
}

// path returns the file a flag or, failing that, the config names.
func (s *service) path(flag, fromConfig, what string) (string, error) {
	p := cmp.Or(flagValue(s.c, flag), fromConfig)
	if p == "" {
		return "", fmt.Errorf("no %s: give --%s or set it in --config", what, flag)
	}
	return p, nil
}

func (s *service) signingKey() (ed25519.PrivateKey, error) {
	p, err := s.path("signing-key", s.cfg.SigningKey, "manifest signing key")
	if err != nil {
		return nil, err
	}
	return backup.LoadSigningKey(p)
}

// publicKey is the manifest public key, or the signing key's if only that
// is configured.
func (s *service) publicKey() (ed25519.PublicKey, error) {
	if p := cmp.Or(flagValue(s.c, "public-key"), s.cfg.PublicKey); p != "" {
		return backup.LoadPublicKey(p)
	}
	if cmp.Or(flagValue(s.c, "signing-key"), s.cfg.SigningKey) == "" {
		return nil, errors.New("no manifest public key: give --public-key (or --signing-key) or set it in --config")
	}
	k, err := s.signingKey()
	if err != nil {
		return nil, err
	}
	return k.Public().(ed25519.PublicKey), nil
}

// roots returns the manufacturer and operator roots that attest HSMs.
func (s *service) roots() (mfr, op *x509.CertPool, err error) {
	mp, err := s.path("manufacturer-root", s.cfg.ManufacturerRoot, "manufacturer root")
	if err != nil {
		return nil, nil, err
	}
	opp, err := s.path("operator-root", s.cfg.OperatorRoot, "operator root")
	if err != nil {
		return nil, nil, err
	}
	if mfr, err = loadRoots(mp); err != nil {
		return nil, nil, fmt.Errorf("manufacturer root: %w", err)
	}
	if op, err = loadRoots(opp); err != nil {
		return nil, nil, fmt.Errorf("operator root: %w", err)
	}
	return mfr, op, nil
}

// cluster returns the config of cluster id.
func (s *service) cluster(id string) (*clusterConfig, error) {
	cc := s.cfg.Clusters[id]
	if cc == nil {
		if len(s.cfg.Clusters) == 0 {
			return nil, fmt.Errorf("cluster %q is not configured: --config has no clusters", id)
		}
		return nil, fmt.Errorf("cluster %q is not configured (configured: %s)", id, strings.Join(s.cfg.clusterIDs(), ", "))
	}
	return cc, nil
}

// locate returns the cluster of backup id: --cluster if given, else found
// in the store.
func (s *service) locate(id string) (string, error) {
	if cl := s.c.String("cluster"); cl != "" {
		return cl, nil
	}
	return backup.Find(s.c.Context, s.repo, id)
}

// clientConfig returns the TLS settings for cluster id's members.
func clientConfig(id string, cc *clusterConfig) (client.Config, error) {
	if cc.CustomerCA == "" || cc.Cert == "" || cc.Key == "" {
		return client.Config{}, fmt.Errorf("cluster %s: customer_ca, cert and key are required in the config", id)
	}
	ca, err := loadCertificate(cc.CustomerCA)
	if err != nil {
		return client.Config{}, fmt.Errorf("cluster %s: customer CA: %w", id, err)
	}
	cert, err := loadClientCertificate(cc.Cert, cc.Key)
	if err != nil {
		return client.Config{}, fmt.Errorf("cluster %s: %w", id, err)
	}
	if err := checkClientCertificate(cert, ca); err != nil {
		return client.Config{}, fmt.Errorf("cluster %s: client certificate %s: %w", id, cc.Cert, err)
	}
	return client.Config{ClusterID: id, CustomerCA: ca, Certificate: cert}, nil
}

// clusterPassword reads cluster cc's officer password: its password_file,
// else $HSMBACKUP_PASSWORD.
func clusterPassword(cc *clusterConfig) (string, error) {
	return passwordFrom(cc.PasswordFile, "password_file in the config")
}

// pickMember connects to the members of cluster id and returns the one
// cluster.PickMember chooses (healthy, initialized in that cluster and in
// sync), logged in as a crypto officer. The caller closes it.
func (s *service) pickMember(ctx context.Context, id string) (*client.Client, api.Health, error) {
	cc, err := s.cluster(id)
	if err != nil {
		return nil, api.Health{}, err
	}
	if cc.User == "" {
		return nil, api.Health{}, fmt.Errorf("cluster %s: 'user' (a crypto officer) is required in the config", id)
	}
	password, err := clusterPassword(cc)
	if err != nil {
		return nil, api.Health{}, fmt.Errorf("cluster %s: %w", id, err)
	}
	base, err := clientConfig(id, cc)
	if err != nil {
		return nil, api.Health{}, err
	}
	best, err := cluster.PickMember(ctx, cluster.Config{Members: cc.Members, Client: base, Logger: s.log})
	if err != nil {
		return nil, api.Health{}, err
	}
	role, err := best.Client.Login(ctx, cc.User, password)
	if err != nil {
		best.Client.Close()
		return nil, api.Health{}, fmt.Errorf("cluster %s: log in as %s on %s: %w", id, cc.User, best.Addr, err)
	}
	if role != hsmcore.CryptoOfficer {
		best.Client.Close()
		return nil, api.Health{}, fmt.Errorf("cluster %s: %s is a %s; backups need a crypto officer", id, cc.User, role)
	}
	s.log.Info("member chosen", "cluster", id, "addr", best.Addr, "serial", best.Health.Serial)
	return best.Client, best.Health, nil
}
