package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
	"github.com/hsmbackup/hsmbackup/migrate"
)

func keysMigrateCommand() *cli.Command {
	return &cli.Command{
		Name:  "migrate",
		Usage: "move a crypto user's keys from one cluster to another, wrapped from HSM to HSM",
		Description: "Moves the keys --user owns in cluster --from (those the filters select)\n" +
			"to cluster --to, both of --config, as that user on both (the same name and\n" +
			"--password-file). The destination HSM makes a single-use ML-KEM-768 +\n" +
			"X25519 transport key and attests to it; this command and then the source\n" +
			"HSM check that attestation (manufacturer and operator roots, a fresh\n" +
			"nonce, the destination cluster's key as its customer CA certifies it);\n" +
			"the source HSM writes a signed bundle of the keys under it (their\n" +
			"attributes, shares and check values); the destination HSM checks the\n" +
			"bundle, unwraps inside, checks every check value, and the cluster\n" +
			"replicates the keys to its members. Only extractable keys without\n" +
			"wrap-with-trusted leave. A key the destination holds from an earlier run\n" +
			"(same origin, the source cluster and handle, and check value) is skipped:\n" +
			"run it again after an interruption to finish. --dry-run makes every\n" +
			"check and moves nothing. The report lists each key moved, skipped or\n" +
			"refused, with why (--report FILE: as JSON). Destination members left\n" +
			"behind are named, with exit status 1: an officer's open re-syncs them.",
		Flags: append(append([]cli.Flag{configFlag(),
			&cli.StringFlag{Name: "from", Usage: "`ID` of the source cluster in --config (required)"},
			&cli.StringFlag{Name: "to", Usage: "`ID` of the destination cluster in --config (required)"},
			&cli.StringFlag{Name: "label", Usage: "only keys labelled `LABEL`"},
			&cli.StringFlag{Name: "type", Usage: "only keys of `TYPE`"},
			&cli.StringSliceFlag{Name: "attr", Usage: "only keys with attribute `NAME` set (NAME=false: not set); repeatable"},
			&cli.StringFlag{Name: "mechanism", Usage: "transport key `MECHANISM`: hpke (ML-KEM-768 + X25519) or rsa-aes (RSA-3072, for destinations without ML-KEM)", Value: "hpke"},
			&cli.BoolFlag{Name: "dry-run", Usage: "make every check and move nothing"},
			&cli.StringFlag{Name: "report", Usage: "new `FILE` for the report, as JSON"},
		}, loginFlags("crypto user whose keys move (on both clusters)")...), jsonFlag()),
		OnUsageError: usageError,
		Action:       envAction("keys migrate", keysMigrate),
	}
}

func keysMigrate(c *cli.Context, e *env) error {
	if err := requireFlags(c, "from", "to", "user"); err != nil {
		return err
	}
	from, to, user := c.String("from"), c.String("to"), c.String("user")
	if from == to {
		return usagef("--from and --to name the same cluster %s", from)
	}
	f, err := parseKeyFilter(c)
	if err != nil {
		return err
	}
	mech := hsmcore.Mechanism(c.String("mechanism"))
	if mech != hsmcore.HPKEWrap && mech != hsmcore.RSAAES {
		return usagef("--mechanism %s: a transport key is hpke or rsa-aes", mech)
	}
	mfr, opCerts, err := e.rootCertificates()
	if err != nil {
		return err
	}
	if p := c.String("report"); p != "" {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("--report %s already exists: not overwritten", p)
		}
	}
	srcTarget, err := e.userTarget(c, from, user)
	if err != nil {
		return err
	}
	src, err := srcTarget.open(c.Context, e.log, nil, nil)
	if err != nil {
		return err
	}
	defer src.Close()
	dstTarget, err := e.userTarget(c, to, user)
	if err != nil {
		return err
	}
	keyHash, err := clusterKeyHash(c.Context, dstTarget)
	if err != nil {
		return err
	}
	room := func(ctx context.Context) (int, error) { return destinationRoom(ctx, dstTarget) }
	dst, err := dstTarget.open(c.Context, e.log, nil, nil)
	if err != nil {
		return err
	}
	defer dst.Close()
	rep, err := migrate.Run(c.Context, src, dst, migrate.Options{User: user, Select: f.keep, DryRun: c.Bool("dry-run"), Mechanism: mech,
		ManufacturerRoots: mfr, OperatorRoots: opCerts, SourceCluster: from, Cluster: to, ClusterKeyHash: keyHash, Room: room,
		Progress: func(done, total int) { e.log.Info("bundle moved", "from", from, "to", to, "done", done, "of", total) }})
	if rep != nil {
		if werr := writeMigrationReport(c, e, from, to, rep); werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		return fmt.Errorf("%s to %s: %w (what moved stays: run it again to finish)", from, to, err)
	}
	if err := membersBehind(c, dst, to); err != nil {
		return err
	}
	if rep.Refused > 0 {
		return fmt.Errorf("%d of %d keys refused: %w", rep.Refused, len(rep.Keys), hsmcore.ErrPermission)
	}
	return nil
}

// membersBehind names the members of cl, cluster id, that are down or
// out of sync after keys moved to it.
func membersBehind(c *cli.Context, cl *cluster.Cluster, id string) error {
	var behind []string
	for _, m := range cl.Members(c.Context) {
		if !m.Healthy || !m.InSync {
			behind = append(behind, m.Addr)
		}
	}
	if len(behind) > 0 {
		return fmt.Errorf("%s: destination members %s are down or out of sync, so what moved is not on them yet: have the officer of %s open the cluster (e.g. 'hsmbackup users list --cluster %s') to re-sync them", id, strings.Join(behind, ", "), id, id)
	}
	return nil
}

// userTarget is the target of cluster id of the config, as user, whose
// password comes from --password-file or the variables, never from the
// entry (whose password is its officer's).
func (e *env) userTarget(c *cli.Context, id, user string) (*target, error) {
	t, err := e.clusterTarget(id, false)
	if err != nil {
		return nil, err
	}
	pw, err := passwordOf(c, &clusterConfig{})() // not the entry's: its password is the officer's
	if err != nil {
		return nil, err
	}
	t.user = user
	return t.withPassword(pw), nil
}

// clusterKeyHash is the SHA-256 of the public key of the cluster
// certificate t's members present, checked against t's customer CA and
// cluster id: a transport key must come from an HSM holding that key.
func clusterKeyHash(ctx context.Context, t *target) ([]byte, error) {
	cert, err := clusterCertificate(ctx, t)
	if err != nil {
		return nil, err
	}
	return hsmcore.PublicKeyHash(cert.PublicKey)
}

// clusterCertificate is the cluster certificate t's members present
// (the first that answers), checked against t's customer CA and cluster
// id.
func clusterCertificate(ctx context.Context, t *target) (*x509.Certificate, error) {
	var certs api.Certificates
	var err error = errors.New("no members")
	for _, addr := range t.members {
		var cl *conn
		if cl, err = t.dial(addr); err != nil {
			continue
		}
		certs, err = cl.Certificates(ctx)
		err = cl.explain(err)
		cl.Close()
		if err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("cluster %s: certificates: %w", t.clusterID, err)
	}
	cert, err := checkClusterCertificate(certs.Cluster, t.tls.CustomerCA, t.clusterID)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", t.clusterID, err)
	}
	return cert, nil
}

// checkClusterCertificate parses der, the certificate of cluster id, and
// checks it against the cluster's customer CA.
func checkClusterCertificate(der []byte, ca *x509.Certificate, id string) (*x509.Certificate, error) {
	cert, err := x509.ParseCertificate(der)
	if err == nil {
		err = cluster.CheckCertificate(cert, ca)
	}
	if err == nil && cert.Subject.CommonName != id {
		err = fmt.Errorf("it names cluster %q", cert.Subject.CommonName)
	}
	if err != nil {
		return nil, fmt.Errorf("cluster certificate: %w", err)
	}
	return cert, nil
}

// destinationRoom is how many more keys the HSMs of t can hold: the
// capacity less the keys of the fullest member that answers.
func destinationRoom(ctx context.Context, t *target) (int, error) {
	room := -1
	for _, addr := range t.members {
		cl, err := t.dial(addr)
		if err != nil {
			continue
		}
		h, err := cl.Health(ctx)
		cl.Close()
		if err != nil || h.Capacity == 0 {
			continue // down, or a daemon that does not say
		}
		if r := h.Capacity - h.KeyCount; room < 0 || r < room {
			room = r
		}
	}
	if room < 0 {
		return 1 << 30, nil // unknown: the HSMs refuse what does not fit
	}
	return room, nil
}

// writeMigrationReport prints rep (a table, or --json) and writes it to
// --report, if set.
func writeMigrationReport(c *cli.Context, e *env, from, to string, rep *migrate.Report) error {
	out := struct {
		From string `json:"from"`
		To   string `json:"to"`
		*migrate.Report
	}{from, to, rep}
	if p := c.String("report"); p != "" {
		b, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			return err
		}
		if err := atomicfile.WriteNew(p, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("report: %w", err)
		}
	}
	if e.g.json {
		return writeJSON(e.stdout, out)
	}
	if err := writeKeyTable(e, rep); err != nil {
		return err
	}
	verb := "moved"
	if rep.DryRun {
		verb = "would move (dry run: nothing moved)"
	}
	_, err := fmt.Fprintf(e.stdout, "%s to %s: %d %s, %d skipped (present), %d refused\n", from, to, rep.Moved, verb, rep.Skipped, rep.Refused)
	return err
}

// writeKeyTable prints rep's keys, one a line.
func writeKeyTable(e *env, rep *migrate.Report) error {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "SOURCE\tLABEL\tKCV\tRESULT\tHANDLE\tREASON\n")
	for _, k := range rep.Keys {
		h := "-"
		if k.Handle != 0 {
			h = fmt.Sprint(k.Handle)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", k.Source, orDash(k.Label), orDash(k.KCV), k.Result, h, orDash(k.Reason))
	}
	return tw.Flush()
}
