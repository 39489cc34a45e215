package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/hsmbackup/hsmbackup/internal/miniotest"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/storetest"
)

func TestMain(m *testing.M) { miniotest.Main(m) }

// config returns a Config for bucket on srv under a fresh prefix, with
// S3's smallest part size so that BigSize objects take two parts.
func config(tb testing.TB, srv *miniotest.Server, bucket string) Config {
	tb.Helper()
	return Config{
		Bucket:      bucket,
		Prefix:      "t/" + randomHex(6),
		Endpoint:    srv.URL(),
		Region:      "us-east-1",
		Credentials: srv.Credentials(),
		PartSize:    MinPartSize,
	}
}

func newStore(tb testing.TB, cfg Config) *Store {
	tb.Helper()
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// noUploadsLeft fails tb if key has an incomplete multipart upload.
func noUploadsLeft(tb testing.TB, s *Store, key string) {
	tb.Helper()
	err := s.ListIncompleteUploads(context.Background(), key, func(u Upload) error {
		tb.Errorf("incomplete upload %s of %s left behind", u.UploadID, u.Key)
		return nil
	})
	if err != nil {
		tb.Error(err)
	}
}

func TestConformance(t *testing.T) {
	srv := miniotest.Shared(t)
	bucket := srv.NewBucket(t, miniotest.BucketOptions{})
	storetest.Run(t, func(t *testing.T) store.Store {
		s := newStore(t, config(t, srv, bucket))
		t.Cleanup(func() {
			// The suite's failed and cancelled multipart Puts (6 MiB and
			// more, so past the first part) must have been aborted.
			for _, key := range []string{"cm", "fail/6291456", "fr"} {
				noUploadsLeft(t, s, key)
			}
		})
		return s
	})
}

// TestIncompleteUploads shows that ListIncompleteUploads does see an
// upload left open (so noUploadsLeft means something), and that
// AbortUpload removes it.
func TestIncompleteUploads(t *testing.T) {
	srv := miniotest.Shared(t)
	s := newStore(t, config(t, srv, srv.NewBucket(t, miniotest.BucketOptions{})))
	ctx := context.Background()
	core := minio.Core{Client: s.Client()}
	id, err := core.NewMultipartUpload(ctx, s.Bucket(), s.ObjectName("dead/image"), minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var found []Upload
	if err := s.ListIncompleteUploads(ctx, "dead/image", func(u Upload) error {
		found = append(found, u)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].UploadID != id || found[0].Key != "dead/image" {
		t.Fatalf("found %+v, want upload %s", found, id)
	}
	if time.Since(found[0].Initiated) > time.Hour {
		t.Errorf("initiated %v", found[0].Initiated)
	}
	storetest.Absent(t, s, "dead/image")
	if err := s.AbortUpload(ctx, found[0]); err != nil {
		t.Fatal(err)
	}
	noUploadsLeft(t, s, "dead/image")
}

// TestRemoveStaleUploads: the uploads under the store's prefix begun
// before the cut-off are aborted; newer ones, and those of another prefix
// in the same bucket, stay.
func TestRemoveStaleUploads(t *testing.T) {
	srv := miniotest.Shared(t)
	bucket := srv.NewBucket(t, miniotest.BucketOptions{})
	s := newStore(t, config(t, srv, bucket))
	other := newStore(t, config(t, srv, bucket))
	ctx := context.Background()
	core := minio.Core{Client: s.Client()}
	for _, st := range []*Store{s, other} {
		for _, k := range []string{"a/image", "b/image"} {
			if _, err := core.NewMultipartUpload(ctx, bucket, st.ObjectName(k), minio.PutObjectOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n, err := s.RemoveStaleUploads(ctx, time.Now().Add(-time.Hour)); n != 0 || err != nil {
		t.Fatalf("uploads begun before an hour ago: removed %d, %v; want none", n, err)
	}
	if n, err := s.RemoveStaleUploads(ctx, time.Now().Add(time.Minute)); n != 2 || err != nil {
		t.Fatalf("removed %d, %v; want the store's 2", n, err)
	}
	for _, k := range []string{"a/image", "b/image"} {
		noUploadsLeft(t, s, k)
		n := 0
		if err := other.ListIncompleteUploads(ctx, k, func(Upload) error { n++; return nil }); err != nil || n != 1 {
			t.Errorf("the other prefix's upload of %s: %d listed, %v; want it kept", k, n, err)
		}
	}
}

func TestSSEKMS(t *testing.T) {
	srv := miniotest.Shared(t)
	cfg := config(t, srv, srv.NewBucket(t, miniotest.BucketOptions{}))
	cfg.Encryption, cfg.KMSKeyID = SSEKMS, srv.KMSKeyID
	s := newStore(t, cfg)
	ctx := context.Background()
	for _, n := range []int{10, storetest.BigSize} { // one PUT, and multipart
		key := "kms/" + string(rune('a'+n%26))
		data := storetest.Data(1, n)
		storetest.Put(t, s, key, data, store.PutOptions{})
		oi, err := s.Client().StatObject(ctx, s.Bucket(), s.ObjectName(key), minio.StatObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := oi.Metadata.Get("X-Amz-Server-Side-Encryption"); got != "aws:kms" {
			t.Errorf("%d bytes: X-Amz-Server-Side-Encryption = %q, want aws:kms", n, got)
		}
		if got := oi.Metadata.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id"); !strings.HasSuffix(got, srv.KMSKeyID) {
			t.Errorf("%d bytes: KMS key id %q, want %s", n, got, srv.KMSKeyID)
		}
		if got := storetest.Read(t, s, key); !bytes.Equal(got, data) {
			t.Errorf("%d bytes: SSE-KMS object reads back wrong", n)
		}
	}

	// A key the KMS does not have: a permanent error, and no object.
	cfg.KMSKeyID = "no-such-key"
	bad := newStore(t, cfg)
	err := bad.Put(ctx, "nokey", strings.NewReader("x"), store.PutOptions{})
	if err == nil || store.IsTransient(err) {
		t.Errorf("put under an unknown KMS key: got %v, want a permanent error", err)
	}
	storetest.Absent(t, bad, "nokey")
}

func TestSSES3(t *testing.T) {
	srv := miniotest.Shared(t)
	cfg := config(t, srv, srv.NewBucket(t, miniotest.BucketOptions{}))
	cfg.Encryption = SSES3
	s := newStore(t, cfg)
	storetest.Put(t, s, "k", []byte("secret"), store.PutOptions{})
	oi, err := s.Client().StatObject(context.Background(), s.Bucket(), s.ObjectName("k"), minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := oi.Metadata.Get("X-Amz-Server-Side-Encryption"); got != "AES256" {
		t.Errorf("X-Amz-Server-Side-Encryption = %q, want AES256", got)
	}
}

func TestObjectLock(t *testing.T) {
	srv := miniotest.Shared(t)
	s := newStore(t, config(t, srv, srv.NewBucket(t, miniotest.BucketOptions{ObjectLocking: true})))
	ctx := context.Background()
	until := time.Now().Add(time.Hour).Truncate(time.Second)

	for _, tc := range []struct {
		key  string
		opts store.PutOptions
	}{
		{"compliance", store.PutOptions{Retention: store.Retention{Mode: store.Compliance, Until: until}}},
		{"governance", store.PutOptions{Retention: store.Retention{Mode: store.Governance, Until: until}, CreateOnly: true}},
		{"hold", store.PutOptions{LegalHold: true}},
		{"big-compliance", store.PutOptions{Retention: store.Retention{Mode: store.Compliance, Until: until}}},
	} {
		n := 100
		if strings.HasPrefix(tc.key, "big") {
			n = storetest.BigSize
		}
		data := storetest.Data(2, n)
		storetest.Put(t, s, tc.key, data, tc.opts)
		name := s.ObjectName(tc.key)
		if tc.opts.Retention.Mode != "" {
			mode, date, err := s.Client().GetObjectRetention(ctx, s.Bucket(), name, "")
			if err != nil || mode == nil || string(*mode) != string(tc.opts.Retention.Mode) || date == nil || !date.Equal(until) {
				t.Errorf("%s: retention %v %v, %v; want %s until %v", tc.key, mode, date, err, tc.opts.Retention.Mode, until)
			}
		} else {
			hold, err := s.Client().GetObjectLegalHold(ctx, s.Bucket(), name, minio.GetObjectLegalHoldOptions{})
			if err != nil || hold == nil || *hold != minio.LegalHoldEnabled {
				t.Errorf("%s: legal hold %v, %v", tc.key, hold, err)
			}
		}
		err := s.Delete(ctx, tc.key)
		if !errors.Is(err, store.ErrLocked) || store.IsTransient(err) {
			t.Errorf("delete %s: got %v, want ErrLocked", tc.key, err)
		}
		if got := storetest.Read(t, s, tc.key); !bytes.Equal(got, data) {
			t.Errorf("%s changed after a refused delete", tc.key)
		}
		// Nor can it be overwritten by a create, and a plain Put only
		// adds a version on top: the locked one stays.
		if err := s.Put(ctx, tc.key, strings.NewReader("x"), store.PutOptions{CreateOnly: true}); !errors.Is(err, store.ErrExists) {
			t.Errorf("create over locked %s: got %v, want ErrExists", tc.key, err)
		}
	}

	if err := s.CheckObjectLock(ctx); err != nil {
		t.Errorf("CheckObjectLock of a bucket with object lock: %v", err)
	}
	for key, want := range map[string]store.Retention{
		"compliance": {Mode: store.Compliance, Until: until},
		"governance": {Mode: store.Governance, Until: until},
		"hold":       {},
	} {
		r, hold, err := s.ObjectLock(ctx, key)
		if err != nil || r.Mode != want.Mode || !r.Until.Equal(want.Until) || hold != (key == "hold") {
			t.Errorf("ObjectLock(%s) = %+v, hold %t, %v; want %+v, hold %t", key, r, hold, err, want, key == "hold")
		}
	}
	if _, _, err := s.ObjectLock(ctx, "absent"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ObjectLock of a missing object: %v, want ErrNotFound", err)
	}

	// An unlocked object in the same bucket deletes for good: every
	// version goes, so no older one comes back.
	storetest.Put(t, s, "free", []byte("v1"), store.PutOptions{})
	storetest.Put(t, s, "free", []byte("v2"), store.PutOptions{})
	if err := s.Delete(ctx, "free"); err != nil {
		t.Fatal(err)
	}
	storetest.Absent(t, s, "free")
	n := 0
	for v := range s.Client().ListObjects(ctx, s.Bucket(), minio.ListObjectsOptions{Prefix: s.ObjectName("free"), WithVersions: true}) {
		if v.Err != nil {
			t.Fatal(v.Err)
		}
		n++
	}
	if n != 0 {
		t.Errorf("%d versions of a deleted object left", n)
	}
	if r, hold, err := s.ObjectLock(ctx, "free"); err == nil || r.Mode != "" || hold {
		t.Errorf("ObjectLock of a deleted object: %+v %t %v", r, hold, err)
	}
}

// TestIfMatchLocked: in a bucket with object lock, a compare-and-swap Put
// of a locked object (a manifest rewritten by a lifecycle change) adds a
// new version, locked as asked; the old version stays locked under it,
// and a Put with a stale ETag still loses.
func TestIfMatchLocked(t *testing.T) {
	srv := miniotest.Shared(t)
	s := newStore(t, config(t, srv, srv.NewBucket(t, miniotest.BucketOptions{ObjectLocking: true})))
	ctx := context.Background()
	until := time.Now().Add(time.Hour).Truncate(time.Second)
	lock := store.Retention{Mode: store.Compliance, Until: until}
	storetest.Put(t, s, "m", []byte("v1"), store.PutOptions{CreateOnly: true, Retention: lock})
	oi, err := s.Stat(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	storetest.Put(t, s, "m", []byte("v2"), store.PutOptions{IfMatch: oi.ETag, Retention: lock})
	if got := storetest.Read(t, s, "m"); string(got) != "v2" {
		t.Fatalf("after the swap: %q", got)
	}
	if err := s.Put(ctx, "m", strings.NewReader("v3"), store.PutOptions{IfMatch: oi.ETag, Retention: lock}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("swap with a stale ETag: %v, want ErrConflict", err)
	}
	var versions int
	for v := range s.Client().ListObjects(ctx, s.Bucket(), minio.ListObjectsOptions{Prefix: s.ObjectName("m"), WithVersions: true}) {
		if v.Err != nil {
			t.Fatal(v.Err)
		}
		versions++
		mode, date, err := s.Client().GetObjectRetention(ctx, s.Bucket(), v.Key, v.VersionID)
		if err != nil || mode == nil || *mode != minio.Compliance || date == nil || !date.Equal(until) {
			t.Errorf("version %s (latest %t): retention %v %v, %v; want COMPLIANCE until %v", v.VersionID, v.IsLatest, mode, date, err, until)
		}
	}
	if versions != 2 {
		t.Errorf("%d versions, want 2", versions)
	}
	if err := s.Delete(ctx, "m"); !errors.Is(err, store.ErrLocked) {
		t.Errorf("delete: %v, want ErrLocked", err)
	}
	if got := storetest.Read(t, s, "m"); string(got) != "v2" {
		t.Errorf("after a refused delete: %q", got)
	}
}

// TestInitBucketObjectLock: InitBucket with ObjectLock makes a bucket
// that locks, accepts an existing one that does, and refuses one that
// does not (ErrUnsupported) without changing it.
func TestInitBucketObjectLock(t *testing.T) {
	srv := miniotest.Shared(t)
	ctx := context.Background()
	s := newStore(t, config(t, srv, "lk-"+randomHex(4)))
	if created, err := s.InitBucket(ctx, BucketOptions{ObjectLock: true}); created || !errors.Is(err, store.ErrNoStore) {
		t.Errorf("InitBucket of a missing bucket without Create: %v, %v", created, err)
	}
	if created, err := s.InitBucket(ctx, BucketOptions{Create: true, ObjectLock: true}); !created || err != nil {
		t.Fatalf("InitBucket: %v, %v", created, err)
	}
	if err := s.CheckObjectLock(ctx); err != nil {
		t.Errorf("the bucket made: %v", err)
	}
	if created, err := s.InitBucket(ctx, BucketOptions{Create: true, ObjectLock: true}); created || err != nil {
		t.Errorf("InitBucket of the existing locked bucket: %v, %v", created, err)
	}
	storetest.Put(t, s, "k", []byte("x"), store.PutOptions{Retention: store.Retention{Mode: store.Governance, Until: time.Now().Add(time.Minute)}})

	plain := newStore(t, config(t, srv, srv.NewBucket(t, miniotest.BucketOptions{})))
	if created, err := plain.InitBucket(ctx, BucketOptions{Create: true, ObjectLock: true}); created || !errors.Is(err, store.ErrUnsupported) {
		t.Errorf("InitBucket with object lock of a bucket without: %v, %v; want ErrUnsupported", created, err)
	}
	if err := plain.CheckObjectLock(ctx); !errors.Is(err, store.ErrUnsupported) {
		t.Errorf("after the refusal: %v", err)
	}
}

func TestRetentionNeedsLockedBucket(t *testing.T) {
	srv := miniotest.Shared(t)
	s := newStore(t, config(t, srv, srv.NewBucket(t, miniotest.BucketOptions{})))
	if err := s.CheckObjectLock(context.Background()); !errors.Is(err, store.ErrUnsupported) {
		t.Errorf("CheckObjectLock of a bucket without object lock: %v, want ErrUnsupported", err)
	}
	err := s.Put(context.Background(), "r", strings.NewReader("x"), store.PutOptions{
		Retention: store.Retention{Mode: store.Compliance, Until: time.Now().Add(time.Hour)},
	})
	if !errors.Is(err, store.ErrUnsupported) || store.IsTransient(err) {
		t.Errorf("retention in a bucket without object lock: got %v, want ErrUnsupported", err)
	}
	storetest.Absent(t, s, "r")
	// A big body (a multipart upload) is refused as well, and leaves no
	// upload behind.
	err = s.Put(context.Background(), "big", struct{ io.Reader }{bytes.NewReader(storetest.Data(3, storetest.BigSize))}, store.PutOptions{
		Retention: store.Retention{Mode: store.Compliance, Until: time.Now().Add(time.Hour)},
	})
	if !errors.Is(err, store.ErrUnsupported) {
		t.Errorf("streamed retention put in a bucket without object lock: got %v, want ErrUnsupported", err)
	}
	storetest.Absent(t, s, "big")
	noUploadsLeft(t, s, "big")
	err = s.Put(context.Background(), "r", strings.NewReader("x"), store.PutOptions{Retention: store.Retention{Mode: store.Compliance}})
	if err == nil {
		t.Error("retention without a date accepted")
	}
}

// TestCreateOnlyLosesToExisting: an object another client wrote wins over
// a create-only Put, whatever its size and path (one PUT or multipart).
func TestCreateOnlyLosesToExisting(t *testing.T) {
	srv := miniotest.Shared(t)
	s := newStore(t, config(t, srv, srv.NewBucket(t, miniotest.BucketOptions{})))
	ctx := context.Background()
	theirs := []byte("written by someone else")
	if _, err := s.Client().PutObject(ctx, s.Bucket(), s.ObjectName("m"), bytes.NewReader(theirs), int64(len(theirs)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, body := range []io.Reader{
		strings.NewReader("mine"),
		iotest.HalfReader(strings.NewReader("mine, streamed")),
		bytes.NewReader(storetest.Data(3, storetest.BigSize)),
		iotest.HalfReader(bytes.NewReader(storetest.Data(3, 2*storetest.BigSize))),
	} {
		err := s.Put(ctx, "m", body, store.PutOptions{CreateOnly: true})
		if !errors.Is(err, store.ErrExists) || store.IsTransient(err) {
			t.Errorf("create over an existing object: got %v, want ErrExists", err)
		}
	}
	if got := storetest.Read(t, s, "m"); !bytes.Equal(got, theirs) {
		t.Errorf("existing object changed to %q", got)
	}
	noUploadsLeft(t, s, "m")
}

// TestCreateOnlyCheckedAtCompletion: a create-only multipart upload that
// started before another creator won must still lose when it completes.
// (minio-go's own PutObject sends If-None-Match only when the upload
// starts, and would let both win.)
func TestCreateOnlyCheckedAtCompletion(t *testing.T) {
	srv := miniotest.Shared(t)
	s := newStore(t, config(t, srv, srv.NewBucket(t, miniotest.BucketOptions{})))
	ctx := context.Background()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.Put(ctx, "m", pr, store.PutOptions{CreateOnly: true}) }()
	// More than a part: the multipart upload starts.
	if _, err := pw.Write(storetest.Data(1, MinPartSize+1)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		started := false
		if err := s.ListIncompleteUploads(ctx, "m", func(Upload) error { started = true; return nil }); err != nil {
			t.Fatal(err)
		}
		if started {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the multipart upload did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Another creator wins meanwhile.
	storetest.Put(t, s, "m", []byte("winner"), store.PutOptions{CreateOnly: true})
	pw.Close()
	if err := <-done; !errors.Is(err, store.ErrExists) {
		t.Fatalf("late create: got %v, want ErrExists", err)
	}
	if got := storetest.Read(t, s, "m"); string(got) != "winner" {
		t.Errorf("object is %d bytes, not the winner's", len(got))
	}
	noUploadsLeft(t, s, "m")
}

// faultTransport answers every request with a fixed status.
type faultTransport int

func (f faultTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		req.Body.Close()
	}
	return &http.Response{
		StatusCode: int(f),
		Status:     http.StatusText(int(f)),
		Header:     http.Header{"Content-Length": {"0"}},
		Body:       http.NoBody,
		Request:    req,
	}, nil
}

func TestErrorClassification(t *testing.T) {
	srv := miniotest.Shared(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		cfg       func(*Config)
		transient bool
		notFound  bool
	}{
		{"503", func(c *Config) { c.Transport = faultTransport(503) }, true, false},
		{"500", func(c *Config) { c.Transport = faultTransport(500) }, true, false},
		{"403", func(c *Config) { c.Transport = faultTransport(403) }, false, false},
		{"wrong secret", func(c *Config) { c.Credentials = wrongSecret(srv) }, false, false},
		{"no bucket", func(c *Config) { c.Bucket = "no-such-bucket" }, false, false},
		{"refused", func(c *Config) { c.Endpoint = closedPort(t) }, true, false},
		{"missing", func(c *Config) {}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config(t, srv, "b-"+randomHex(4))
			if tc.name == "missing" {
				cfg.Bucket = srv.NewBucket(t, miniotest.BucketOptions{})
			}
			cfg.MaxRetries = 1
			tc.cfg(&cfg)
			s := newStore(t, cfg)
			_, err := s.Stat(ctx, "k")
			if err == nil {
				t.Fatal("stat succeeded")
			}
			if store.IsTransient(err) != tc.transient || errors.Is(err, store.ErrNotFound) != tc.notFound {
				t.Errorf("stat: %v: transient %v, not found %v", err, store.IsTransient(err), errors.Is(err, store.ErrNotFound))
			}
			if !tc.notFound {
				err = s.Put(ctx, "k", strings.NewReader("x"), store.PutOptions{})
				if err == nil || store.IsTransient(err) != tc.transient {
					t.Errorf("put: %v: transient %v", err, store.IsTransient(err))
				}
			}
		})
	}
}

func wrongSecret(srv *miniotest.Server) *credentials.Credentials {
	return credentialsStatic(srv.AccessKey, "wrong-"+srv.SecretKey)
}

func credentialsStatic(id, secret string) *credentials.Credentials {
	return credentials.NewStaticV4(id, secret, "")
}

func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

// A missing bucket is store.ErrNoStore, not an empty store; InitBucket
// creates it only when asked. Refused credentials are store.ErrAccessDenied.
func TestMissingBucketAndAccessDenied(t *testing.T) {
	srv := miniotest.Shared(t)
	ctx := context.Background()
	cfg := config(t, srv, "nb-"+randomHex(4))
	cfg.MaxRetries = 1
	s := newStore(t, cfg)
	err := s.List(ctx, "", func(store.ObjectInfo) error { return nil })
	if !errors.Is(err, store.ErrNoStore) {
		t.Errorf("list: %v, want ErrNoStore", err)
	}
	if err := s.Put(ctx, "k", strings.NewReader("x"), store.PutOptions{}); !errors.Is(err, store.ErrNoStore) {
		t.Errorf("put: %v, want ErrNoStore", err)
	}
	if created, err := s.InitBucket(ctx, BucketOptions{}); created || !errors.Is(err, store.ErrNoStore) {
		t.Errorf("InitBucket(false): %v, %v", created, err)
	}
	if created, err := s.InitBucket(ctx, BucketOptions{Create: true}); !created || err != nil {
		t.Fatalf("InitBucket(true): %v, %v", created, err)
	}
	t.Cleanup(func() { s.Client().RemoveBucket(context.Background(), cfg.Bucket) })
	if created, err := s.InitBucket(ctx, BucketOptions{}); created || err != nil {
		t.Errorf("InitBucket of an existing bucket: %v, %v", created, err)
	}
	if err := s.List(ctx, "", func(store.ObjectInfo) error { return nil }); err != nil {
		t.Errorf("list of the new bucket: %v", err)
	}
	cfg.Credentials = wrongSecret(srv)
	bad := newStore(t, cfg)
	if err := bad.List(ctx, "", func(store.ObjectInfo) error { return nil }); !errors.Is(err, store.ErrAccessDenied) {
		t.Errorf("list with a wrong secret: %v, want ErrAccessDenied", err)
	}
}

// With no credentials anywhere, a refusal names the sources tried. The
// IAM provider is pointed at a closed loopback port, so that the test
// sends nothing off this machine.
func TestNoCredentialsNamed(t *testing.T) {
	srv := miniotest.Shared(t)
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"} {
		t.Setenv(v, "")
	}
	t.Setenv("HOME", t.TempDir())
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", closedPort(t)+"/credentials")
	cfg := config(t, srv, srv.NewBucket(t, miniotest.BucketOptions{}))
	cfg.Credentials, cfg.MaxRetries = nil, 1
	s := newStore(t, cfg)
	err := s.List(context.Background(), "", func(store.ObjectInfo) error { return nil })
	if !errors.Is(err, store.ErrAccessDenied) || !strings.Contains(err.Error(), "no credentials found: tried $AWS_ACCESS_KEY_ID") {
		t.Fatalf("list without credentials: %v", err)
	}
}
