package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
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
