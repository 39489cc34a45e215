package main

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
	"github.com/hsmbackup/hsmbackup/migrate"
)

// An offline migration, for clusters no one machine reaches together:
// 'keys import --prepare' at the destination writes an offer, 'keys export
// --to hsmbackup' at the source writes a package for it, 'keys import
// --in' at the destination imports the package. docs/MIGRATION.md walks
// through it.

// packageFile is the name of the package in the directory keys export
// --to hsmbackup writes.
const packageFile = "package.json"

func keysImportCommand(conn func(fs ...cli.Flag) []cli.Flag) *cli.Command {
	return &cli.Command{
		Name:  "import",
		Usage: "take keys from a cluster out of reach: prepare an offer, then import the package the source wrote for it",
		UsageText: "hsmbackup keys import --prepare --out OFFER.json [--mechanism hpke|rsa-aes] --cluster ID --user NAME\n" +
			"hsmbackup keys import --in DIR [--report FILE] --cluster ID --user NAME",
		Description: "The offline form of 'keys migrate', for a source no machine reaches\n" +
			"together with this cluster. Step 1 (--prepare): an HSM of this cluster\n" +
			"makes a single-use transport key for --user and attests to it; this\n" +
			"command checks the attestation and writes it, as an offer, to the new\n" +
			"file --out. Carry it to the source, where 'keys export --to hsmbackup\n" +
			"--wrapping-key OFFER.json' checks it and writes a package of up to 100\n" +
			"keys. Step 2 (--in, the package's directory or file): the HSM that made\n" +
			"the transport key checks the package (the source HSM's signature, the\n" +
			"check values), unwraps inside, and the cluster replicates the keys. The\n" +
			"transport key lives in that HSM's memory for 24 hours: a restart voids\n" +
			"the offer. A key imported before is skipped. The report lists each key\n" +
			"moved, skipped or refused (--report FILE: as JSON).",
		Flags: conn(
			&cli.BoolFlag{Name: "prepare", Usage: "step 1: make a transport key and write the offer to --out"},
			&cli.StringFlag{Name: "out", Usage: "step 1: new `FILE` to write the offer to"},
			&cli.StringFlag{Name: "mechanism", Usage: "step 1: transport key `MECHANISM`: hpke (ML-KEM-768 + X25519) or rsa-aes (RSA-3072)", Value: "hpke"},
			&cli.StringFlag{Name: "in", Usage: "step 2: `DIR` keys export --to hsmbackup wrote (or its " + packageFile + ")"},
			&cli.StringFlag{Name: "report", Usage: "step 2: new `FILE` for the report, as JSON"}),
		OnUsageError: usageError,
		Action:       envAction("keys import", keysImport),
	}
}

func keysImport(c *cli.Context, e *env) error {
	switch prep, in := c.Bool("prepare"), c.String("in"); {
	case prep && in != "":
		return usagef("give --prepare (step 1) or --in (step 2), not both")
	case prep:
		return keysPrepare(c, e)
	case in != "":
		return keysImportPackage(c, e)
	}
	return usagef("give --prepare --out FILE (step 1) or --in DIR (step 2) (run '%s --help')", c.Command.HelpName)
}

// keysPrepare is step 1 of keys import: an offer to --out.
func keysPrepare(c *cli.Context, e *env) error {
	out := c.String("out")
	if out == "" {
		return usagef("--prepare needs --out FILE for the offer")
	}
	if _, err := os.Lstat(out); err == nil {
		return fmt.Errorf("--out %s already exists: not overwritten", out)
	}
	mech := hsmcore.Mechanism(c.String("mechanism"))
	if mech != hsmcore.HPKEWrap && mech != hsmcore.RSAAES {
		return usagef("--mechanism %s: a transport key is hpke or rsa-aes", mech)
	}
	t, err := e.target(c, trustMember, needs{user: true, cert: true, clusterID: true})
	if err != nil {
		return err
	}
	mfr, opCerts, err := e.rootCertificates()
	if err != nil {
		return err
	}
	cert, err := clusterCertificate(c.Context, t)
	if err != nil {
		return err
	}
	keyHash, err := hsmcore.PublicKeyHash(cert.PublicKey)
	if err != nil {
		return err
	}
	cl, err := t.open(c.Context, e.log, nil, nil)
	if err != nil {
		return err
	}
	defer cl.Close()
	o, err := migrate.Prepare(c.Context, cl, cert.Raw, migrate.Options{User: t.user, Mechanism: mech, ManufacturerRoots: mfr, OperatorRoots: opCerts,
		Cluster: t.clusterID, ClusterKeyHash: keyHash})
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(o, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteNew(out, append(b, '\n'), 0o644); err != nil { // public: a key to wrap to, attested
		return fmt.Errorf("offer: %w", err)
	}
	k := o.Offer.Key
	e.log.Info("offer prepared", "cluster", t.clusterID, "member", o.Member, "transport_key", k.ID, "mechanism", k.Mechanism, "expires", k.Expires)
	if e.g.json {
		return writeJSON(e.stdout, struct {
			Offer        string            `json:"offer"`
			Cluster      string            `json:"cluster"`
			Member       string            `json:"member"`
			User         string            `json:"user"`
			TransportKey string            `json:"transport_key"`
			Mechanism    hsmcore.Mechanism `json:"mechanism"`
			Expires      time.Time         `json:"expires"`
		}{out, t.clusterID, o.Member, t.user, k.ID, k.Mechanism, k.Expires})
	}
	_, err = fmt.Fprintf(e.stdout, "offer %s: a %s transport key of HSM %s (member %s of cluster %s) for %s, until %s\n"+
		"next: carry it, with this cluster's customer CA, to the source, and there run 'hsmbackup keys export --to hsmbackup --wrapping-key %s --destination-ca CA.crt --out DIR --cluster SOURCE --user %s'; then here, 'hsmbackup keys import --in DIR'\n",
		out, k.Mechanism, k.Serial, o.Member, t.clusterID, t.user, k.Expires.Format(time.RFC3339), filepath.Base(out), t.user)
	return err
}

// keysExportPackage is keys export --to hsmbackup: a package of the
// selected keys, for the offer --wrapping-key, into --out.
func keysExportPackage(c *cli.Context, e *env) error {
	for _, f := range []string{"wrapping-key", "out"} {
		if c.String(f) == "" {
			return usagef("--%s is required (run '%s --help')", f, c.Command.HelpName)
		}
	}
	for _, f := range []string{"import-token", "kid", "mechanism"} {
		if c.IsSet(f) {
			return usagef("--%s is for a cloud: an offer names its own mechanism", f)
		}
	}
	f, err := parseKeyFilter(c)
	if err != nil {
		return err
	}
	sel := f.keep
	if c.IsSet("handle") {
		h := c.Uint64("handle")
		sel = func(k hsmcore.KeyInfo) bool { return k.Handle == h && f.keep(k) }
	}
	b, err := readBounded(c.String("wrapping-key"), migrate.MaxFile)
	if err != nil {
		return err
	}
	o, err := migrate.ParseOffer(b)
	if err != nil {
		return fmt.Errorf("%s: %w", c.String("wrapping-key"), err)
	}
	out := c.String("out")
	if _, err := os.Lstat(out); err == nil {
		return fmt.Errorf("%s already exists: not overwritten", out)
	}
	ca, err := e.destinationCA(c, o.Cluster)
	if err != nil {
		return err
	}
	cert, err := checkClusterCertificate(o.ClusterCertificate, ca, o.Cluster)
	if err != nil {
		return fmt.Errorf("offer of cluster %s: %w: %w", o.Cluster, err, hsmcore.ErrAttestation)
	}
	keyHash, err := hsmcore.PublicKeyHash(cert.PublicKey)
	if err != nil {
		return err
	}
	mfr, opCerts, err := e.rootCertificates()
	if err != nil {
		return err
	}
	t, err := e.target(c, trustMember, needs{user: true, cert: true, clusterID: true})
	if err != nil {
		return err
	}
	if t.clusterID == o.Cluster {
		return usagef("the offer is this cluster's own (%s)", o.Cluster)
	}
	src, err := t.open(c.Context, e.log, nil, nil)
	if err != nil {
		return err
	}
	defer src.Close()
	pkg, rep, err := migrate.Export(c.Context, src, o, migrate.Options{User: t.user, Select: sel, DryRun: c.Bool("dry-run"),
		ManufacturerRoots: mfr, OperatorRoots: opCerts, SourceCluster: t.clusterID, Cluster: o.Cluster, ClusterKeyHash: keyHash})
	if err != nil {
		return fmt.Errorf("%s to %s: %w", t.clusterID, o.Cluster, err)
	}
	if !rep.DryRun {
		raw, err := json.MarshalIndent(pkg, "", "  ")
		if err != nil {
			return err
		}
		if err := os.Mkdir(out, 0o700); err != nil {
			return err
		}
		if err := atomicfile.WriteNew(filepath.Join(out, packageFile), append(raw, '\n'), 0o600); err != nil {
			return fmt.Errorf("package: %w", err)
		}
		e.log.Info("package written", "from", t.clusterID, "to", o.Cluster, "keys", rep.Moved, "refused", rep.Refused, "path", filepath.Join(out, packageFile))
	}
	if err := writeExportReport(c, e, t.clusterID, o.Cluster, rep, filepath.Join(out, packageFile)); err != nil {
		return err
	}
	if rep.Refused > 0 {
		return fmt.Errorf("%d of %d keys refused: %w", rep.Refused, len(rep.Keys), hsmcore.ErrPermission)
	}
	return nil
}

// writeExportReport prints what keys export --to hsmbackup packed.
func writeExportReport(c *cli.Context, e *env, from, to string, rep *migrate.Report, path string) error {
	if e.g.json {
		return writeJSON(e.stdout, struct {
			From    string `json:"from"`
			To      string `json:"to"`
			Package string `json:"package,omitempty"`
			*migrate.Report
		}{from, to, map[bool]string{false: path}[rep.DryRun], rep})
	}
	if err := writeKeyTable(e, rep); err != nil {
		return err
	}
	if rep.DryRun {
		_, err := fmt.Fprintf(e.stdout, "%s for %s: %d would be packed (dry run: nothing written), %d refused\n", from, to, rep.Moved, rep.Refused)
		return err
	}
	_, err := fmt.Fprintf(e.stdout, "%s for %s: %d packed into %s, %d refused\nnext: carry %s to %s and run 'hsmbackup keys import --in %s' there\n",
		from, to, rep.Moved, path, rep.Refused, filepath.Dir(path), to, filepath.Base(filepath.Dir(path)))
	return err
}

// keysImportPackage is step 2 of keys import: the package --in, into the
// cluster.
func keysImportPackage(c *cli.Context, e *env) error {
	in := c.String("in")
	if fi, err := os.Stat(in); err == nil && fi.IsDir() {
		in = filepath.Join(in, packageFile)
	}
	if p := c.String("report"); p != "" {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("--report %s already exists: not overwritten", p)
		}
	}
	b, err := readBounded(in, migrate.MaxFile)
	if err != nil {
		return err
	}
	pkg, err := migrate.ParsePackage(b)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	t, err := e.target(c, trustMember, needs{user: true, cert: true, clusterID: true})
	if err != nil {
		return err
	}
	if pkg.Cluster != t.clusterID {
		return fmt.Errorf("%s: the package is for cluster %s, not %s: %w", in, pkg.Cluster, t.clusterID, hsmcore.ErrInvalid)
	}
	if !slices.Contains(t.members, pkg.Member) {
		return fmt.Errorf("%s: the package's transport key is on %s, not a member of %s (%v): %w", in, pkg.Member, t.clusterID, t.members, hsmcore.ErrInvalid)
	}
	dst, err := t.open(c.Context, e.log, nil, nil)
	if err != nil {
		return err
	}
	defer dst.Close()
	rep, err := migrate.Import(c.Context, dst, pkg)
	if err != nil {
		return fmt.Errorf("%s to %s: %w", pkg.SourceCluster, t.clusterID, err)
	}
	if err := writeMigrationReport(c, e, pkg.SourceCluster, t.clusterID, rep); err != nil {
		return err
	}
	if err := membersBehind(c, dst, t.clusterID); err != nil {
		return err
	}
	if rep.Refused > 0 {
		return fmt.Errorf("%d of %d keys refused: %w", rep.Refused, len(rep.Keys), hsmcore.ErrPermission)
	}
	return nil
}

// destinationCA is the customer CA of cluster id, the destination of an
// offer: --destination-ca, else the customer_ca of that cluster in the
// config.
func (e *env) destinationCA(c *cli.Context, id string) (*x509.Certificate, error) {
	path := c.String("destination-ca")
	if path == "" {
		cc := e.cfg.Clusters[id]
		if cc == nil || cc.CustomerCA == "" {
			return nil, usagef("the offer is from cluster %s: give its customer CA (--destination-ca FILE), or list the cluster with its customer_ca in --config", id)
		}
		path = cc.CustomerCA
	}
	certs, err := loadCertificates(path)
	if err != nil {
		return nil, fmt.Errorf("customer CA of %s: %w", id, err)
	}
	return certs[0], nil
}

// rootCertificates are the manufacturer roots and the operator root
// certificates of the config, which check a transport key's attestation.
func (e *env) rootCertificates() (*x509.CertPool, []*x509.Certificate, error) {
	mfr, _, err := e.roots()
	if err != nil {
		return nil, nil, err
	}
	opPath, err := e.path("operator-root", e.cfg.OperatorRoot, "operator root")
	if err != nil {
		return nil, nil, err
	}
	opCerts, err := loadCertificates(opPath)
	if err != nil {
		return nil, nil, fmt.Errorf("operator root: %w", err)
	}
	return mfr, opCerts, nil
}
