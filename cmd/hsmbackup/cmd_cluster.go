package main

import (
	"cmp"
	"context"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore"
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
		UsageText: "hsmbackup cluster init --addr ADDR --claim FILE --manufacturer-root FILE --operator-root FILE --cluster-id ID --csr-out FILE\n" + "hsmbackup cluster init --addr ADDR --claim FILE --manufacturer-root FILE --cert FILE --customer-ca FILE",
		Description: "Both steps prove, with the claim file 'hsm manufacture' wrote (--claim),\n" +
			"that you hold the new HSM's claim secret: nobody else can set it up.\n" +
			"Step 1 (--csr-out): connects to the HSM trusting only the manufacturer\n" +
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
			configFlag(),
			addrFlag(),
			manufacturerRootFlag(),
			operatorRootFlag(),
			&cli.StringFlag{Name: "cluster-id", Usage: "step 1: `ID` of the new cluster (the cluster certificate's common name); step 2: if set, must match"},
			&cli.StringFlag{Name: "csr-out", Usage: "step 1: `FILE` to write the cluster CSR to (PEM)"},
			&cli.StringFlag{Name: "cert", Usage: "step 2: PEM `FILE` of the cluster certificate your CA signed"},
			&cli.StringFlag{Name: "customer-ca", Usage: "step 2: PEM `FILE` of your CA certificate"},
			claimFlag(),
		}, expectFlags()...),
		OnUsageError: usageError,
		Action:       envAction("cluster init", clusterInit),
	}
}

// initOptions are the flags of cluster init: step 1 (csrOut) or step 2
// (cert and customerCA).
type initOptions struct {
	clusterID, csrOut, cert, customerCA string
}

func clusterInit(c *cli.Context, e *env) error {
	opts := initOptions{clusterID: c.String("cluster-id"), csrOut: c.String("csr-out"), cert: c.String("cert"), customerCA: c.String("customer-ca")}
	step1 := opts.csrOut != ""
	step2 := opts.cert != "" || opts.customerCA != ""
	switch {
	case step1 && step2:
		return errors.New("give either --csr-out (step 1) or --cert and --customer-ca (step 2), not both")
	case !step1 && !step2:
		return fmt.Errorf("give --csr-out (step 1) or --cert and --customer-ca (step 2) (run '%s --help')", c.Command.HelpName)
	case step2:
		if err := requireFlags(c, "cert", "customer-ca"); err != nil {
			return err
		}
	}
	opRoot := cmp.Or(c.String("operator-root"), e.cfg.OperatorRoot)
	if step1 && opRoot == "" {
		return fmt.Errorf("--operator-root is required (run '%s --help')", c.Command.HelpName)
	}
	t, err := e.target(c, trustDevice, needs{clusterID: step1})
	if err != nil {
		return err
	}
	cl, err := t.dialOne()
	if err != nil {
		return err
	}
	defer cl.Close()
	opts.clusterID = t.clusterID
	if step1 {
		opRoots, err := loadRoots(opRoot)
		if err != nil {
			return fmt.Errorf("operator root: %w", err)
		}
		return runInitCSR(c.Context, e, cl, opts, challengeOptions(c, t.tls.ManufacturerRoots, opRoots))
	}
	var challenge *hsmcore.ChallengeOptions
	if opRoot != "" {
		opRoots, err := loadRoots(opRoot)
		if err != nil {
			return fmt.Errorf("operator root: %w", err)
		}
		ch := challengeOptions(c, t.tls.ManufacturerRoots, opRoots)
		challenge = &ch
	}
	return runInitInstall(c.Context, e, cl, opts, challenge)
}

// runInitCSR is step 1: attest, then write the cluster CSR.
func runInitCSR(ctx context.Context, e *env, cl *conn, opts initOptions, challenge hsmcore.ChallengeOptions) error {
	der, st, err := cluster.RequestCSR(ctx, explained{cl}, opts.clusterID, challenge)
	if err != nil {
		return err
	}
	p := &printer{w: e.stdout}
	p.printf("attestation verified: %s\n", describeStatement(st))
	if err := atomicfile.WriteFile(opts.csrOut, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("write csr: %w", err)
	}
	p.printf("cluster CSR for %s from HSM %s written to %s\n", opts.clusterID, st.Serial, opts.csrOut)
	p.printf("next: sign it with your CA, then run step 2 with --cert and --customer-ca\n")
	return p.err
}

// runInitInstall is step 2: install the signed cluster certificate and
// the customer CA, after a fresh attestation if challenge is set.
func runInitInstall(ctx context.Context, e *env, cl *conn, opts initOptions, challenge *hsmcore.ChallengeOptions) error {
	cert, err := loadCertificate(opts.cert)
	if err != nil {
		return fmt.Errorf("cluster certificate: %w", err)
	}
	ca, err := loadCertificate(opts.customerCA)
	if err != nil {
		return fmt.Errorf("customer CA: %w", err)
	}
	if err := cluster.CheckCertificate(cert, ca); err != nil {
		return err
	}
	if opts.clusterID != "" && cert.Subject.CommonName != opts.clusterID {
		return fmt.Errorf("cluster certificate names %q, not cluster %q", cert.Subject.CommonName, opts.clusterID)
	}
	p := &printer{w: e.stdout}
	if challenge != nil {
		st, err := attestHSM(ctx, cl, *challenge)
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
		Flags:        append(connectionFlags(), loginFlags("first crypto officer")...),
		OnUsageError: usageError,
		Action:       envAction("cluster activate", clusterActivate),
	}
}

func clusterActivate(c *cli.Context, e *env) error {
	t, err := e.target(c, trustMember, needs{user: true, cert: true, clusterID: true})
	if err != nil {
		return err
	}
	return runActivate(c.Context, e, t)
}

// runActivate sets the first crypto officer's password on the target's
// one HSM and logs in once to confirm it.
func runActivate(ctx context.Context, e *env, t *target) error {
	password, err := t.password()
	if err != nil {
		return err
	}
	cl, err := t.dialOne()
	if err != nil {
		return err
	}
	defer cl.Close()
	h, err := cl.Health(ctx)
	if err != nil {
		return fmt.Errorf("%s: health: %w", cl.addr, cl.explain(err))
	}
	if err := cluster.Activate(ctx, cl, t.user, password); err != nil {
		return cl.explain(err)
	}
	p := &printer{w: e.stdout}
	p.printf("cluster %s activated on HSM %s: crypto officer %s can log in\n", h.ClusterID, h.Serial, t.user)
	return p.err
}
