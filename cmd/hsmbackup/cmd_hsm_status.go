package main

import (
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/urfave/cli/v2"
)

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
