package main

import (
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
)

func clusterCommand() *cli.Command {
	return &cli.Command{
		Name:  "cluster",
		Usage: "initialize, activate and grow a cluster of HSMs; its customer CA",
		Subcommands: []*cli.Command{
			clusterInitCommand(), clusterActivateCommand(), clusterAddMemberCommand(),
			clusterCACommand(), clusterClientCertCommand(), clusterSignCSRCommand(),
		},
		OnUsageError: usageError,
		Action:       groupAction,
	}
}

func clusterInitCommand() *cli.Command {
	return &cli.Command{
		Name:      "init",
		Usage:     "initialize a cluster on a new HSM, in two steps as in CloudHSM",
		UsageText: "hsmbackup cluster init --addr ADDR --manufacturer-root FILE --operator-root FILE --cluster-id ID --csr-out FILE\n" + "hsmbackup cluster init --addr ADDR --manufacturer-root FILE --cert FILE --customer-ca FILE",
		Description: "Step 1 (--csr-out): connects to the HSM trusting only the manufacturer\n" +
			"root, has it attest to a fresh nonce and verifies the attestation (both\n" +
			"certificate chains, signature, nonce, freshness and the --expect-* flags),\n" +
			"then has it make the cluster key and writes its certificate signing\n" +
			"request (PEM) to --csr-out. Sign the CSR with your own CA, e.g.\n" +
			"  openssl x509 -req -in cluster.csr -CA ca.crt -CAkey ca.key -days 365 -out cluster.crt\n" +
			"or 'hsmbackup cluster sign-csr' with a CA 'hsmbackup cluster ca' made.\n" +
			"Step 2 (--cert and --customer-ca): installs the signed cluster certificate\n" +
			"and your CA. From then on the HSM presents the cluster certificate and\n" +
			"accepts only clients with certificates from that CA. With --operator-root,\n" +
			"step 2 verifies a fresh attestation first as well. Then run\n" +
			"'hsmbackup cluster activate'.",
		Flags: append([]cli.Flag{
			addrFlag(),
			manufacturerRootFlag(),
			operatorRootFlag(),
			&cli.StringFlag{Name: "cluster-id", Usage: "step 1: `ID` of the new cluster (the cluster certificate's common name); step 2: if set, must match"},
			&cli.StringFlag{Name: "csr-out", Usage: "step 1: `FILE` to write the cluster CSR to (PEM)"},
			&cli.StringFlag{Name: "cert", Usage: "step 2: PEM `FILE` of the cluster certificate your CA signed"},
			&cli.StringFlag{Name: "customer-ca", Usage: "step 2: PEM `FILE` of your CA certificate"},
		}, expectFlags()...),
		OnUsageError: usageError,
		Action:       action("cluster init", clusterInit),
	}
}

func clusterInit(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	step1 := c.String("csr-out") != ""
	step2 := c.String("cert") != "" || c.String("customer-ca") != ""
	switch {
	case step1 && step2:
		return errors.New("give either --csr-out (step 1) or --cert and --customer-ca (step 2), not both")
	case step1:
		return clusterInitCSR(c)
	case step2:
		return clusterInitInstall(c)
	}
	return fmt.Errorf("give --csr-out (step 1) or --cert and --customer-ca (step 2) (run '%s --help')", c.Command.HelpName)
}

// clusterInitCSR is step 1: attest, then write the cluster CSR.
func clusterInitCSR(c *cli.Context) error {
	if err := requireFlags(c, "addr", "manufacturer-root", "operator-root", "cluster-id", "csr-out"); err != nil {
		return err
	}
	opRoots, err := loadRoots(c.String("operator-root"))
	if err != nil {
		return fmt.Errorf("operator root: %w", err)
	}
	cl, mfrRoots, err := connectDevice(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx := c.Context
	id := c.String("cluster-id")
	der, st, err := cluster.RequestCSR(ctx, explained{cl}, id, challengeOptions(c, mfrRoots, opRoots))
	if err != nil {
		return err
	}
	p := &printer{w: c.App.Writer}
	p.printf("attestation verified: %s\n", describeStatement(st))
	out := c.String("csr-out")
	if err := atomicfile.WriteFile(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("write csr: %w", err)
	}
	p.printf("cluster CSR for %s from HSM %s written to %s\n", id, st.Serial, out)
	p.printf("next: sign it with your CA, then run step 2 with --cert and --customer-ca\n")
	return p.err
}

// clusterInitInstall is step 2: install the signed cluster certificate and
// the customer CA.
func clusterInitInstall(c *cli.Context) error {
	if err := requireFlags(c, "addr", "manufacturer-root", "cert", "customer-ca"); err != nil {
		return err
	}
	cert, err := loadCertificate(c.String("cert"))
	if err != nil {
		return fmt.Errorf("cluster certificate: %w", err)
	}
	ca, err := loadCertificate(c.String("customer-ca"))
	if err != nil {
		return fmt.Errorf("customer CA: %w", err)
	}
	if err := cluster.CheckCertificate(cert, ca); err != nil {
		return err
	}
	if id := c.String("cluster-id"); id != "" && cert.Subject.CommonName != id {
		return fmt.Errorf("cluster certificate names %q, not cluster %q", cert.Subject.CommonName, id)
	}
	cl, mfrRoots, err := connectDevice(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx := c.Context
	p := &printer{w: c.App.Writer}
	if c.String("operator-root") != "" {
		opRoots, err := loadRoots(c.String("operator-root"))
		if err != nil {
			return fmt.Errorf("operator root: %w", err)
		}
		st, err := attestHSM(ctx, c, cl, mfrRoots, opRoots)
		if err != nil {
			return err
		}
		p.printf("attestation verified: %s\n", describeStatement(st))
	}
	h, err := cluster.Install(ctx, explained{cl}, cert, ca)
	if err != nil {
		return err
	}
	p.printf("cluster %s initialized on HSM %s\n", h.ClusterID, h.Serial)
	p.printf("the HSM now presents the cluster certificate and requires client certificates from %s\n", ca.Subject.CommonName)
	p.printf("next: 'hsmbackup cluster activate' sets the first crypto officer's password\n")
	return p.err
}

func clusterActivateCommand() *cli.Command {
	return &cli.Command{
		Name:  "activate",
		Usage: "create the first crypto officer of an initialized cluster",
		Description: "Connects as a member of the cluster (the client certificate must be from\n" +
			"the customer CA) and sets the first crypto officer's password, as\n" +
			"activating a CloudHSM cluster does, then logs in once to confirm it.\n" +
			"The password comes from --password-file or $" + passwordEnv + ".",
		Flags:        append(memberFlags(), userFlag(), passwordFileFlag()),
		OnUsageError: usageError,
		Action:       action("cluster activate", clusterActivate),
	}
}

func clusterActivate(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if err := requireFlags(c, "addr", "customer-ca", "cert", "key", "cluster-id", "user"); err != nil {
		return err
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
	h, err := cl.Health(ctx)
	if err != nil {
		return fmt.Errorf("health: %w", cl.explain(err))
	}
	user := c.String("user")
	if err := cluster.Activate(ctx, cl, user, password); err != nil {
		return cl.explain(err)
	}
	p := &printer{w: c.App.Writer}
	p.printf("cluster %s activated on HSM %s: crypto officer %s can log in\n", h.ClusterID, h.Serial, user)
	return p.err
}
