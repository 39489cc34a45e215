package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/internal/pki"
)

// The customer CA's commands: what a customer would do with their own CA
// (or OpenSSL), built in.

func clusterCACommand() *cli.Command {
	return &cli.Command{
		Name:  "ca",
		Usage: "create a customer CA, which signs cluster CSRs and issues client certificates",
		Description: "Creates a self-signed CA (ECDSA P-384, valid ten years) in --out:\n" +
			"ca.crt, its certificate, and ca.key, its private key (mode 0600). Give\n" +
			"ca.crt to 'cluster init' as --customer-ca; keep ca.key offline.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "`DIR` to create the CA in (made if missing; ca.crt and ca.key must not exist)"},
			&cli.StringFlag{Name: "name", Value: "customer root CA", Usage: "common `NAME` of the CA"},
		},
		OnUsageError: usageError,
		Action:       action("cluster ca", clusterCA),
	}
}

func clusterCA(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if err := requireFlags(c, "out", "name"); err != nil {
		return err
	}
	ca, err := pki.NewCA(c.String("name"))
	if err != nil {
		return err
	}
	dir := c.String("out")
	if err := ca.Save(dir); err != nil {
		return err
	}
	p := &printer{w: c.App.Writer}
	p.printf("customer CA %q (ECDSA %s) created: certificate %s, key %s (mode 0600)\n", ca.Cert.Subject.CommonName,
		ca.Key.Curve.Params().Name, filepath.Join(dir, pki.CACertFile), filepath.Join(dir, pki.CAKeyFile))
	return p.err
}

func clusterClientCertCommand() *cli.Command {
	return &cli.Command{
		Name:  "client-cert",
		Usage: "issue a client certificate from a customer CA",
		Description: "Issues a client certificate for --name (ECDSA P-384, valid a year) from\n" +
			"the CA in --ca and writes it to PREFIX.crt and its key to PREFIX.key\n" +
			"(mode 0600): the --cert and --key of the commands that reach a cluster.",
		Flags: []cli.Flag{
			caDirFlag(),
			&cli.StringFlag{Name: "name", Usage: "common `NAME` of the client"},
			&cli.StringFlag{Name: "out", Usage: "`PREFIX` of the files to write (PREFIX.crt, PREFIX.key; must not exist)"},
		},
		OnUsageError: usageError,
		Action:       action("cluster client-cert", clusterClientCert),
	}
}

func caDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "ca", Usage: "`DIR` of the customer CA ('cluster ca' made it: ca.crt, ca.key)"}
}

func clusterClientCert(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if err := requireFlags(c, "ca", "name", "out"); err != nil {
		return err
	}
	ca, err := pki.Load(c.String("ca"))
	if err != nil {
		return err
	}
	cert, err := ca.Client(c.String("name"))
	if err != nil {
		return err
	}
	prefix := c.String("out")
	if err := pki.SaveClient(prefix, cert); err != nil {
		return err
	}
	p := &printer{w: c.App.Writer}
	p.printf("client certificate %q from %q, valid until %s: %s.crt, key %s.key (mode 0600)\n", cert.Leaf.Subject.CommonName,
		ca.Cert.Subject.CommonName, cert.Leaf.NotAfter.UTC().Format(time.RFC3339), prefix, prefix)
	return p.err
}

func clusterSignCSRCommand() *cli.Command {
	return &cli.Command{
		Name:  "sign-csr",
		Usage: "sign a cluster CSR with a customer CA",
		Description: "Signs the cluster CSR that 'cluster init --csr-out' wrote with the CA in\n" +
			"--ca and writes the cluster certificate (PEM, valid a year) to --out, for\n" +
			"step 2 of 'cluster init'. With --cluster-id, a CSR naming another cluster\n" +
			"is refused. The same as\n" +
			"  openssl x509 -req -in cluster.csr -CA ca.crt -CAkey ca.key -days 365 -out cluster.crt",
		Flags: []cli.Flag{
			caDirFlag(),
			&cli.StringFlag{Name: "csr", Usage: "PEM `FILE` of the cluster CSR"},
			&cli.StringFlag{Name: "out", Usage: "`FILE` to write the cluster certificate to (must not exist)"},
			&cli.StringFlag{Name: "cluster-id", Usage: "`ID` the CSR must name"},
		},
		OnUsageError: usageError,
		Action:       action("cluster sign-csr", clusterSignCSR),
	}
}

func clusterSignCSR(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if err := requireFlags(c, "ca", "csr", "out"); err != nil {
		return err
	}
	der, err := pki.ReadCSR(c.String("csr"))
	if err != nil {
		return err
	}
	csr, err := pki.ParseCSR(der)
	if err != nil {
		return fmt.Errorf("%s: %w", c.String("csr"), err)
	}
	if id := c.String("cluster-id"); id != "" {
		if _, err := cluster.ParseCSR(der, id); err != nil {
			return err
		}
	}
	ca, err := pki.Load(c.String("ca"))
	if err != nil {
		return err
	}
	cert, err := ca.SignCSR(der)
	if err != nil {
		return err
	}
	out := c.String("out")
	if err := pki.WriteCertificate(out, cert); err != nil {
		return fmt.Errorf("write cluster certificate: %w", err)
	}
	p := &printer{w: c.App.Writer}
	p.printf("cluster certificate for %s signed by %q written to %s\n", csr.Subject.CommonName, ca.Cert.Subject.CommonName, out)
	p.printf("next: install it with 'hsmbackup cluster init --cert %s --customer-ca %s'\n", out, filepath.Join(c.String("ca"), pki.CACertFile))
	return p.err
}
