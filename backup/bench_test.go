package backup

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/hsmbackup/hsmbackup/backup/backuptest"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/internal/miniotest"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/s3"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// BenchmarkBackupFullHSM measures the target of docs/ARCHITECTURE.md: a backup of a full
// HSM (16,666 keys, each a 512-byte secret, so the image is mostly
// incompressible key material) to a local MinIO, against a plain minio-go
// PutObject of as many bytes. Every sub-benchmark reports bytes of the
// stored object per second.
func BenchmarkBackupFullHSM(b *testing.B) {
	ctx := context.Background()
	co := newMember(b, device.DefaultCapacity)
	kr, _, priv := backuptest.Keys(b)
	opts := CreateOptions{Recipients: []wrap.Recipient{kr}, SigningKey: priv}

	srv := miniotest.Start(b)
	bucket := srv.NewBucket(b, miniotest.BucketOptions{})
	s3st, err := s3.New(s3.Config{Bucket: bucket, Endpoint: srv.Endpoint, Insecure: true, Credentials: srv.Credentials(), Region: "us-east-1"})
	if err != nil {
		b.Fatal(err)
	}
	// One backup first, for the object's size.
	m, err := Create(ctx, co, Repo{Store: backuptest.FileStore(b)}, opts)
	if err != nil {
		b.Fatal(err)
	}
	size := m.ObjectSize
	b.Logf("image %d bytes, stored object %d bytes", m.ImageSize, size)

	b.Run("export-only", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			rc, err := co.ExportImage(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, rc); err != nil {
				b.Fatal(err)
			}
			rc.Close()
		}
	})
	b.Run("plain-PutObject", func(b *testing.B) {
		data := bytes.Repeat([]byte{0x5a}, int(size))
		mc := srv.Client(b)
		b.SetBytes(size)
		i := 0
		for b.Loop() {
			i++
			if _, err := mc.PutObject(ctx, bucket, "plain/"+string(rune('a'+i%26))+"/obj", bytes.NewReader(data), size, minio.PutObjectOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, tc := range []struct {
		name string
		src  ImageSource
		st   store.Store
	}{
		{"create-to-minio", co, s3st},
		{"create-to-file-store", co, backuptest.FileStore(b)},
		// The same without the manifest's inventory (a source that cannot
		// list its keys): the pipeline alone.
		{"create-to-minio-no-inventory", exportOnly{co}, s3st},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				if _, err := Create(ctx, tc.src, Repo{Store: tc.st}, opts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// exportOnly is an ImageSource and nothing more: Create records no
// inventory from it.
type exportOnly struct{ ImageSource }
