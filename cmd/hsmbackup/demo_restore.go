package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/restore"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// The demo's restore steps: a restore into matching hardware, and the
// refusals of a mismatched HSM and of a tampered image.

// restoreOptions are the options of every restore in the demo.
func (d *demo) restoreOptions() restore.Options {
	return restore.Options{
		PublicKey:         d.verifyKey,
		Identities:        []wrap.Identity{d.keyring},
		ManufacturerRoots: d.mfrRoots,
		OperatorRoots:     d.opRoots,
	}
}

// restoreInto restores the demo's backup into the HSM behind target.
func (d *demo) restoreInto(ctx context.Context, target *conn) (*restore.Result, error) {
	return restore.Restore(ctx, backup.Repo{Store: d.st, Prefix: d.prefix}, d.manifest.ClusterID, d.manifest.ID, target, d.restoreOptions())
}

// freshTarget serves a new HSM for operator op and returns it with a
// client that trusts it as a device: a restore target.
func (d *demo) freshTarget(name string, op *device.Authority) (*demoHSM, *conn, error) {
	h, err := d.serveHSM(name, op)
	if err != nil {
		return nil, nil, err
	}
	cl, err := d.deviceTarget().dial(h.addr)
	if err != nil {
		return nil, nil, err
	}
	return h, cl, nil
}

// restoreIntoC restores the backup into a fresh HSM of the same class,
// manufacturer and operator, then logs in there as the crypto user and
// uses the keys made before the backup.
func (d *demo) restoreIntoC(ctx context.Context) error {
	c, target, err := d.freshTarget("C", d.op)
	if err != nil {
		return err
	}
	defer target.Close()
	d.out.printf("  HSM C          serial %s, %s, operator %s, uninitialized, on %s\n", c.id.Serial, c.id.Class, c.id.Operator, c.addr)
	res, err := d.restoreInto(ctx, target)
	if err != nil {
		return err
	}
	d.out.printf("  restored       %s into HSM C (serial %s): backup verified in full,\n", res.BackupID, res.TargetSerial)
	d.out.printf("                 HSM C attested (fresh nonce, class, operator, PBK), image streamed in and committed\n")

	cu, err := d.login(ctx, c, demoUser, d.userPassword)
	if err != nil {
		return err
	}
	defer cu.Close()
	defer cu.Logout(context.WithoutCancel(ctx))
	d.out.printf("  logged in      on HSM C as %q over mutual TLS: it presents the %s certificate now\n", demoUser, demoClusterID)
	pt, err := cu.Decrypt(ctx, d.aesKey.Handle, d.ciphertext, nil)
	if err != nil {
		return fmt.Errorf("decrypt on HSM C: %w", err)
	}
	if !bytes.Equal(pt, demoMessage) {
		return fmt.Errorf("decrypted message differs from the original: %w", hsmcore.ErrTampered)
	}
	d.out.printf("  decrypted      the ciphertext made before the backup, with key %d: %q\n", d.aesKey.Handle, pt)
	for i, k := range d.signers {
		if err := cu.Verify(ctx, k.Handle, demoMessage, d.signatures[i]); err != nil {
			return fmt.Errorf("verify signature by key %d on HSM C: %w", k.Handle, err)
		}
		d.out.printf("  verified       the signature made before the backup with key %d (%s)\n", k.Handle, keyType(k))
	}
	restored, err := cu.Keys(ctx)
	if err != nil {
		return err
	}
	want := append([]hsmcore.KeyInfo{d.aesKey}, d.signers...)
	if err := sameKeys(restored, want); err != nil {
		return err
	}
	d.out.printf("  restored keys work on HSM C: %d keys, same handles and KCVs as in the cluster\n", len(restored))
	return nil
}

// sameKeys checks that got and want list the same keys: handle, type,
// label and KCV.
func sameKeys(got, want []hsmcore.KeyInfo) error {
	if len(got) != len(want) {
		return fmt.Errorf("restored HSM holds %d keys, want %d", len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Handle != w.Handle || g.Type != w.Type || g.Label != w.Label || g.KCV != w.KCV {
			return fmt.Errorf("restored key %d (%s, KCV %s) differs from key %d (%s, KCV %s)", g.Handle, g.Label, g.KCV, w.Handle, w.Label, w.KCV)
		}
	}
	return nil
}

// refuseMismatch shows a genuine HSM of the same class but another
// operator failing the restore's attestation, and left unchanged.
func (d *demo) refuseMismatch(ctx context.Context) error {
	h, target, err := d.freshTarget("D", d.otherOp)
	if err != nil {
		return err
	}
	defer target.Close()
	d.out.printf("  HSM D          serial %s, %s, operator %s, uninitialized, on %s\n", h.id.Serial, h.id.Class, h.id.Operator, h.addr)
	d.out.printf("                 genuine: both chains verify; only the operator differs\n")
	before, err := target.Health(ctx)
	if err != nil {
		return err
	}
	_, err = d.restoreInto(ctx, target)
	if !errors.Is(err, hsmcore.ErrAttestation) {
		return fmt.Errorf("restore into HSM D (%s): got %v, want %w", h.addr, err, hsmcore.ErrAttestation)
	}
	d.out.printf("  refused        %v\n", err)
	return d.unchanged(ctx, "D", target, before)
}

// refuseTampered flips one byte of the stored image object and shows
// verify naming the layer that failed and restore refusing the backup.
func (d *demo) refuseTampered(ctx context.Context) error {
	key := backup.Repo{Prefix: d.prefix}.ObjectKey(d.manifest.ClusterID, d.manifest.ID, backup.ImageObject)
	off, size, err := flipStoredByte(ctx, d.st, key)
	if err != nil {
		return fmt.Errorf("tamper with %s: %w", key, err)
	}
	d.out.printf("  tampered       flipped byte %d of %d of the stored image object, through the store\n", off, size)

	err = backup.Verify(ctx, backup.Repo{Store: d.st, Prefix: d.prefix}, d.manifest.ClusterID, d.manifest.ID, d.verifyOptions())
	if !errors.Is(err, backup.ErrObjectHash) {
		return fmt.Errorf("verify the tampered backup: got %v, want %w", err, backup.ErrObjectHash)
	}
	d.out.printf("  verify failed  at the %s layer: %v\n", verifyLayer(err), err)

	h, target, err := d.freshTarget("E", d.op)
	if err != nil {
		return err
	}
	defer target.Close()
	d.out.printf("  HSM E          serial %s, %s, operator %s, uninitialized, on %s: a fit target\n", h.id.Serial, h.id.Class, h.id.Operator, h.addr)
	before, err := target.Health(ctx)
	if err != nil {
		return err
	}
	_, err = d.restoreInto(ctx, target)
	if !errors.Is(err, backup.ErrObjectHash) {
		return fmt.Errorf("restore of the tampered backup: got %v, want %w", err, backup.ErrObjectHash)
	}
	d.out.printf("  refused        %v\n", err)
	return d.unchanged(ctx, "E", target, before)
}

// verifyLayer names the layer a failed backup.Verify reports.
func verifyLayer(err error) string {
	switch {
	case errors.Is(err, backup.ErrManifest):
		return "manifest"
	case errors.Is(err, backup.ErrObjectHash):
		return "object hash"
	case errors.Is(err, backup.ErrOuterLayer):
		return "outer envelope"
	case errors.Is(err, backup.ErrInnerHeader):
		return "inner image header"
	}
	return "storage"
}

// maxTamperSize bounds the object flipStoredByte reads into memory: the
// demo's image is a few kilobytes.
const maxTamperSize = 64 << 20

// flipStoredByte replaces the object at key with a copy whose middle byte
// is flipped, through the store's API, and returns the byte's offset and
// the object's size.
func flipStoredByte(ctx context.Context, st store.Store, key string) (off, size int64, err error) {
	rc, err := st.Get(ctx, key)
	if err != nil {
		return 0, 0, err
	}
	b, err := io.ReadAll(io.LimitReader(rc, maxTamperSize+1))
	rc.Close()
	if err != nil {
		return 0, 0, err
	}
	if len(b) == 0 || len(b) > maxTamperSize {
		return 0, 0, fmt.Errorf("object of %d bytes", len(b))
	}
	off = int64(len(b) / 2)
	b[off] ^= 0xff
	if err := st.Put(ctx, key, bytes.NewReader(b), store.PutOptions{}); err != nil {
		return 0, 0, err
	}
	return off, int64(len(b)), nil
}
