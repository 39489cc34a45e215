package main

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/storeurl"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// The environment variables of the settings that are also flags.
const (
	configEnv       = "HSMBACKUP_CONFIG"
	storeEnv        = "HSMBACKUP_STORE"
	passwordFileEnv = "HSMBACKUP_PASSWORD_FILE"
)

// globalOptions are the settings every command shares, read once, by
// newEnv, by one rule (docs/CLI.md, "Precedence"): a flag given anywhere
// on the command line (before the command's name or after it) beats its
// environment variable, which beats the config file, which beats the
// default. A flag given twice with different values is a usage error.
type globalOptions struct {
	config  string        // --config, else $HSMBACKUP_CONFIG
	store   string        // --store, else $HSMBACKUP_STORE; else the config's (storeURL)
	json    bool          // --json
	timeout time.Duration // --timeout: each HSM call; 0: the client's default
}

func globalsOf(c *cli.Context) (globalOptions, error) {
	g := globalOptions{json: wantJSON(c)}
	var err error
	if g.config, err = setting(c, "config", configEnv); err != nil {
		return g, err
	}
	if g.store, err = setting(c, "store", storeEnv); err != nil {
		return g, err
	}
	if g.timeout, err = durationFlag(c, "timeout"); err != nil {
		return g, err
	}
	if g.timeout < 0 {
		return g, usagef("--timeout %s: want a positive duration (run '%s --help')", g.timeout, c.Command.HelpName)
	}
	return g, nil
}

// setting returns string flag name, given anywhere on the command line,
// else environment variable env.
func setting(c *cli.Context, name, env string) (string, error) {
	v, err := explicitFlag(c, name)
	if err != nil || v != "" {
		return v, err
	}
	return os.Getenv(env), nil
}

// passwordFileOf returns the password file of the command's own user:
// --password-file, else $HSMBACKUP_PASSWORD_FILE, else "" (the cluster
// entry's password_file, else $HSMBACKUP_PASSWORD), and the setting that
// named it.
func passwordFileOf(c *cli.Context) (path, how string) {
	if p := flagValue(c, "password-file"); p != "" {
		return p, "--password-file"
	}
	if p := os.Getenv(passwordFileEnv); p != "" {
		return p, "$" + passwordFileEnv
	}
	return "", "--password-file"
}

// env is what every command works with, resolved once from the global
// options and the config file: the config (empty without --config), the
// logger (stderr, as text or, with --json, JSON lines), progress bars on
// a terminal, and on demand the store (openStore), keys, roots and HSM
// targets (target.go). Commands call newEnv, then close.
type env struct {
	c      *cli.Context
	g      globalOptions
	stdout io.Writer // results; logs and bars go to stderr
	cfg    *config
	log    *slog.Logger
	prog   *progress // nil off a terminal

	repo backup.Repo // where backups live: the store, with progress bars (openStore)
	base store.Store // repo's store without the progress bars

	// The HSM-held master key, once used (see hsmKey).
	hsmKeyCluster   *cluster.Cluster
	hsmKeyRecipient *wrap.HSMRecipient
}

// newEnv reads the config, if any, and sets up logging.
func newEnv(c *cli.Context) (*env, error) {
	g, err := globalsOf(c)
	if err != nil {
		return nil, err
	}
	cfg := new(config)
	if g.config != "" {
		if cfg, err = loadConfig(g.config); err != nil {
			return nil, err
		}
	}
	prog, log, err := newOutput(c, g.json) // logging.go: --quiet, --log-format, --log-level
	if err != nil {
		return nil, err
	}
	return &env{c: c, g: g, stdout: prog.resultsTo(c.App.Writer), cfg: cfg, log: log, prog: prog}, nil
}

// newStoreEnv is newEnv and openStore, for the commands that work on
// backups.
func newStoreEnv(c *cli.Context) (*env, error) {
	e, err := newEnv(c)
	if err != nil {
		return nil, err
	}
	if err := e.openStore(); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

// storeURL is the store of --store, else of $HSMBACKUP_STORE, else of
// the config.
func (e *env) storeURL() (string, error) {
	url := cmp.Or(e.g.store, e.cfg.Store)
	if url == "" {
		return "", usagef("no store: give --store URL, set $%s or 'store:' in --config", storeEnv)
	}
	return url, nil
}

// openStore opens the store of storeURL. Only backup create (and backup
// init, which does not come here) makes a missing file store's directory:
// for every other command a missing store is an error (store.ErrNoStore),
// not an empty store.
func (e *env) openStore() error {
	url, err := e.storeURL()
	if err != nil {
		return err
	}
	create := e.c.Command.HelpName == e.c.App.Name+" backup create"
	st, err := storeurl.Open(url, storeurl.Options{Create: create})
	if errors.Is(err, store.ErrNoStore) {
		return fmt.Errorf("%w (a new store is made by 'hsmbackup backup init')", err)
	}
	if err != nil {
		return err
	}
	e.base, e.repo = st, backup.Repo{Store: e.prog.wrap(st)}
	return nil
}

// staleUploadAge is how long an upload must have been idle before
// removeStaleUploads takes it for the leftover of a killed writer. The
// file store also spares live writers however idle; S3 cannot tell.
const staleUploadAge = 24 * time.Hour

// removeStaleUploads removes, best effort, what uploads killed mid-way
// left in the store (file-store temporary files, incomplete S3 multipart
// uploads): they are never listed, but take space.
func (e *env) removeStaleUploads(ctx context.Context) {
	r, ok := store.As[store.StaleUploadRemover](e.base)
	if !ok {
		return
	}
	n, err := r.RemoveStaleUploads(ctx, time.Now().Add(-staleUploadAge))
	switch {
	case err != nil:
		e.log.Warn("stale uploads not removed", "err", err)
	case n > 0:
		e.log.Info("stale uploads removed", "count", n)
	}
}

// close ends what the env opened: the HSM-held master key's session,
// the progress bars.
func (e *env) close() {
	if e.hsmKeyCluster != nil {
		e.hsmKeyCluster.Close()
	}
	e.prog.wait()
}

// path returns the file a flag or, failing that, the config names.
func (e *env) path(flag, fromConfig, what string) (string, error) {
	p := cmp.Or(flagValue(e.c, flag), fromConfig)
	if p == "" {
		return "", fmt.Errorf("no %s: give --%s or set it in --config", what, flag)
	}
	return p, nil
}

func (e *env) signingKey() (ed25519.PrivateKey, error) {
	p, err := e.path("signing-key", e.cfg.SigningKey, "manifest signing key")
	if err != nil {
		return nil, err
	}
	return backup.LoadSigningKey(p)
}

// publicKey is the manifest public key, or the signing key's if only that
// is configured.
func (e *env) publicKey() (ed25519.PublicKey, error) {
	if p := cmp.Or(flagValue(e.c, "public-key"), e.cfg.PublicKey); p != "" {
		return backup.LoadPublicKey(p)
	}
	if cmp.Or(flagValue(e.c, "signing-key"), e.cfg.SigningKey) == "" {
		return nil, errors.New("no manifest public key: give --public-key (or --signing-key) or set it in --config")
	}
	k, err := e.signingKey()
	if err != nil {
		return nil, err
	}
	return k.Public().(ed25519.PublicKey), nil
}

// optionalPublicKey is publicKey, or nil if neither a public key nor a
// signing key is configured (by flag or config).
func (e *env) optionalPublicKey() (ed25519.PublicKey, error) {
	if cmp.Or(flagValue(e.c, "public-key"), e.cfg.PublicKey, flagValue(e.c, "signing-key"), e.cfg.SigningKey) == "" {
		return nil, nil
	}
	return e.publicKey()
}

// roots returns the manufacturer and operator roots that attest HSMs.
func (e *env) roots() (mfr, op *x509.CertPool, err error) {
	mp, err := e.path("manufacturer-root", e.cfg.ManufacturerRoot, "manufacturer root")
	if err != nil {
		return nil, nil, err
	}
	opp, err := e.path("operator-root", e.cfg.OperatorRoot, "operator root")
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
func (e *env) cluster(id string) (*clusterConfig, error) {
	cc := e.cfg.Clusters[id]
	if cc == nil {
		if len(e.cfg.Clusters) == 0 {
			return nil, fmt.Errorf("cluster %q is not configured: --config has no clusters", id)
		}
		return nil, fmt.Errorf("cluster %q is not configured (configured: %s)", id, strings.Join(e.cfg.clusterIDs(), ", "))
	}
	return cc, nil
}
