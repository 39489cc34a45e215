package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/hsmbackup/hsmbackup/internal/miniotest"
	"github.com/hsmbackup/hsmbackup/store"
)

// episode is a transport that, once the first part of a multipart upload
// has gone through, fails every request for a while: with 503 SlowDown,
// or as a refused connection (an outage). Then it lets requests through
// again.
type episode struct {
	inner   http.RoundTripper
	outage  bool // refuse connections instead of answering SlowDown
	lasting time.Duration

	mu     sync.Mutex
	until  time.Time // the end of the episode, once begun
	failed int
}

func (e *episode) RoundTrip(req *http.Request) (*http.Response, error) {
	e.mu.Lock()
	now := time.Now()
	in := !e.until.IsZero() && now.Before(e.until)
	if in {
		e.failed++
	}
	e.mu.Unlock()
	if in {
		if req.Body != nil {
			io.Copy(io.Discard, req.Body)
			req.Body.Close()
		}
		if e.outage {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
		}
		body := `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`
		return &http.Response{StatusCode: http.StatusServiceUnavailable, Status: "503 Service Unavailable", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Content-Type": {"application/xml"}}, Body: io.NopCloser(strings.NewReader(body)),
			ContentLength: int64(len(body)), Request: req}, nil
	}
	resp, err := e.inner.RoundTrip(req)
	if err == nil && req.Method == http.MethodPut && req.URL.Query().Get("partNumber") == "1" && resp.StatusCode == http.StatusOK {
		e.mu.Lock()
		if e.until.IsZero() {
			e.until = time.Now().Add(e.lasting)
		}
		e.mu.Unlock()
	}
	return resp, err
}

// TestStreamedPutRidesOutEpisodes: a streamed Put of three parts meets,
// after its first part, a SlowDown episode or an outage longer than
// minio-go's own retries (here none): within the store's persistence it
// completes with the whole body and leaves no upload behind; beyond it,
// it fails, and its abort, repeated until the store answers again, still
// leaves no upload behind.
func TestStreamedPutRidesOutEpisodes(t *testing.T) {
	srv := miniotest.Shared(t)
	bucket := srv.NewBucket(t, miniotest.BucketOptions{})
	body := make([]byte, 2*MinPartSize+MinPartSize/2)
	rand.Read(body)
	for _, tc := range []struct {
		name    string
		outage  bool
		lasting time.Duration
		persist time.Duration
		fails   bool
	}{
		{"SlowDown within persistence", false, 3 * time.Second, 10 * time.Second, false},
		{"outage within persistence", true, 3 * time.Second, 10 * time.Second, false},
		{"SlowDown beyond persistence", false, 4 * time.Second, time.Second, true},
		{"outage beyond persistence", true, 4 * time.Second, time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ep := &episode{inner: http.DefaultTransport, outage: tc.outage, lasting: tc.lasting}
			cfg := config(t, srv, bucket)
			cfg.Transport, cfg.MaxRetries, cfg.Persist = ep, 1, tc.persist
			s := newStore(t, cfg)
			ctx := context.Background()
			err := s.Put(ctx, "image", io.MultiReader(bytes.NewReader(body)), store.PutOptions{CreateOnly: true})
			if ep.failed == 0 {
				t.Fatal("no request met the episode")
			}
			if tc.fails {
				if !errors.Is(err, store.ErrTransient) {
					t.Fatalf("put beyond the store's persistence: %v, want a transient failure", err)
				}
				if _, err := s.Stat(ctx, "image"); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("after the failed put, stat: %v, want not found", err)
				}
			} else {
				if err != nil {
					t.Fatalf("put through the episode (%d requests failed): %v", ep.failed, err)
				}
				r, err := s.Get(ctx, "image")
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(r)
				r.Close()
				if err != nil || !bytes.Equal(got, body) {
					t.Fatalf("read back %d bytes (%v), want the %d put", len(got), err, len(body))
				}
			}
			noUploadsLeft(t, s, "image")
			t.Logf("%d requests failed by the episode", ep.failed)
		})
	}
}

// cuttingTransport cuts the body of each of the first cuts GET responses
// after at bytes (a connection reset mid-object), calling before (if
// set) ahead of each GET after the first, and counts the GETs.
type cuttingTransport struct {
	inner  http.RoundTripper
	at     int64
	before func()

	mu   sync.Mutex
	cuts int
	gets int
}

func (c *cuttingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.mu.Lock()
	if req.Method == http.MethodGet {
		c.gets++
		if c.gets > 1 && c.before != nil {
			c.mu.Unlock()
			c.before()
			c.mu.Lock()
		}
	}
	cut := req.Method == http.MethodGet && c.cuts > 0
	if cut {
		c.cuts--
	}
	c.mu.Unlock()
	resp, err := c.inner.RoundTrip(req)
	if err == nil && cut && resp.StatusCode/100 == 2 {
		resp.Body = &cutBody{rc: resp.Body, left: c.at}
	}
	return resp, err
}

type cutBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *cutBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *cutBody) Close() error { return b.rc.Close() }

// TestGetResumes: a read of an object whose connection is reset on the
// way resumes where it stopped and returns the whole object, once per
// cut; not if the object was replaced meanwhile (a conflict, never a mix
// of the two), nor with the persistence off, nor for ever against a
// server that fails every resumed GET before its first byte.
func TestGetResumes(t *testing.T) {
	srv := miniotest.Shared(t)
	bucket := srv.NewBucket(t, miniotest.BucketOptions{})
	ctx := context.Background()
	body := make([]byte, 3<<20)
	rand.Read(body)
	for _, tc := range []struct {
		name     string
		cuts     int
		at       int64
		persist  time.Duration
		replaced bool
		want     error // nil: the whole body
		gets     int
	}{
		{"cut once", 1, 1 << 20, 0, false, nil, 2},
		{"cut at every resume", 3, 700 << 10, 0, false, nil, 4},
		{"cut before the first byte of each resume", 100, 0, 0, false, store.ErrTransient, 1 + maxStuckResumes},
		{"replaced meanwhile", 1, 1 << 20, 0, true, store.ErrConflict, 2},
		{"persistence off", 1, 1 << 20, -1, false, store.ErrTransient, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "obj-" + strings.ReplaceAll(tc.name, " ", "-")
			cfg := config(t, srv, bucket)
			plain := newStore(t, cfg)
			if err := plain.Put(ctx, key, bytes.NewReader(body), store.PutOptions{}); err != nil {
				t.Fatal(err)
			}
			ct := &cuttingTransport{inner: http.DefaultTransport, at: tc.at, cuts: tc.cuts}
			if tc.name == "cut before the first byte of each resume" {
				ct.at, ct.cuts = 1<<20, 1 // the first GET gets a first MiB
				ct.before = func() { ct.mu.Lock(); ct.at, ct.cuts = 0, 100; ct.mu.Unlock() }
			}
			if tc.replaced {
				ct.before = func() {
					other := bytes.Clone(body)
					other[len(other)-1] ^= 1
					if err := plain.Put(ctx, key, bytes.NewReader(other), store.PutOptions{}); err != nil {
						t.Error(err)
					}
				}
			}
			cfg.Transport, cfg.MaxRetries, cfg.Persist = ct, 1, tc.persist
			s := newStore(t, cfg)
			r, err := s.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			switch {
			case tc.want == nil && (err != nil || !bytes.Equal(got, body)):
				t.Fatalf("read %d bytes (%v), want the %d put", len(got), err, len(body))
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("read %d bytes, then %v; want %v", len(got), err, tc.want)
			case tc.want != nil && !bytes.Equal(got, body[:len(got)]):
				t.Fatalf("the %d bytes read before the failure are not the object's", len(got))
			}
			if ct.gets != tc.gets {
				t.Errorf("%d GETs, want %d", ct.gets, tc.gets)
			}
		})
	}
}

// losingStart is a transport that passes the first start of a multipart
// upload (POST ?uploads) to the server and then loses its answer, as a
// connection reset after the request arrived.
type losingStart struct {
	inner http.RoundTripper
	lost  atomic.Bool
}

func (l *losingStart) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.inner.RoundTrip(req)
	if err == nil && req.Method == http.MethodPost && req.URL.Query().Has("uploads") && l.lost.CompareAndSwap(false, true) {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil, &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	}
	return resp, err
}

// TestLostStartLeavesNoUpload: the answer to a streamed create-only
// Put's multipart start is lost, so the start is sent again and the store
// holds two uploads of the key: whether the Put completes or fails, the
// one begun for the lost answer is aborted too.
func TestLostStartLeavesNoUpload(t *testing.T) {
	srv := miniotest.Shared(t)
	bucket := srv.NewBucket(t, miniotest.BucketOptions{})
	body := make([]byte, MinPartSize+MinPartSize/2)
	rand.Read(body)
	for _, fails := range []bool{false, true} {
		t.Run(fmt.Sprintf("put fails %t", fails), func(t *testing.T) {
			ls := &losingStart{inner: http.DefaultTransport}
			cfg := config(t, srv, bucket)
			cfg.Transport = ls
			s := newStore(t, cfg)
			var r io.Reader = bytes.NewReader(body)
			if fails {
				r = io.MultiReader(r, iotest.ErrReader(errors.New("export cut")))
			}
			err := s.Put(context.Background(), "image", io.MultiReader(r), store.PutOptions{CreateOnly: true})
			if !ls.lost.Load() {
				t.Fatal("no multipart upload was started")
			}
			if (err != nil) != fails {
				t.Fatalf("put: %v", err)
			}
			noUploadsLeft(t, s, "image")
		})
	}
}
