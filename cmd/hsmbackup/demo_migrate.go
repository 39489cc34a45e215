package main

import (
	"context"
	"crypto/x509"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/migrate"
)

// demoClusterDR is the cluster the demo migrates keys into.
const demoClusterDR = "cluster-demo-dr"

// migrateKeys moves the crypto user's extractable keys from the demo's
// cluster into a new cluster on HSM M, as `hsmbackup keys migrate` does:
// an attested transport key of E's, a signed bundle from the source HSM,
// unwrapped inside E. The non-extractable key is refused and stays.
func (d *demo) migrateKeys(ctx context.Context) error {
	e, err := d.serveHSM("M", d.op)
	if err != nil {
		return err
	}
	cfg := d.memberTarget("", "").tls
	cfg.Addr, cfg.ClusterID = e.addr, demoClusterDR
	officer := newPassword()
	_, clusterCert, err := cluster.Bootstrap(ctx, cluster.BootstrapConfig{
		Client: cfg,
		Challenge: hsmcore.ChallengeOptions{ManufacturerRoots: d.mfrRoots, OperatorRoots: d.opRoots,
			Expect: hsmcore.Expectation{Class: demoClass, Manufacturer: demoManufacturer, Operator: demoOperator, MinFirmware: demoFirmware}},
		Sign: d.ca.SignCSR, Officer: demoOfficer, Password: officer,
	})
	if err != nil {
		return fmt.Errorf("cluster %s on HSM M: %w", demoClusterDR, err)
	}
	dr := func(user, password string) *target {
		t := d.memberTarget(user, password, e)
		t.clusterID, t.tls.ClusterID = demoClusterDR, demoClusterDR
		return t
	}
	co, err := dr(demoOfficer, officer).open(ctx, nil, nil, nil)
	if err != nil {
		return err
	}
	err = co.CreateUser(ctx, demoUser, hsmcore.CryptoUser, d.userPassword)
	co.Close()
	if err != nil {
		return fmt.Errorf("create %s on %s: %w", demoUser, demoClusterDR, err)
	}
	d.out.printf("  HSM M          cluster %s initialized on it; crypto user %q created there\n", demoClusterDR, demoUser)

	src, err := d.memberTarget(demoUser, d.userPassword, d.a, d.b).open(ctx, nil, nil, nil)
	if err != nil {
		return err
	}
	defer src.Close()
	keys, err := src.GenerateKeys(ctx, []hsmcore.KeySpec{
		{Type: hsmcore.AES, Bits: 256, Label: "payments-dr", Encrypt: true, Decrypt: true, Extractable: true},
		{Type: hsmcore.EC, Curve: "P-256", Label: "receipts-dr", Sign: true, Verify: true, Extractable: true},
	})
	if err != nil {
		return fmt.Errorf("generate keys: %w", err)
	}
	ct, err := src.Encrypt(ctx, keys[0].Handle, demoMessage, nil)
	if err != nil {
		return err
	}
	d.out.printf("  generated      2 extractable keys to move (%s, %s); %s stays: not extractable\n", keys[0].Label, keys[1].Label, d.aesKey.Label)

	dst, err := dr(demoUser, d.userPassword).open(ctx, nil, nil, nil)
	if err != nil {
		return err
	}
	defer dst.Close()
	dstHash, err := hsmcore.PublicKeyHash(clusterCert.PublicKey)
	if err != nil {
		return err
	}
	opts := migrate.Options{User: demoUser, ManufacturerRoots: d.mfrRoots, OperatorRoots: []*x509.Certificate{d.op.Certificate()},
		SourceCluster: demoClusterID, Cluster: demoClusterDR, ClusterKeyHash: dstHash,
		Select: func(k hsmcore.KeyInfo) bool {
			return k.Label == keys[0].Label || k.Label == keys[1].Label || k.Label == d.aesKey.Label
		}}
	rep, err := migrate.Run(ctx, src, dst, opts)
	if err != nil {
		return fmt.Errorf("keys migrate: %w", err)
	}
	d.out.printf("  transport key  ML-KEM-768 + X25519, made inside HSM M, single use; its attestation checked here\n")
	d.out.printf("                 and again inside the source HSM before it wrapped anything\n")
	for _, k := range rep.Keys {
		switch k.Result {
		case hsmcore.Moved:
			d.out.printf("  moved          %-16s kcv %s -> key %d on HSM M, unwrapped inside it\n", k.Label, k.KCV, k.Handle)
		default:
			d.out.printf("  %-14s %-16s kcv %s: %s\n", k.Result, k.Label, k.KCV, k.Reason)
		}
	}
	if rep.Moved != 2 || rep.Refused != 1 {
		return fmt.Errorf("keys migrate: %d moved, %d refused, want 2 and 1", rep.Moved, rep.Refused)
	}
	var moved uint64
	for _, k := range rep.Keys {
		if k.Label == keys[0].Label {
			moved = k.Handle
		}
	}
	pt, err := dst.Decrypt(ctx, moved, ct, nil)
	if err != nil || string(pt) != string(demoMessage) {
		return fmt.Errorf("the moved key does not decrypt the source's ciphertext: %v", err)
	}
	d.out.printf("  used           on HSM M, %s decrypts what the source encrypted: %q\n", keys[0].Label, pt)
	again, err := migrate.Run(ctx, src, dst, opts)
	if err != nil {
		return fmt.Errorf("keys migrate again: %w", err)
	}
	d.out.printf("  run again      %d moved, %d skipped (present), %d refused: nothing is ever moved twice\n", again.Moved, again.Skipped, again.Refused)
	return nil
}
