package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
)

// This file is the one way a command reaches HSMs and logs in: a target,
// resolved from the connection flags and, for what they leave unset, the
// config file's cluster entry.

// trust says which certificate a command accepts from the HSMs it
// reaches.
type trust int

const (
	// trustMember: the cluster certificate, from the customer CA; the
	// command presents a client certificate from that CA.
	trustMember trust = iota
	// trustDevice: the device certificate, from the manufacturer roots:
	// an HSM whose cluster is not initialized. No client certificate.
	trustDevice
	// trustEither: a member if a customer CA is known, and a device if
	// manufacturer roots are (hsm status).
	trustEither
)

// target is how a command reaches the HSMs it works on, and whom it logs
// in as.
type target struct {
	clusterID string        // the cluster the HSMs are in; "" for a new HSM
	members   []string      // --addr, else the cluster entry's members
	tls       client.Config // trust and client certificate; Addr unset
	user      string        // "" when the command logs in as nobody
	password  func() (string, error)
	device    bool // trusted through the manufacturer roots only
}

// connectionFlags are the flags that say how to reach HSMs. Each may be
// left to the cluster entry of --config that --cluster names (or that
// lists --addr).
func connectionFlags() []cli.Flag {
	return []cli.Flag{
		configFlag(),
		timeoutFlag(),
		&cli.StringFlag{Name: "cluster", Usage: "`ID` of a cluster in --config whose settings (members, customer CA, client certificate, user) fill in the flags not given"},
		addrFlag(),
		&cli.StringFlag{Name: "customer-ca", Usage: "PEM `FILE` of the customer CA that signed the cluster certificate and issues client certificates"},
		&cli.StringFlag{Name: "cert", Usage: "PEM `FILE` of the client certificate, issued by the customer CA"},
		&cli.StringFlag{Name: "key", Usage: "PEM `FILE` of the client certificate's private key (mode 0600)"},
		&cli.StringFlag{Name: "cluster-id", Usage: "`ID` the cluster certificate must name (its common name; default: --cluster)"},
	}
}

// loginFlags name the user a command logs in as.
func loginFlags(role string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "user", Usage: "`NAME` of the " + role},
		passwordFileFlag(),
	}
}

// entry returns the config's cluster entry for the command: the one
// --cluster names, else the one whose members list --addr, else nil.
func (e *env) entry(c *cli.Context) (string, *clusterConfig, error) {
	if id := c.String("cluster"); id != "" {
		cc, err := e.cluster(id)
		return id, cc, err
	}
	if addr := c.String("addr"); addr != "" {
		for _, id := range e.cfg.clusterIDs() {
			if slices.Contains(e.cfg.Clusters[id].Members, addr) {
				return id, e.cfg.Clusters[id], nil
			}
		}
	}
	return "", nil, nil
}

// needs are what a command requires of its target beyond a way to reach
// it; each is checked, naming the flag, before any file is read.
type needs struct {
	user      bool // a user to log in as (--user, or the entry's)
	cert      bool // a client certificate (--cert and --key, or the entry's)
	clusterID bool // the cluster the HSM must be in (--cluster-id or --cluster)
}

// target resolves the command's target: every flag that is set wins over
// the cluster entry's setting of the same thing.
func (e *env) target(c *cli.Context, how trust, need needs) (*target, error) {
	id, cc, err := e.entry(c)
	if err != nil {
		return nil, err
	}
	if cc == nil {
		cc = &clusterConfig{}
	}
	t := &target{clusterID: cmp.Or(c.String("cluster-id"), id), user: cmp.Or(c.String("user"), cc.User), password: passwordOf(c, cc)}
	t.tls.Timeout = e.g.timeout
	if addr := c.String("addr"); addr != "" {
		t.members = []string{addr}
	} else {
		t.members = cc.Members
	}
	mfrPath := cmp.Or(c.String("manufacturer-root"), e.cfg.ManufacturerRoot)
	caPath := cmp.Or(c.String("customer-ca"), cc.CustomerCA)
	required := func(what string) error {
		return usagef("%s is required (run '%s --help')", what, c.Command.HelpName)
	}
	switch {
	case len(t.members) == 0:
		return nil, required("--addr (or --cluster with a cluster of --config)")
	case how == trustDevice && mfrPath == "":
		return nil, required("--manufacturer-root")
	case how == trustMember && caPath == "":
		return nil, usagef("--customer-ca is required to trust the cluster's HSMs")
	case how == trustEither && caPath == "" && mfrPath == "":
		return nil, usagef("--customer-ca (an initialized cluster) or --manufacturer-root (an uninitialized HSM) is required")
	case need.cert && how != trustDevice && (cmp.Or(c.String("cert"), cc.Cert) == "" || cmp.Or(c.String("key"), cc.Key) == ""):
		return nil, required("--cert and --key (a client certificate from the customer CA)")
	case need.clusterID && t.clusterID == "":
		return nil, required("--cluster-id")
	case need.user && t.user == "":
		return nil, required("--user")
	}
	if how != trustMember && mfrPath != "" {
		if t.tls.ManufacturerRoots, err = loadRoots(mfrPath); err != nil {
			return nil, fmt.Errorf("manufacturer root: %w", err)
		}
	}
	if t.tls.Claims, err = loadClaims(c.StringSlice("claim")...); err != nil {
		return nil, err
	}
	if how == trustDevice {
		t.device = true
		return t, nil
	}
	if caPath != "" {
		if t.tls.CustomerCA, err = loadCertificate(caPath); err != nil {
			return nil, fmt.Errorf("customer CA: %w", err)
		}
	}
	t.tls.ClusterID = t.clusterID
	if t.tls.Certificate, err = clientCertOf(c, cc, t.tls.CustomerCA); err != nil {
		return nil, err
	}
	t.device = t.tls.CustomerCA == nil
	return t, nil
}

// passwordOf returns how the command reads its user's password:
// --password-file, else $HSMBACKUP_PASSWORD_FILE, else the entry's
// password_file, else the variable its password_env names, else
// $HSMBACKUP_PASSWORD.
func passwordOf(c *cli.Context, cc *clusterConfig) func() (string, error) {
	path, how := passwordSource(c, cc)
	return passwordReader(path, how, cc)
}

// passwordReader reads the password from path, else cc's password_env,
// else $HSMBACKUP_PASSWORD.
func passwordReader(path, how string, cc *clusterConfig) func() (string, error) {
	if path == "" && cc.PasswordEnv != "" {
		return func() (string, error) {
			pw, ok := os.LookupEnv(cc.PasswordEnv)
			if !ok || pw == "" {
				return "", fmt.Errorf("$%s (password_env in the config) is not set", cc.PasswordEnv)
			}
			return pw, nil
		}
	}
	return func() (string, error) { return passwordFrom(path, how) }
}

// passwordSource is the file passwordOf reads ("" for
// $HSMBACKUP_PASSWORD) and the setting that named it.
func passwordSource(c *cli.Context, cc *clusterConfig) (path, how string) {
	path, how = passwordFileOf(c)
	if path == "" && cc.PasswordFile != "" {
		path, how = cc.PasswordFile, "password_file in the config"
	}
	return path, how
}

// officerPassword is passwordOf for a command without --password-file:
// $HSMBACKUP_PASSWORD_FILE, else the entry's password_file, else its
// password_env, else $HSMBACKUP_PASSWORD.
func officerPassword(c *cli.Context, cc *clusterConfig) func() (string, error) {
	path, how := passwordFileOf(c)
	if path == "" {
		path, how = cc.PasswordFile, "password_file in the config"
	}
	return passwordReader(path, how, cc)
}

// clientCertOf loads the command's client certificate: --cert and --key,
// else the entry's; nil if neither names one. A certificate not from ca
// (if known) is refused here, with a clearer message than the HSM's.
func clientCertOf(c *cli.Context, cc *clusterConfig, ca *x509.Certificate) (*tls.Certificate, error) {
	certPath, keyPath := cmp.Or(c.String("cert"), cc.Cert), cmp.Or(c.String("key"), cc.Key)
	switch {
	case certPath == "" && keyPath == "":
		return nil, nil
	case certPath == "" || keyPath == "":
		return nil, errors.New("--cert and --key go together")
	}
	cert, err := loadClientCertificate(certPath, keyPath)
	if err != nil {
		return nil, err
	}
	if ca != nil {
		if err := checkClientCertificate(cert, ca); err != nil {
			return nil, fmt.Errorf("client certificate %s: %w", certPath, err)
		}
	}
	return cert, nil
}

// clusterTarget is the target of a configured cluster, as the commands that
// work on a whole cluster reach it: all of its members, its customer CA,
// client certificate and user. With officer, the entry must name its
// crypto officer (backup create, add-member log in as it).
func (e *env) clusterTarget(id string, officer bool) (*target, error) {
	cc, err := e.cluster(id)
	if err != nil {
		return nil, err
	}
	if officer && cc.User == "" {
		return nil, fmt.Errorf("cluster %s: 'user' (a crypto officer) is required in the config", id)
	}
	if cc.CustomerCA == "" || cc.Cert == "" || cc.Key == "" {
		return nil, fmt.Errorf("cluster %s: customer_ca, cert and key are required in the config", id)
	}
	ca, err := loadCertificate(cc.CustomerCA)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: customer CA: %w", id, err)
	}
	cert, err := loadClientCertificate(cc.Cert, cc.Key)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", id, err)
	}
	if err := checkClientCertificate(cert, ca); err != nil {
		return nil, fmt.Errorf("cluster %s: client certificate %s: %w", id, cc.Cert, err)
	}
	return &target{
		clusterID: id,
		members:   cc.Members,
		tls:       client.Config{ClusterID: id, CustomerCA: ca, Certificate: cert, Timeout: e.g.timeout},
		user:      cc.User,
		password:  officerPassword(e.c, cc),
	}, nil
}

// as returns t logging in as user with the password from passwordFile (or
// $HSMBACKUP_PASSWORD), as a command that names its own user does.
func (t *target) as(user, passwordFile, how string) *target {
	u := *t
	u.user = user
	u.password = func() (string, error) { return passwordFrom(passwordFile, how) }
	return &u
}

// withPassword returns t with a password already read.
func (t *target) withPassword(password string) *target {
	u := *t
	u.password = func() (string, error) { return password, nil }
	return &u
}

// addr is the target's one HSM: the command's --addr (or the cluster's
// only member).
func (t *target) addr() (string, error) {
	if len(t.members) != 1 {
		return "", fmt.Errorf("cluster %s has %d members: give --addr to name one", t.clusterID, len(t.members))
	}
	return t.members[0], nil
}

// dial returns a client of the HSM at addr. It does not log in.
func (t *target) dial(addr string) (*conn, error) {
	cfg := t.tls
	cfg.Addr = addr
	cl, err := client.New(cfg)
	if err != nil {
		return nil, err
	}
	return &conn{Client: cl, addr: addr, hasCert: cfg.Certificate != nil, device: t.device, timeout: cfg.Timeout}, nil
}

// dialOne dials the target's one HSM.
func (t *target) dialOne() (*conn, error) {
	addr, err := t.addr()
	if err != nil {
		return nil, err
	}
	return t.dial(addr)
}

// login logs cl in as the target's user and returns its role. What the
// role may do is the HSM's to enforce.
func (t *target) login(ctx context.Context, cl *conn) (hsmcore.Role, error) {
	if t.user == "" {
		return "", errors.New("--user is required")
	}
	password, err := t.password()
	if err != nil {
		return "", err
	}
	role, err := cl.Login(ctx, t.user, password)
	if err != nil {
		return "", cl.explain(err) // names the user
	}
	return role, nil
}

// open logs in to every member as the target's user, as a cluster client.
// With roots, it attests new members (cluster.AddMember) against them.
func (t *target) open(ctx context.Context, log *slog.Logger, mfr, op *x509.CertPool) (*cluster.Cluster, error) {
	if t.user == "" {
		return nil, fmt.Errorf("cluster %s: 'user' is required in the config", t.clusterID)
	}
	password, err := t.password()
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", t.clusterID, err)
	}
	cfg := cluster.Config{Members: t.members, Client: t.tls, OperatorRoots: op, Logger: log}
	if mfr != nil {
		cfg.Client.ManufacturerRoots = mfr
	}
	cl, err := cluster.Open(ctx, cfg, t.user, password)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", t.clusterID, err)
	}
	return cl, nil
}

// pick connects to the members and returns the one cluster.PickMember
// chooses (healthy, initialized in the cluster, every healthy member in
// the same state, or the member named), logged in as a crypto officer.
// The caller closes it.
func (t *target) pick(ctx context.Context, log *slog.Logger, member string) (*conn, api.Health, error) {
	password, err := t.password() // before any connection: a bad password file fails fast
	if err != nil {
		return nil, api.Health{}, fmt.Errorf("cluster %s: %w", t.clusterID, err)
	}
	picked, err := cluster.PickMember(ctx, cluster.Config{Members: t.members, Client: t.tls, Logger: log}, cluster.PickOptions{Member: member})
	if errors.Is(err, cluster.ErrDiverged) {
		return nil, api.Health{}, fmt.Errorf("%w: back up the member whose state is current with --member ADDR", err)
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("%w (%s)", err, timeoutHint(t.tls.Timeout))
		}
		return nil, api.Health{}, err
	}
	cl := &conn{Client: picked.Client, addr: picked.Addr, hasCert: true, timeout: t.tls.Timeout}
	role, err := t.withPassword(password).login(ctx, cl)
	if err == nil && role != hsmcore.CryptoOfficer {
		err = fmt.Errorf("%s is a %s; backups need a crypto officer", t.user, role)
	}
	if err != nil {
		cl.Close()
		return nil, api.Health{}, fmt.Errorf("cluster %s: %s: %w", t.clusterID, cl.addr, err)
	}
	log.Info("member chosen", "cluster", t.clusterID, "addr", cl.addr, "serial", picked.Health.Serial)
	return cl, picked.Health, nil
}
