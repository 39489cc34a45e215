package main

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/urfave/cli/v2"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show an HSM's identity, cluster and state digest",
		Description: "Asks the daemon for its health; no login is needed. A member of an\n" +
			"initialized cluster needs --customer-ca, --cert and --key (or --config\n" +
			"with the cluster's entry); an HSM whose cluster is not initialized yet is\n" +
			"trusted through --manufacturer-root (or the config's manufacturer_root).\n" +
			"Members in sync show the same state digest.",
		Flags:        append(connectionFlags(), manufacturerRootFlag(), jsonFlag()),
		OnUsageError: usageError,
		Action:       envAction("hsm status", status),
	}
}

func status(c *cli.Context, e *env) error {
	t, err := e.target(c, trustEither, needs{})
	if err != nil {
		return err
	}
	return runStatus(c.Context, e, t)
}

// runStatus prints the health of the target's one HSM.
func runStatus(ctx context.Context, e *env, t *target) error {
	cl, err := t.dialOne()
	if err != nil {
		return err
	}
	defer cl.Close()
	h, err := cl.Health(ctx)
	if err != nil {
		return fmt.Errorf("%s: health: %w", cl.addr, cl.explain(err))
	}
	fp := ""
	if len(h.PBKFingerprint) >= 8 {
		fp = hex.EncodeToString(h.PBKFingerprint[:8])
	}
	if e.g.json {
		return writeJSON(e.stdout, struct {
			hsmcore.Identity
			ClusterID          string            `json:"cluster_id"`
			ClusterInitialized bool              `json:"cluster_initialized"`
			Initialized        bool              `json:"initialized"`
			StateDigest        string            `json:"state_digest"`
			PBKFingerprint     string            `json:"pbk_fingerprint"`
			KeyCount           int               `json:"key_count"`
			UserCount          int               `json:"user_count"`
			StateVersion       map[string]uint64 `json:"state_version,omitempty"`
		}{h.Identity, h.ClusterID, h.ClusterInitialized, h.Initialized, h.StateDigest, fp, h.KeyCount, h.UserCount, h.StateVersion})
	}
	p := &printer{w: e.stdout}
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
	p.printf("%-20s %s\n", "state version", cluster.Version(h.StateVersion))
	p.printf("%-20s %d keys, %d users\n", "holds", h.KeyCount, h.UserCount)
	return p.err
}

func auditVerifyCommand() *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "verify an HSM's audit log: hash chain and signed head, from an attested HSM",
		Description: "Logs in as a crypto officer, fetches the audit log and its head signed\n" +
			"by the device key, then has the HSM attest to a fresh nonce and verifies\n" +
			"the attestation against the manufacturer and operator roots. The log,\n" +
			"whole from its first entry across every segment the HSM rotated it into,\n" +
			"must be an intact hash chain ending at the head the attested device\n" +
			"signed. The password comes from --password-file or $" + passwordEnv + ".",
		Flags: append(append(append(connectionFlags(), loginFlags("crypto officer")...), manufacturerRootFlag(), operatorRootFlag()),
			expectFlags()...),
		OnUsageError: usageError,
		Action:       envAction("hsm audit verify", auditVerify),
	}
}

func auditVerify(c *cli.Context, e *env) error {
	t, err := e.target(c, trustMember, needs{user: true})
	if err != nil {
		return err
	}
	mfr, op, err := e.roots()
	if err != nil {
		return err
	}
	return runAuditVerify(c.Context, e, t, challengeOptions(c, mfr, op))
}

// runAuditVerify fetches the target HSM's audit log as a crypto officer,
// has the HSM attest, and checks the log against the attested device key.
func runAuditVerify(ctx context.Context, e *env, t *target, challenge hsmcore.ChallengeOptions) error {
	cl, err := t.dialOne()
	if err != nil {
		return err
	}
	defer cl.Close()
	if _, err := t.login(ctx, cl); err != nil {
		return err
	}
	defer cl.Logout(ctx) //nolint:errcheck // the session also ends with the connection
	entries := 0
	head, err := cl.AuditLog(ctx, func(page []audit.Entry) error { entries += len(page); return nil })
	if err != nil {
		return fmt.Errorf("%s: fetch audit log: %w", cl.addr, cl.explain(err))
	}
	st, err := attestHSM(ctx, cl, challenge)
	if err != nil {
		return err
	}
	if t.clusterID != "" && st.ClusterID != t.clusterID {
		return fmt.Errorf("HSM %s is in cluster %q, not %q: %w", st.Serial, st.ClusterID, t.clusterID, hsmcore.ErrAttestation)
	}
	if err := hsmcore.VerifyAuditHead(head, st.Certificate); err != nil {
		return fmt.Errorf("audit log of %s: %w", st.Serial, err)
	}
	p := &printer{w: e.stdout}
	p.printf("attestation verified: %s\n", describeStatement(st))
	// The head, for the officer's records: a log found shorter or other
	// later was cut or replaced (an HSM cannot tell; docs/THREATS.md).
	p.printf("audit log of %s: %d entries, chain intact, head signed: entry %d, hash %s\n", st.Serial, entries, head.Head.Seq, head.Head.Hash)
	return p.err
}
