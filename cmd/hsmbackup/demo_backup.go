package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/store/storeurl"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// The demo's backup steps: take the backup, list it and verify it, copy
// it to a disaster-recovery site under another kind of master key.

// takeBackup backs the cluster up from member A, over a crypto officer's
// session on that member.
func (d *demo) takeBackup(ctx context.Context) error {
	src, err := d.login(ctx, d.a, demoOfficer, d.officerPassword)
	if err != nil {
		return err
	}
	defer src.Close()
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

// copyToDRSite makes an HPKE key pair in the workspace, as 'masterkey
// generate-hpke' does, copies the backup into a second file store, the
// disaster-recovery site, re-wrapped to the public key file only, as
// 'backup copy --to-hpke' does, and verifies the copy in full with the
// private key alone. The service keyring does not open the copy.
func (d *demo) copyToDRSite(ctx context.Context) error {
	keyPath, pubPath := filepath.Join(d.ws, "dr-site.key"), filepath.Join(d.ws, "dr-site.pub")
	if _, err := wrap.GenerateHPKEKey(keyPath, pubPath); err != nil {
		return err
	}
	pub, err := wrap.LoadHPKERecipient(pubPath)
	if err != nil {
		return err
	}
	d.out.printf("  HPKE key pair  ML-KEM-768 + X25519: %s wraps, only %s opens (mode 0600, never shown)\n",
		filepath.Base(pubPath), filepath.Base(keyPath))

	st, err := storeurl.Open("file://"+filepath.Join(d.ws, "dr-site"), storeurl.Options{Create: true})
	if err != nil {
		return err
	}
	dr := backup.Repo{Store: st, Prefix: d.prefix}
	m, err := backup.Copy(ctx, backup.Repo{Store: d.st, Prefix: d.prefix}, d.manifest.ClusterID, d.manifest.ID, dr, backup.CopyOptions{
		PublicKey:  d.verifyKey,
		Identities: []wrap.Identity{d.keyring},
		Recipients: []wrap.Recipient{pub},
		SigningKey: d.signingKey,
	})
	if err != nil {
		return err
	}
	d.out.printf("  copied         to the DR site (a second file store) as %s, the outer layer re-wrapped\n", m.ID)
	d.out.printf("                 to %s only; the inner image is copied byte for byte\n", strings.Join(m.Recipients, ", "))

	id, err := wrap.LoadHPKEIdentity(keyPath)
	if err != nil {
		return err
	}
	if err := backup.Verify(ctx, dr, m.ClusterID, m.ID, backup.VerifyOptions{PublicKey: d.verifyKey, Identities: []wrap.Identity{id}, Deep: true}); err != nil {
		return fmt.Errorf("verify the copy: %w", err)
	}
	d.out.printf("  verified       the copy in full with the HPKE private key alone: ok\n")
	err = backup.Verify(ctx, dr, m.ClusterID, m.ID, d.verifyOptions())
	if !errors.Is(err, wrap.ErrUnknownKey) {
		return fmt.Errorf("verify the copy with the service keyring: got %v, want %w", err, wrap.ErrUnknownKey)
	}
	d.out.printf("  keyring        does not open the copy: %v\n", err)
	return nil
}
