package restore

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/backup/backuptest"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
	"github.com/hsmbackup/hsmbackup/internal/miniotest"
	"github.com/hsmbackup/hsmbackup/internal/testpki"
	"github.com/hsmbackup/hsmbackup/store/s3"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// BenchmarkRestoreFullHSM measures a restore of a full HSM (16,666 keys,
// each a 512-byte secret, as backup's BenchmarkBackupFullHSM) from a local
// MinIO into a fresh HSM daemon over TLS, against its floor: a plain
// minio-go GetObject of the stored object plus one fsync'd write of as
// many bytes as the restored HSM's sealed state. Every sub-benchmark
// reports bytes of the stored object per second.
func BenchmarkRestoreFullHSM(b *testing.B) {
	ctx := context.Background()
	a := newAuthorities(b)
	ca := testpki.NewCA(b, "customer root CA")
	d := hsmtest.Serve(b, device.ManufactureConfig{Manufacturer: a.mfr, Operator: a.op})
	cfg := hsmtest.InitCluster(b, d.Addr, d.Claim, a.mfrRoots, a.opRoots, ca, testCluster, "admin", testPassword)
	co := newClient(b, cfg)
	if _, err := co.Login(ctx, "admin", testPassword); err != nil {
		b.Fatal(err)
	}
	if err := co.CreateUser(ctx, "crypto-user", hsmcore.CryptoUser, testPassword); err != nil {
		b.Fatal(err)
	}
	cu := newClient(b, cfg)
	if _, err := cu.Login(ctx, "crypto-user", testPassword); err != nil {
		b.Fatal(err)
	}
	specs := make([]hsmcore.KeySpec, device.DefaultCapacity)
	for i := range specs {
		specs[i] = hsmcore.KeySpec{Type: hsmcore.GenericSecret, Bits: 4096}
	}
	if _, err := cu.GenerateKeys(ctx, specs); err != nil {
		b.Fatal(err)
	}

	srv := miniotest.Start(b)
	bucket := srv.NewBucket(b, miniotest.BucketOptions{})
	st, err := s3.New(s3.Config{Bucket: bucket, Endpoint: srv.Endpoint, Insecure: true, Credentials: srv.Credentials(), Region: "us-east-1"})
	if err != nil {
		b.Fatal(err)
	}
	kr, pub, priv := backuptest.Keys(b)
	repo := backup.Repo{Store: st, Prefix: testPrefix}
	m, err := backup.Create(ctx, co, repo, backup.CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv})
	if err != nil {
		b.Fatal(err)
	}
	opts := Options{PublicKey: pub, Identities: []wrap.Identity{kr}, ManufacturerRoots: a.mfrRoots, OperatorRoots: a.opRoots}

	// fresh serves a new HSM of the source's hardware, outside the timer.
	fresh := func(b *testing.B) (*client.Client, *hsmtest.Daemon) {
		b.StopTimer()
		defer b.StartTimer()
		h := hsmtest.Serve(b, device.ManufactureConfig{Manufacturer: a.mfr, Operator: a.op})
		a.claims.Add(h.Claim)
		return newClient(b, client.Config{Addr: h.Addr, ManufacturerRoots: a.mfrRoots, Claims: a.claims}), h
	}
	target, h := fresh(b)
	if _, err := Restore(ctx, repo, testCluster, m.ID, target, opts); err != nil {
		b.Fatal(err)
	}
	sealed, err := os.ReadFile(filepath.Join(h.Dir, "device.sealed"))
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("image %d bytes, stored object %d bytes, sealed state %d bytes", m.ImageSize, m.ObjectSize, len(sealed))

	b.Run("plain-GetObject", func(b *testing.B) {
		mc := srv.Client(b)
		key := repo.ObjectKey(testCluster, m.ID, backup.ImageObject)
		b.SetBytes(m.ObjectSize)
		for b.Loop() {
			o, err := mc.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, o); err != nil {
				b.Fatal(err)
			}
			o.Close()
		}
	})
	b.Run("fsync-write-of-sealed-state", func(b *testing.B) {
		dir := b.TempDir()
		b.SetBytes(m.ObjectSize)
		for b.Loop() {
			f, err := os.Create(filepath.Join(dir, "state"))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.Write(sealed); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
	b.Run("restore-from-minio", func(b *testing.B) {
		b.SetBytes(m.ObjectSize)
		for b.Loop() {
			target, _ := fresh(b)
			if _, err := Restore(ctx, repo, testCluster, m.ID, target, opts); err != nil {
				b.Fatal(err)
			}
		}
	})
}
