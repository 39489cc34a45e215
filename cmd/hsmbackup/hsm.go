package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/server"
)

func hsmCommand() *cli.Command {
	return &cli.Command{
		Name:  "hsm",
		Usage: "make, serve and inspect HSMs",
		Subcommands: []*cli.Command{
			{
				Name:         "authority",
				Usage:        "manage manufacturer and operator roots",
				OnUsageError: usageError,
				Action:       groupAction,
				Subcommands:  []*cli.Command{authorityCreateCommand()},
			},
			manufactureCommand(),
			serveCommand(),
			statusCommand(),
			{
				Name:         "audit",
				Usage:        "check an HSM's audit log",
				OnUsageError: usageError,
				Action:       groupAction,
				Subcommands:  []*cli.Command{auditVerifyCommand()},
			},
		},
		OnUsageError: usageError,
		Action:       groupAction,
	}
}

func authorityCreateCommand() *cli.Command {
	return &cli.Command{
		Name:  "create",
		Usage: "create a manufacturer's or an operator's root CA and backup-key secret",
		Description: "Writes root.crt (the trust anchor verifiers use), root.key and\n" +
			"backup-key.secret (both 0600) into a directory of their own. A root is\n" +
			"made once: existing files are never overwritten.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "kind", Usage: "`KIND` of authority: manufacturer or operator"},
			&cli.StringFlag{Name: "name", Usage: "`NAME` of the manufacturer or operator (letters, digits, '.', '_', '-')"},
			&cli.StringFlag{Name: "out", Usage: "`DIR` to create the authority in"},
		},
		OnUsageError: usageError,
		Action:       action("hsm authority create", authorityCreate),
	}
}

func authorityCreate(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if err := requireFlags(c, "kind", "name", "out"); err != nil {
		return err
	}
	kind := device.AuthorityKind(c.String("kind"))
	if kind != device.Manufacturer && kind != device.Operator {
		return fmt.Errorf("--kind %q: want manufacturer or operator", kind)
	}
	a, err := device.NewAuthority(kind, c.String("name"))
	if err != nil {
		return err
	}
	dir := c.String("out")
	if err := a.Save(dir); err != nil {
		return err
	}
	p := &printer{w: c.App.Writer}
	p.printf("created %s authority %s in %s\n", kind, a.Name(), dir)
	p.printf("%-17s %s (the trust anchor to give verifiers)\n", "root certificate", filepath.Join(dir, "root.crt"))
	return p.err
}

func manufactureCommand() *cli.Command {
	return &cli.Command{
		Name:  "manufacture",
		Usage: "make a new HSM, certified by a manufacturer and an operator",
		Description: "Creates a software HSM in an empty directory: a device key certified by\n" +
			"both authorities, and the hardware-bound backup keys of its class (from\n" +
			"the manufacturer) and operator. Prints its serial, class and PBK\n" +
			"fingerprint; HSMs with equal fingerprints accept each other's images.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "class", Usage: "hardware `CLASS`, e.g. hsm2m.medium"},
			&cli.StringFlag{Name: "manufacturer", Usage: "`DIR` of the manufacturer authority"},
			&cli.StringFlag{Name: "operator", Usage: "`DIR` of the operator authority"},
			&cli.StringFlag{Name: "firmware", Usage: "firmware version `X.Y.Z`"},
			&cli.BoolFlag{Name: "fips", Usage: "manufacture in FIPS mode"},
			&cli.StringFlag{Name: "serial", Usage: "`SERIAL` number (default: random)"},
			&cli.IntFlag{Name: "capacity", Usage: "maximum number of keys `N`", DefaultText: fmt.Sprint(device.DefaultCapacity)},
			&cli.StringFlag{Name: "out", Usage: "empty or missing `DIR` to hold the HSM"},
			jsonFlag(),
		},
		OnUsageError: usageError,
		Action:       action("hsm manufacture", manufacture),
	}
}

func manufacture(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if err := requireFlags(c, "class", "manufacturer", "operator", "firmware", "out"); err != nil {
		return err
	}
	mfr, err := device.LoadAuthority(c.String("manufacturer"))
	if err != nil {
		return fmt.Errorf("manufacturer: %w", err)
	}
	op, err := device.LoadAuthority(c.String("operator"))
	if err != nil {
		return fmt.Errorf("operator: %w", err)
	}
	dev, err := device.Manufacture(c.String("out"), device.ManufactureConfig{
		Class:        c.String("class"),
		Firmware:     c.String("firmware"),
		FIPS:         c.Bool("fips"),
		Serial:       c.String("serial"),
		Capacity:     c.Int("capacity"),
		Manufacturer: mfr,
		Operator:     op,
	}, device.Options{})
	if err != nil {
		return err
	}
	id, fp, capacity := dev.Identity(), dev.PBKFingerprint(), dev.Capacity()
	if err := dev.Close(); err != nil {
		return err
	}
	if wantJSON(c) {
		return writeJSON(c.App.Writer, struct {
			hsmcore.Identity
			Capacity       int    `json:"capacity"`
			PBKFingerprint string `json:"pbk_fingerprint"`
			Dir            string `json:"dir"`
		}{id, capacity, hex.EncodeToString(fp[:8]), c.String("out")})
	}
	p := &printer{w: c.App.Writer}
	p.printf("manufactured HSM %s in %s\n", id.Serial, c.String("out"))
	p.printf("%-16s %s\n", "serial", id.Serial)
	p.printf("%-16s %s\n", "class", id.Class)
	p.printf("%-16s %s%s\n", "firmware", id.Firmware, fipsNote(id.FIPS))
	p.printf("%-16s %s\n", "manufacturer", id.Manufacturer)
	p.printf("%-16s %s\n", "operator", id.Operator)
	p.printf("%-16s %d keys\n", "capacity", capacity)
	p.printf("%-16s %s\n", "PBK fingerprint", hex.EncodeToString(fp[:8]))
	return p.err
}

func fipsNote(fips bool) string {
	if fips {
		return " (FIPS mode)"
	}
	return ""
}

// minTestIterations bounds --password-iterations from below: cheap enough
// for tests, not so cheap that a slip makes passwords free to guess.
const minTestIterations = 1000

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "serve an HSM over HTTP/2 on mutual TLS 1.3 until interrupted",
		Description: "Opens the HSM in --device and serves it on --listen. Once listening it\n" +
			"prints one line, \"listening on HOST:PORT\", with the real address (so\n" +
			"--listen 127.0.0.1:0 picks a free port). Logs go to stderr. SIGINT or\n" +
			"SIGTERM stops it gracefully: calls in flight finish (up to 10 s) and it\n" +
			"exits 0.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "device", Usage: "directory `DIR` of the HSM, as made by 'hsm manufacture'"},
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:2225", Usage: "`ADDR` to listen on"},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log `FORMAT`: text or json"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "log `LEVEL`: debug, info, warn or error"},
			&cli.IntFlag{
				Name:   "password-iterations",
				Hidden: true,
				Usage: "TEST ONLY: PBKDF2 iterations `N` for passwords set while serving (0: hsmcore's default, " +
					fmt.Sprint(device.DefaultPasswordIterations) + "; else at least " + fmt.Sprint(minTestIterations) + "); lowering it weakens stored passwords",
			},
		},
		OnUsageError: usageError,
		Action:       action("hsm serve", serve),
	}
}

func serve(c *cli.Context) (err error) {
	if err := noArgs(c); err != nil {
		return err
	}
	if err := requireFlags(c, "device", "listen"); err != nil {
		return err
	}
	iter := c.Int("password-iterations")
	if iter != 0 && (iter < minTestIterations || iter > 10_000_000) {
		return fmt.Errorf("--password-iterations %d: want 0 or %d to 10000000", iter, minTestIterations)
	}
	log, err := newLogger(c.App.ErrWriter, c.String("log-format"), c.String("log-level"))
	if err != nil {
		return err
	}
	dev, err := device.Open(c.String("device"), device.Options{PasswordIterations: iter})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := dev.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close device: %w", cerr)
		}
	}()
	srv, err := server.New(server.Config{Device: dev, Logger: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return err
	}
	id := dev.Identity()
	log.Info("serving", "serial", id.Serial, "class", id.Class, "cluster", dev.ClusterID(),
		"cluster_initialized", dev.ClusterInitialized(), "addr", ln.Addr().String())
	if _, err := fmt.Fprintf(c.App.Writer, "listening on %s\n", ln.Addr()); err != nil {
		ln.Close()
		return err
	}
	stopLog := context.AfterFunc(c.Context, func() { log.Info("shutting down", "serial", id.Serial) })
	defer stopLog()
	if err := srv.Serve(c.Context, ln); err != nil {
		return err
	}
	log.Info("stopped", "serial", id.Serial)
	return nil
}

// newLogger returns a slog logger writing to w in format at level.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show an HSM's identity, cluster and state digest",
		Description: "Asks the daemon for its health; no login is needed. A member of an\n" +
			"initialized cluster needs --customer-ca, --cert and --key; an HSM whose\n" +
			"cluster is not initialized yet is trusted through --manufacturer-root.\n" +
			"Members in sync show the same state digest.",
		Flags:        append(memberFlags(), manufacturerRootFlag(), jsonFlag()),
		OnUsageError: usageError,
		Action:       action("hsm status", status),
	}
}

func status(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if c.String("customer-ca") == "" && c.String("manufacturer-root") == "" {
		return errors.New("--customer-ca (an initialized cluster) or --manufacturer-root (an uninitialized HSM) is required")
	}
	cl, err := connectMember(c, true)
	if err != nil {
		return err
	}
	defer cl.Close()
	h, err := cl.Health(c.Context)
	if err != nil {
		return fmt.Errorf("health: %w", cl.explain(err))
	}
	fp := ""
	if len(h.PBKFingerprint) >= 8 {
		fp = hex.EncodeToString(h.PBKFingerprint[:8])
	}
	if wantJSON(c) {
		return writeJSON(c.App.Writer, struct {
			hsmcore.Identity
			ClusterID          string `json:"cluster_id"`
			ClusterInitialized bool   `json:"cluster_initialized"`
			Initialized        bool   `json:"initialized"`
			StateDigest        string `json:"state_digest"`
			PBKFingerprint     string `json:"pbk_fingerprint"`
		}{h.Identity, h.ClusterID, h.ClusterInitialized, h.Initialized, h.StateDigest, fp})
	}
	p := &printer{w: c.App.Writer}
	p.printf("%-20s %s\n", "serial", h.Serial)
	p.printf("%-20s %s\n", "class", h.Class)
	p.printf("%-20s %s%s\n", "firmware", h.Firmware, fipsNote(h.FIPS))
	p.printf("%-20s %s\n", "manufacturer", h.Manufacturer)
	p.printf("%-20s %s\n", "operator", h.Operator)
	p.printf("%-20s %s\n", "cluster", orNone(h.ClusterID))
	p.printf("%-20s %s\n", "cluster initialized", yesNo(h.ClusterInitialized))
	p.printf("%-20s %s\n", "users initialized", yesNo(h.Initialized))
	p.printf("%-20s %s\n", "PBK fingerprint", fp)
	p.printf("%-20s %s\n", "state digest", h.StateDigest)
	return p.err
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func auditVerifyCommand() *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "verify an HSM's audit log: hash chain and signed head, from an attested HSM",
		Description: "Logs in as a crypto officer, fetches the audit log and its head signed\n" +
			"by the device key, then has the HSM attest to a fresh nonce and verifies\n" +
			"the attestation against the manufacturer and operator roots. The log\n" +
			"must be an intact hash chain ending at the head the attested device\n" +
			"signed. The password comes from --password-file or $" + passwordEnv + ".",
		Flags: append(append(memberFlags(), userFlag(), passwordFileFlag(), manufacturerRootFlag(), operatorRootFlag()),
			expectFlags()...),
		OnUsageError: usageError,
		Action:       action("hsm audit verify", auditVerify),
	}
}

func auditVerify(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if err := requireFlags(c, "addr", "customer-ca", "cert", "key", "user", "manufacturer-root", "operator-root"); err != nil {
		return err
	}
	mfrRoots, err := loadRoots(c.String("manufacturer-root"))
	if err != nil {
		return fmt.Errorf("manufacturer root: %w", err)
	}
	opRoots, err := loadRoots(c.String("operator-root"))
	if err != nil {
		return fmt.Errorf("operator root: %w", err)
	}
	password, err := readPassword(c)
	if err != nil {
		return err
	}
	cl, err := connectMember(c, false)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx := c.Context
	if _, err := cl.Login(ctx, c.String("user"), password); err != nil {
		return fmt.Errorf("log in: %w", cl.explain(err))
	}
	defer cl.Logout(ctx)
	al, err := cl.AuditLog(ctx)
	if err != nil {
		return fmt.Errorf("fetch audit log: %w", cl.explain(err))
	}
	st, err := attestHSM(ctx, c, cl, mfrRoots, opRoots)
	if err != nil {
		return err
	}
	if id := c.String("cluster-id"); id != "" && st.ClusterID != id {
		return fmt.Errorf("HSM %s is in cluster %q, not %q: %w", st.Serial, st.ClusterID, id, hsmcore.ErrAttestation)
	}
	if err := hsmcore.VerifyAuditLog(al.Entries, al.Head, st.Certificate); err != nil {
		return fmt.Errorf("audit log of %s: %w", st.Serial, err)
	}
	p := &printer{w: c.App.Writer}
	p.printf("attestation verified: %s\n", describeStatement(st))
	p.printf("audit log of %s: %d entries, chain intact, head signed\n", st.Serial, len(al.Entries))
	return p.err
}

// writeJSON writes v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
