package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/miniotest"
)

// BenchmarkImageScale backs up and restores, with the CLI and MinIO, an
// HSM of 16,666 and one of 1,000,000 AES-256 keys (50,000 with -short), and reports for each
// the CLI process's peak RSS for the backup and for the restore, their
// wall times and the plain PutObject and GetObject of the same object,
// timed in the same run, and the restored HSM daemon's peak RSS against
// the size of its sealed state. The pipeline's memory must not grow with the
// image: both peaks stay where the small image's are.
func BenchmarkImageScale(b *testing.B) {
	sizes := []int{16_666, 1_000_000}
	if testing.Short() { // make test: only that it works
		sizes[1] = 50_000
	}
	for _, n := range sizes {
		b.Run(strconv.Itoa(n)+"-keys", func(b *testing.B) {
			srv := miniotest.Shared(b)
			bucket := srv.NewBucket(b, miniotest.BucketOptions{})
			capacity := []string{"--capacity", strconv.Itoa(1 << 20)}
			c := newCluster(b, capacity...)
			start := time.Now()
			fillKeysOf(b, c, n, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true})
			b.Logf("%d keys made in %s", n, time.Since(start).Round(time.Millisecond))
			s := s3Service(b, c, srv, bucket, srv.URL())
			mc := srv.Client(b)
			ctx := context.Background()
			for i := 0; b.Loop(); i++ {
				t0 := time.Now()
				res := s.cliRes(b, "backup", "create", "--cluster", testCluster)
				backupWall := time.Since(t0)
				m := createdLine.FindStringSubmatch(res.Stdout)
				if res.Code != 0 || m == nil {
					b.Fatalf("backup: %s", res)
				}
				id := m[1]
				key := "hsm/" + backup.Repo{}.ObjectKey(testCluster, id, backup.ImageObject)
				oi, err := mc.StatObject(ctx, bucket, key, minio.StatObjectOptions{})
				if err != nil {
					b.Fatal(err)
				}
				t0 = time.Now()
				o, err := mc.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
				if err != nil {
					b.Fatal(err)
				}
				data, err := io.ReadAll(o)
				o.Close()
				if err != nil {
					b.Fatal(err)
				}
				getWall := time.Since(t0)
				t0 = time.Now()
				if _, err := mc.PutObject(ctx, bucket, "plain/object", bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
					b.Fatal(err)
				}
				putWall := time.Since(t0)
				data = nil

				target := c.newHSM(b, fmt.Sprintf("target-%d", i), filepath.Join(c.dir, "op"), testFirmware, capacity...)
				t0 = time.Now()
				rres := s.cliRes(b, c.restoreArgs(id, target)...)
				restoreWall := time.Since(t0)
				if rres.Code != 0 {
					b.Fatalf("restore: %s", rres)
				}
				st, err := os.Stat(filepath.Join(c.dir, fmt.Sprintf("target-%d", i), "device.sealed"))
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(DaemonPeakRSS(b, target))/(1<<20), "target-HSM-RSS-MiB")
				b.ReportMetric(float64(st.Size())/(1<<20), "target-state-MiB")
				b.ReportMetric(float64(oi.Size)/(1<<20), "object-MiB")
				b.ReportMetric(float64(res.MaxRSS)/(1<<20), "backup-RSS-MiB")
				b.ReportMetric(float64(rres.MaxRSS)/(1<<20), "restore-RSS-MiB")
				b.ReportMetric(backupWall.Seconds(), "backup-s")
				b.ReportMetric(putWall.Seconds(), "put-s")
				b.ReportMetric(restoreWall.Seconds(), "restore-s")
				b.ReportMetric(getWall.Seconds(), "get-s")
				Stop(b, target)
			}
		})
	}
}
