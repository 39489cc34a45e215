package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// The demo's backup steps: take the backup, list it and verify it.

// takeBackup backs the cluster up from member A, over a crypto officer's
// session on that member.
func (d *demo) takeBackup(ctx context.Context) error {
	src, err := d.memberClient(d.a)
	if err != nil {
		return err
	}
	defer src.Close()
	if _, err := src.Login(ctx, demoOfficer, d.officerPassword); err != nil {
		return fmt.Errorf("log in on HSM A: %w", err)
	}
	defer src.Logout(context.WithoutCancel(ctx))
	m, err := backup.Create(ctx, src, backup.Repo{Store: d.st, Prefix: d.prefix}, backup.CreateOptions{
		ClusterID:          demoClusterID,
		Recipients:         []wrap.Recipient{d.keyring},
		SigningKey:         d.signingKey,
		Tags:               map[string]string{"made-by": "hsmbackup-demo"},
		ClusterCertificate: d.clusterCert,
		CustomerCA:         d.ca.Cert.Raw,
	})
	if err != nil {
		return err
	}
	d.manifest = m
	d.out.printf("  backup         %s of %s, taken from HSM A (serial %s)\n", m.ID, m.ClusterID, m.Source.Serial)
	d.out.printf("  inner image    %d bytes, encrypted by the HSM under its PBK, image id %s\n", m.ImageSize, m.ImageID)
	d.out.printf("  outer envelope wrapped again to %s, streamed into the store\n", strings.Join(m.Recipients, ", "))
	d.out.printf("  stored         %s: %d bytes, sha256 %s\n", backup.ImageObject, m.ObjectSize, short(m.ObjectSHA256))
	d.out.printf("  manifest       %s, signed with the Ed25519 key, written last and create-only\n", backup.ManifestObject)
	d.out.printf("                 both under %s\n", strings.TrimSuffix(backup.Repo{Prefix: d.prefix}.ObjectKey(m.ClusterID, m.ID, ""), "/"))
	return nil
}

// listAndVerify lists the run's backups and verifies the new one in full.
func (d *demo) listAndVerify(ctx context.Context) error {
	ms, err := backup.List(ctx, backup.Repo{Store: d.st, Prefix: d.prefix}, backup.Filter{})
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "    BACKUP\tCLUSTER\tSOURCE\tSTATE\tOBJECT BYTES\tCREATED")
	for _, m := range ms {
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%d\t%s\n", m.ID, m.ClusterID, m.Source.Serial, m.State, m.ObjectSize, m.Created.Format(time.RFC3339))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	d.out.printf("  listed %d backup(s):\n%s", len(ms), buf.String())
	if len(ms) != 1 || ms[0].ID != d.manifest.ID {
		return fmt.Errorf("listed %d backups, want just %s", len(ms), d.manifest.ID)
	}
	err = backup.Verify(ctx, backup.Repo{Store: d.st, Prefix: d.prefix}, d.manifest.ClusterID, d.manifest.ID, d.verifyOptions())
	if err != nil {
		return err
	}
	d.out.printf("  verified       manifest signature, object SHA-256, outer envelope, inner image header: ok\n")
	return nil
}

// verifyOptions verify backups in full, as restore does.
func (d *demo) verifyOptions() backup.VerifyOptions {
	return backup.VerifyOptions{PublicKey: d.verifyKey, Identities: []wrap.Identity{d.keyring}, Deep: true}
}
