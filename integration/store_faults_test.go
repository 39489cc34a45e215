package integration

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/internal/miniotest"
)

// TestBackupThroughStoreFaults: `backup create` streams a multipart image
// (three parts) to MinIO through a proxy that, once the first part is
// stored, fails every request for a while: with 503 SlowDown answers for
// 10 s, or by resetting every connection for 20 s (an outage). Every
// backup rides the episode out and passes verify --deep; none is left
// partial: no object without its manifest, no incomplete upload.
func TestBackupThroughStoreFaults(t *testing.T) {
	t.Parallel()
	const keys = 12000 // 512-byte secrets: an image of about 6 MB
	c := newCluster(t, "--capacity", "12100")
	fillKeys(t, c, keys)
	srv := miniotest.Shared(t)
	bucket := srv.NewBucket(t, miniotest.BucketOptions{})
	px := newEpisodeProxy(t, srv.Endpoint)
	s := s3Service(t, c, srv, bucket, px.URL)

	kinds := []struct {
		name    string
		reset   bool
		lasting time.Duration
	}{
		{"SlowDown for 10 s", false, 10 * time.Second},
		{"connections reset for 20 s", true, 20 * time.Second},
	}
	var attempted, succeeded, failedClean, partial, faults int
	for _, k := range kinds {
		px.arm(k.reset, k.lasting)
		attempted++
		res := s.cliRes(t, "backup", "create", "--cluster", testCluster)
		failed := px.disarm()
		faults += failed
		if failed == 0 {
			t.Fatalf("%s: no request met the episode: the image is too small for this test", k.name)
		}
		if res.Code == 0 {
			m := createdLine.FindStringSubmatch(res.Stdout)
			if m == nil {
				t.Fatalf("%s: %s", k.name, res)
			}
			if v := s.cliRes(t, "backup", "verify", "--deep", m[1]); v.Code != 0 {
				partial++
				t.Errorf("%s: the backup made through the episode does not verify: %s", k.name, v)
			} else {
				succeeded++
			}
		} else {
			failedClean++
			t.Errorf("%s (%d requests failed): the backup failed: %s", k.name, failed, res)
		}
		if up := incompleteUploads(t, srv, bucket); len(up) > 0 {
			partial++
			t.Errorf("%s: incomplete uploads left: %q", k.name, up)
		}
		t.Logf("%s: %d requests failed by the proxy; exit %d", k.name, failed, res.Code)
	}
	listed := len(s.list(t))
	if listed != succeeded {
		t.Errorf("%d backups listed, %d succeeded", listed, succeeded)
	}
	t.Logf("RELIABILITY store-faults: %d faults injected (SlowDown, resets); backups attempted %d, succeeded and verified %d, failed cleanly %d, left partial %d",
		faults, attempted, succeeded, failedClean, partial)
}

// incompleteUploads lists the bucket's incomplete multipart uploads (MinIO
// lists them for a whole bucket or one exact key, never a prefix).
func incompleteUploads(t *testing.T, srv *miniotest.Server, bucket string) []string {
	t.Helper()
	var out []string
	for u := range srv.Client(t).ListIncompleteUploads(context.Background(), bucket, "", true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		out = append(out, u.Key)
	}
	return out
}

// episodeProxy forwards to an S3 endpoint; armed, it fails every request
// for a while once the first part of a multipart upload is stored.
type episodeProxy struct {
	URL string

	mu      sync.Mutex
	armed   bool
	reset   bool
	lasting time.Duration
	until   time.Time
	failed  int
}

func newEpisodeProxy(t *testing.T, endpoint string) *episodeProxy {
	target, err := url.Parse("http://" + endpoint)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target) // keeps the signed Host
	rp.ErrorLog = log.New(io.Discard, "", 0)
	p := &episodeProxy{}
	rp.ModifyResponse = func(resp *http.Response) error {
		if r := resp.Request; r.Method == http.MethodPut && r.URL.Query().Get("partNumber") == "1" && resp.StatusCode == http.StatusOK {
			p.mu.Lock()
			if p.armed && p.until.IsZero() {
				p.until = time.Now().Add(p.lasting)
			}
			p.mu.Unlock()
		}
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		in := p.armed && !p.until.IsZero() && time.Now().Before(p.until)
		reset := p.reset
		if in {
			p.failed++
		}
		p.mu.Unlock()
		if in {
			if reset {
				if hj, ok := w.(http.Hijacker); ok {
					if conn, _, err := hj.Hijack(); err == nil {
						conn.Close()
						return
					}
				}
			}
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

func (p *episodeProxy) arm(reset bool, lasting time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.armed, p.reset, p.lasting, p.until, p.failed = true, reset, lasting, time.Time{}, 0
}

// disarm ends the episode and returns how many requests it failed.
func (p *episodeProxy) disarm() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.armed = false
	return p.failed
}
