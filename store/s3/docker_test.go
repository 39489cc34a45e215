package s3

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/storetest"
)

// dockerImage is the MinIO image for TestConformanceDocker: the last
// community release published as an image.
const dockerImage = "minio/minio:RELEASE.2025-09-07T16-13-09Z"

// TestConformanceDocker runs the suite against MinIO in a container
// started by testcontainers-go, where a Docker engine is reachable.
// Without one it skips, even under HSMBACKUP_TEST_DISALLOW_SKIP=1: that
// variable guards the MinIO-binary and SoftHSM tests that CI must run,
// and CI machines here have no Docker engine. The binary-based
// TestConformance is the one that decides CI.
func TestConformanceDocker(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short mode: pulls and starts a container")
	}
	testcontainers.SkipIfProviderIsNotHealthy(t)
	ctx := context.Background()
	user, pass := "test-"+randomHex(6), randomHex(20)
	key := make([]byte, 32)
	rand.Read(key)
	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{
			Image:        dockerImage,
			ExposedPorts: []string{"9000/tcp"},
			Cmd:          []string{"server", "/data"},
			Env: map[string]string{
				"MINIO_ROOT_USER":      user,
				"MINIO_ROOT_PASSWORD":  pass,
				"MINIO_BROWSER":        "off",
				"MINIO_KMS_SECRET_KEY": "hsmbackup-test-key:" + base64.StdEncoding.EncodeToString(key),
			},
			WaitingFor: wait.ForHTTP("/minio/health/live").WithPort("9000/tcp").WithStartupTimeout(2 * time.Minute),
		},
		Started: true,
	})
	testcontainers.CleanupContainer(t, c)
	if err != nil {
		t.Fatalf("start MinIO container: %v", err)
	}
	endpoint, err := c.PortEndpoint(ctx, "9000/tcp", "http")
	if err != nil {
		t.Fatal(err)
	}
	base := Config{
		Bucket:      "conformance",
		Endpoint:    endpoint,
		Region:      "us-east-1",
		Credentials: credentialsStatic(user, pass),
		PartSize:    MinPartSize,
	}
	first := newStore(t, base)
	if err := first.Client().MakeBucket(ctx, base.Bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	storetest.Run(t, func(t *testing.T) store.Store {
		cfg := base
		cfg.Prefix = "t/" + randomHex(6)
		return newStore(t, cfg)
	})
}
