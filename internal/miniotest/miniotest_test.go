package miniotest

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/encrypt"
)

func TestMain(m *testing.M) { Main(m) }

func TestShared(t *testing.T) {
	a, b := Shared(t), Shared(t)
	if a != b {
		t.Fatal("two shared servers")
	}
	resp, err := http.Get(a.URL() + "/minio/health/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("ready: %s", resp.Status)
	}
	ctx := context.Background()
	c := a.Client(t)
	plain := a.NewBucket(t, BucketOptions{})
	locked := a.NewBucket(t, BucketOptions{ObjectLocking: true})
	if plain == locked {
		t.Fatal("same bucket name twice")
	}
	if _, _, _, _, err := c.GetObjectLockConfig(ctx, locked); err != nil {
		t.Errorf("bucket %s has no object lock: %v", locked, err)
	}
	// The static KMS key works, and only it.
	sse, _ := encrypt.NewSSEKMS(a.KMSKeyID, nil)
	if _, err := c.PutObject(ctx, plain, "o", bytes.NewReader([]byte("x")), 1, minio.PutObjectOptions{ServerSideEncryption: sse}); err != nil {
		t.Errorf("SSE-KMS put: %v", err)
	}
	other, _ := encrypt.NewSSEKMS("no-such-key", nil)
	if _, err := c.PutObject(ctx, plain, "o2", bytes.NewReader([]byte("x")), 1, minio.PutObjectOptions{ServerSideEncryption: other}); err == nil {
		t.Error("SSE-KMS put under an unknown key succeeded")
	}
}

func TestStartStop(t *testing.T) {
	s := Start(t)
	if s == Shared(t) || s.Endpoint == Shared(t).Endpoint {
		t.Fatal("Start returned the shared server")
	}
	s.Stop()
	s.Stop() // idempotent
	if _, err := http.Get(s.URL() + "/minio/health/live"); err == nil {
		t.Error("server still answers after Stop")
	}
	select {
	case <-s.done:
	default:
		t.Error("process still running after Stop")
	}
}

// TestKillRestart: a killed server answers nothing; restarted, it answers
// at the same address with the same credentials and still holds what it
// held.
func TestKillRestart(t *testing.T) {
	s := Start(t)
	ctx := context.Background()
	bucket := s.NewBucket(t, BucketOptions{})
	if _, err := s.Client(t).PutObject(ctx, bucket, "kept", strings.NewReader("before the crash"), -1, minio.PutObjectOptions{PartSize: 5 << 20}); err != nil {
		t.Fatal(err)
	}
	s.Kill()
	if _, err := http.Get(s.URL() + "/minio/health/live"); err == nil {
		t.Fatal("server answers after Kill")
	}
	s.Restart(t)
	obj, err := s.Client(t).GetObject(ctx, bucket, "kept", minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(obj)
	if err != nil || string(b) != "before the crash" {
		t.Fatalf("after the restart: %q, %v", b, err)
	}
}
