package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
)

// passwordEnv names the environment variable a password is read from when
// no --password-file is given. Passwords are never taken from the command
// line, where other users of the machine can read them.
const passwordEnv = "HSMBACKUP_PASSWORD"

// Flags shared by the commands that talk to an HSM daemon. Each call
// makes a new flag: urfave/cli keeps state in flags, so commands do not
// share them.
func addrFlag() cli.Flag {
	return &cli.StringFlag{Name: "addr", Usage: "`HOST:PORT` of the HSM daemon"}
}

func manufacturerRootFlag() cli.Flag {
	return &cli.StringFlag{Name: "manufacturer-root", Usage: "PEM `FILE` of the manufacturer root CA(s) that certify HSM device keys"}
}

func operatorRootFlag() cli.Flag {
	return &cli.StringFlag{Name: "operator-root", Usage: "PEM `FILE` of the operator root CA(s) that certify HSM device keys"}
}

func userFlag() cli.Flag {
	return &cli.StringFlag{Name: "user", Usage: "`NAME` of the crypto officer"}
}

func passwordFileFlag() cli.Flag {
	return &cli.StringFlag{Name: "password-file", Usage: "`FILE` (mode 0600) whose first line is the password; without it the password is read from $" + passwordEnv}
}

// jsonFlag lets a command that supports --json take it after its name
// too, not only before it as the global flag.
func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print machine-readable JSON"}
}

// wantJSON reports whether --json was given, before the command (the
// global flag) or after it. A command's own flag shadows the global one in
// urfave/cli's lookup, so each level is asked.
func wantJSON(c *cli.Context) bool {
	for _, cc := range c.Lineage() {
		if cc.Bool("json") {
			return true
		}
	}
	return false
}

// memberFlags are the flags of a client of an initialized cluster.
func memberFlags() []cli.Flag {
	return []cli.Flag{
		addrFlag(),
		&cli.StringFlag{Name: "customer-ca", Usage: "PEM `FILE` of the customer CA that signed the cluster certificate and issues client certificates"},
		&cli.StringFlag{Name: "cert", Usage: "PEM `FILE` of the client certificate, issued by the customer CA"},
		&cli.StringFlag{Name: "key", Usage: "PEM `FILE` of the client certificate's private key (mode 0600)"},
		&cli.StringFlag{Name: "cluster-id", Usage: "`ID` the cluster certificate must name (its common name)"},
	}
}

// expectFlags narrow what an attestation must show; unset, they default to
// what the certificates from the trusted roots name.
func expectFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "expect-serial", Usage: "require the HSM's `SERIAL`"},
		&cli.StringFlag{Name: "expect-class", Usage: "require hardware `CLASS` (default: the class the manufacturer certified)"},
		&cli.StringFlag{Name: "expect-manufacturer", Usage: "require manufacturer `NAME` (default: the one the manufacturer root names)"},
		&cli.StringFlag{Name: "expect-operator", Usage: "require operator `NAME` (default: the one the operator root names)"},
		&cli.StringFlag{Name: "min-firmware", Usage: "require firmware `X.Y.Z` or newer"},
	}
}

// requireFlags returns an error naming the first of names that is not set.
// It stands in for urfave/cli's Required, which prints the whole help
// instead of one line.
func requireFlags(c *cli.Context, names ...string) error {
	for _, n := range names {
		if c.String(n) == "" {
			return fmt.Errorf("--%s is required (run '%s --help')", n, c.Command.HelpName)
		}
	}
	return nil
}

// noArgs refuses positional arguments to a command that takes none.
func noArgs(c *cli.Context) error {
	if c.Args().Present() {
		return fmt.Errorf("unexpected argument %q (run '%s --help')", c.Args().First(), c.Command.HelpName)
	}
	return nil
}

// groupAction is the action of a command that only groups subcommands:
// without one it prints help, with an unknown one it fails.
func groupAction(c *cli.Context) error {
	if c.Args().Present() {
		return fmt.Errorf("unknown command %q (run '%s --help' for the list)", c.Args().First(), c.Command.HelpName)
	}
	return cli.ShowSubcommandHelp(c)
}

// loadRoots reads every PEM certificate in path into a pool.
func loadRoots(path string) (*x509.CertPool, error) {
	certs, err := loadCertificates(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// loadCertificates reads the PEM certificates in path; there must be at
// least one.
func loadCertificates(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate in it", path)
	}
	return certs, nil
}

// loadCertificate reads the one PEM certificate in path.
func loadCertificate(path string) (*x509.Certificate, error) {
	certs, err := loadCertificates(path)
	if err != nil {
		return nil, err
	}
	if len(certs) > 1 {
		return nil, fmt.Errorf("%s: %d certificates, want one", path, len(certs))
	}
	return certs[0], nil
}

// loadClientCertificate reads a client certificate and its key. The key
// file must be readable by its owner only.
func loadClientCertificate(certPath, keyPath string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	keyPEM, err := atomicfile.ReadPrivate(keyPath)
	if err != nil {
		return nil, fmt.Errorf("client key: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// tls.X509KeyPair's messages name the problem, never key bytes.
		return nil, fmt.Errorf("client certificate %s and key %s: %w", certPath, keyPath, err)
	}
	leaf := pair.Leaf
	if now := time.Now(); now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("client certificate %s (%s) is not valid now: valid from %s to %s",
			certPath, leaf.Subject.CommonName, leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return &pair, nil
}

// checkClientCertificate checks, as the HSM will, that cert chains to the
// customer CA for client authentication. The TLS client would otherwise
// send no certificate at all, and the HSM could only say that one is
// required.
func checkClientCertificate(cert *tls.Certificate, ca *x509.Certificate) error {
	opts := x509.VerifyOptions{Roots: x509.NewCertPool(), Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	opts.Roots.AddCert(ca)
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		opts.Intermediates.AddCert(c)
	}
	if _, err := cert.Leaf.Verify(opts); err != nil {
		return fmt.Errorf("not usable with customer CA %q: %w", ca.Subject.CommonName, err)
	}
	return nil
}

// conn is a client of one HSM daemon, with what is needed to explain a
// failure to reach it.
type conn struct {
	*client.Client
	addr    string
	hasCert bool // a client certificate is presented
	device  bool // the daemon is trusted as an uninitialized device only
}

// explain adds a hint to an error of a call that did not get an answer
// from the daemon, chosen by the error's type and sentinels, never its
// text. Answers the daemon gave (*client.RemoteError) speak for
// themselves.
func (cl *conn) explain(err error) error {
	var remote *client.RemoteError
	if err == nil || errors.As(err, &remote) || errors.Is(err, context.Canceled) {
		return err
	}
	alert, isAlert := tlsAlert(err)
	hint := ""
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		hint = "nothing listens on " + cl.addr + ": is 'hsmbackup hsm serve' running there?"
	case errors.Is(err, client.ErrUntrusted) && cl.device:
		hint = "the HSM does not present a device certificate from the manufacturer root; if its cluster is initialized already, it presents the cluster certificate instead"
	case errors.Is(err, client.ErrUntrusted):
		hint = "the HSM's certificate is not from --customer-ca or does not name --cluster-id"
	case isAlert && alert == alertUnknownCA:
		hint = "the HSM does not trust the client certificate: it must be issued by the cluster's customer CA"
	case isAlert && alert == alertCertificateExpired:
		hint = "the HSM finds the client certificate expired"
	case !cl.hasCert && !cl.device:
		hint = "no client certificate was given: an initialized cluster requires one from its customer CA, with --cert and --key"
	case isAlert && alert == alertBadCertificate:
		hint = "the HSM refused the client certificate"
	}
	if hint == "" {
		return err
	}
	return fmt.Errorf("%w (%s)", err, hint)
}

// TLS alerts (RFC 8446, section 6) the HSM may send about the client
// certificate.
const (
	alertBadCertificate     tls.AlertError = 42
	alertCertificateExpired tls.AlertError = 45
	alertUnknownCA          tls.AlertError = 48
)

// tlsAlert returns the TLS alert the peer sent, if err is one. crypto/tls
// reports a received alert as a *net.OpError "remote error" holding a
// value of its unexported alert type (a uint8), which tls.AlertError
// mirrors; a wrapped tls.AlertError is taken as is.
func tlsAlert(err error) (tls.AlertError, bool) {
	if a, ok := errors.AsType[tls.AlertError](err); ok {
		return a, true
	}
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "remote error" || op.Err == nil {
		return 0, false
	}
	v := reflect.ValueOf(op.Err)
	if v.Kind() != reflect.Uint8 || v.Type().PkgPath() != "crypto/tls" {
		return 0, false
	}
	return tls.AlertError(v.Uint()), true
}

// connectMember returns a client of an initialized cluster's member, from
// the member flags. With trustDevice, a daemon presenting a device
// certificate from --manufacturer-root (an HSM whose cluster is not
// initialized) is trusted too.
func connectMember(c *cli.Context, trustDevice bool) (*conn, error) {
	if err := requireFlags(c, "addr"); err != nil {
		return nil, err
	}
	cfg := client.Config{Addr: c.String("addr"), ClusterID: c.String("cluster-id")}
	if p := c.String("customer-ca"); p != "" {
		ca, err := loadCertificate(p)
		if err != nil {
			return nil, fmt.Errorf("customer CA: %w", err)
		}
		cfg.CustomerCA = ca
	}
	if p := c.String("manufacturer-root"); trustDevice && p != "" {
		roots, err := loadRoots(p)
		if err != nil {
			return nil, fmt.Errorf("manufacturer root: %w", err)
		}
		cfg.ManufacturerRoots = roots
	}
	if cfg.CustomerCA == nil && cfg.ManufacturerRoots == nil {
		return nil, errors.New("--customer-ca is required to trust the cluster's HSMs")
	}
	certPath, keyPath := c.String("cert"), c.String("key")
	switch {
	case certPath != "" && keyPath != "":
		cert, err := loadClientCertificate(certPath, keyPath)
		if err != nil {
			return nil, err
		}
		if cfg.CustomerCA != nil {
			if err := checkClientCertificate(cert, cfg.CustomerCA); err != nil {
				return nil, fmt.Errorf("client certificate %s: %w", certPath, err)
			}
		}
		cfg.Certificate = cert
	case certPath != "" || keyPath != "":
		return nil, errors.New("--cert and --key go together")
	}
	cl, err := client.New(cfg)
	if err != nil {
		return nil, err
	}
	return &conn{Client: cl, addr: cfg.Addr, hasCert: cfg.Certificate != nil}, nil
}

// connectDevice returns a client of an HSM whose cluster is not yet
// initialized: it trusts the device certificate from the manufacturer
// roots and presents no client certificate.
func connectDevice(c *cli.Context) (*conn, *x509.CertPool, error) {
	if err := requireFlags(c, "addr", "manufacturer-root"); err != nil {
		return nil, nil, err
	}
	roots, err := loadRoots(c.String("manufacturer-root"))
	if err != nil {
		return nil, nil, fmt.Errorf("manufacturer root: %w", err)
	}
	cl, err := client.New(client.Config{Addr: c.String("addr"), ManufacturerRoots: roots})
	if err != nil {
		return nil, nil, err
	}
	return &conn{Client: cl, addr: c.String("addr"), device: true}, roots, nil
}

// readPassword returns the password from --password-file or else from
// $HSMBACKUP_PASSWORD (see passwordFrom).
func readPassword(c *cli.Context) (string, error) {
	return passwordFrom(c.String("password-file"), "--password-file")
}

// passwordFrom returns the first line of the file at path, which must be
// of mode 0600, or with path "" the value of $HSMBACKUP_PASSWORD. how
// names the setting of path, for the error when neither is set.
func passwordFrom(path, how string) (string, error) {
	if path != "" {
		data, err := atomicfile.ReadPrivate(path)
		if err != nil {
			return "", fmt.Errorf("password file: %w", err)
		}
		line, _, _ := strings.Cut(string(data), "\n")
		line = strings.TrimSuffix(line, "\r")
		if line == "" {
			return "", fmt.Errorf("password file %s: the first line is empty", path)
		}
		return line, nil
	}
	if pw, ok := os.LookupEnv(passwordEnv); ok {
		if pw == "" {
			return "", fmt.Errorf("$%s is empty", passwordEnv)
		}
		return pw, nil
	}
	return "", fmt.Errorf("no password: give %s or set $%s (passwords are never taken as arguments)", how, passwordEnv)
}

// attestHSM asks the HSM to attest to a fresh nonce and verifies the
// answer (see challengeOptions).
func attestHSM(ctx context.Context, c *cli.Context, cl *conn, mfrRoots, opRoots *x509.CertPool) (*hsmcore.Statement, error) {
	st, err := hsmcore.Challenge(ctx, explained{cl}, challengeOptions(c, mfrRoots, opRoots))
	if err != nil && !errors.Is(err, hsmcore.ErrAttestation) {
		return nil, fmt.Errorf("attest: %w", err)
	}
	return st, err
}

// challengeOptions are what an attestation must show: both certificate
// chains, the signature, the nonce, freshness, and the expectation flags.
// Expectations left unset default to what the statement claims, which
// VerifyAttestation still checks against the names in the certificates
// that chain to the trusted roots.
func challengeOptions(c *cli.Context, mfrRoots, opRoots *x509.CertPool) hsmcore.ChallengeOptions {
	return hsmcore.ChallengeOptions{
		ManufacturerRoots: mfrRoots,
		OperatorRoots:     opRoots,
		Expect: hsmcore.Expectation{
			Serial:       c.String("expect-serial"),
			Class:        c.String("expect-class"),
			Manufacturer: c.String("expect-manufacturer"),
			Operator:     c.String("expect-operator"),
			MinFirmware:  c.String("min-firmware"),
		},
		Certified: true,
	}
}

// explained is a conn whose calls that get no answer are explained
// (conn.explain), as the library's flows (hsmcore/cluster) call it.
type explained struct{ *conn }

func (e explained) Attest(ctx context.Context, nonce []byte) (*hsmcore.Attestation, error) {
	a, err := e.conn.Attest(ctx, nonce)
	return a, e.explain(err)
}

func (e explained) Health(ctx context.Context) (api.Health, error) {
	h, err := e.conn.Health(ctx)
	return h, e.explain(err)
}

// describeStatement is one line naming a verified HSM.
func describeStatement(st *hsmcore.Statement) string {
	s := fmt.Sprintf("serial %s, class %s, manufacturer %s, operator %s, firmware %s", st.Serial, st.Class, st.Manufacturer, st.Operator, st.Firmware)
	if st.FIPS {
		s += ", FIPS mode"
	}
	return s
}
