package restore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// The attack: a backup's manifest and image copied by hand to another
// prefix of the store, and restored from there. The restore is refused
// before the target is touched; a backup copy made with backup.Copy
// restores from its new prefix.
func TestRestoreOfBackupCopiedByHandRefused(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, false)
	target, _ := newTarget(t, f.a, device.ManufactureConfig{})
	before := health(t, target)
	other := backup.Repo{Store: f.st, Prefix: "tenant-b/"}
	for _, obj := range []string{backup.ImageObject, backup.ManifestObject} {
		rc, err := f.st.Get(ctx, f.repo().ObjectKey(testCluster, f.m.ID, obj))
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := f.st.Put(ctx, other.ObjectKey(testCluster, f.m.ID, obj), bytes.NewReader(b), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, dry := range []bool{true, false} {
		opts := f.opts
		opts.DryRun = dry
		if _, err := Restore(ctx, other, testCluster, f.m.ID, target, opts); !errors.Is(err, backup.ErrManifest) {
			t.Fatalf("restore (dry run %t) of a backup copied by hand: got %v, want ErrManifest", dry, err)
		}
	}
	unchanged(t, target, before)

	kr := f.opts.Identities[0].(wrap.Recipient) // the keyring opens and wraps
	cm, err := backup.Copy(ctx, f.repo(), testCluster, f.m.ID, backup.Repo{Store: f.st, Prefix: "tenant-c/"}, backup.CopyOptions{
		PublicKey: f.opts.PublicKey, Identities: f.opts.Identities, Recipients: []wrap.Recipient{kr}, SigningKey: f.priv})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(ctx, backup.Repo{Store: f.st, Prefix: "tenant-c/"}, testCluster, cm.ID, target, f.opts); err != nil {
		t.Fatalf("restore of a backup.Copy copy: %v", err)
	}
}
