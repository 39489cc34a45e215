package integration

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/hsmbackup/hsmbackup/internal/miniotest"
)

// throttle is a TCP proxy on loopback in front of an S3 endpoint that
// passes requests on at rate bytes a second (answers at full speed), and
// that can be frozen: then it passes nothing either way, as an endpoint
// that has stopped answering.
type throttle struct {
	URL      string
	ln       net.Listener
	upstream string
	rate     int

	mu      sync.Mutex
	cond    *sync.Cond
	frozen  bool
	conns   []net.Conn
	maxSent int64         // the most bytes one connection has sent upstream
	big     chan struct{} // closed once a connection has sent over bigRequest bytes
	bigOnce sync.Once
}

// bigRequest is how much one connection must send before throttle takes
// it for the image upload (every other request is a few KiB at most).
const bigRequest = 64 << 10

func newThrottle(t *testing.T, upstream string, rate int) *throttle {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &throttle{URL: "http://" + ln.Addr().String(), ln: ln, upstream: upstream, rate: rate, big: make(chan struct{})}
	p.cond = sync.NewCond(&p.mu)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		p.frozen = false
		p.cond.Broadcast()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	return p
}

func (p *throttle) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		go p.pipe(u, c, true)
		go p.pipe(c, u, false)
	}
}

// pipe copies from src to dst until either fails, in small chunks, each
// waiting while the proxy is frozen; upstream, at the rate.
func (p *throttle) pipe(dst, src net.Conn, upstream bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 4<<10)
	var sent int64
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.frozen {
				p.cond.Wait()
			}
			p.mu.Unlock()
			if upstream {
				time.Sleep(time.Duration(n) * time.Second / time.Duration(p.rate))
				sent += int64(n)
				p.mu.Lock()
				p.maxSent = max(p.maxSent, sent)
				p.mu.Unlock()
				if sent > bigRequest {
					p.bigOnce.Do(func() { close(p.big) })
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *throttle) freeze(on bool) {
	p.mu.Lock()
	p.frozen = on
	p.cond.Broadcast()
	p.mu.Unlock()
}

// interruptedCreate is a backup create run in the background, its
// stderr watched.
type interruptedCreate struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	exited chan struct{}
}

func startCreate(t *testing.T, s *service) *interruptedCreate {
	t.Helper()
	r := &interruptedCreate{stderr: &syncBuffer{}, exited: make(chan struct{})}
	r.cmd = exec.Command(Binary(t), "--config", s.config, "backup", "create", "--cluster", testCluster)
	r.cmd.Env = append(os.Environ(), s.env...)
	var stdout bytes.Buffer
	r.cmd.Stdout, r.cmd.Stderr = &stdout, r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		r.cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		<-r.exited
		s.c.outputs = append(s.c.outputs, stdout.String(), r.stderr.String())
	})
	return r
}

// within waits up to d for cond, polling, and returns how long it took,
// failing t if it does not hold in time.
func within(t *testing.T, what string, d time.Duration, r *interruptedCreate, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("no %s within %s; stderr:\n%s", what, d, r.stderr)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func (r *interruptedCreate) done() bool {
	select {
	case <-r.exited:
		return true
	default:
		return false
	}
}

// TestInterruptedBackup interrupts `backup create` with SIGINT while its
// image is uploading to a slow S3 (a throttling proxy before MinIO) that
// then stops answering: it says so at once, cleans up within its bound
// and exits 130, leaving no backup and no object behind, or only objects
// that `backup list --orphans` shows and `backup prune` removes; a second
// SIGINT ends it at once. An image left without its manifest (a hard kill
// during the cleanup) is reported, kept within the grace period and
// removed after it.
func TestInterruptedBackup(t *testing.T) {
	t.Parallel()
	srv := miniotest.Shared(t)
	c := newCluster(t)
	fillKeys(t, c, 2000) // an image of about 1.2 MB: 20 s to upload at 64 KiB/s

	// interrupt runs backup create against a fresh bucket behind a
	// throttle, waits until the image is uploading, freezes the proxy and
	// sends SIGINT.
	interrupt := func(t *testing.T) (*service, *throttle, string, *interruptedCreate) {
		bucket := srv.NewBucket(t, miniotest.BucketOptions{})
		p := newThrottle(t, srv.Endpoint, 64<<10)
		s := s3Service(t, c, srv, bucket, p.URL)
		r := startCreate(t, s)
		select {
		case <-p.big:
		case <-r.exited:
			t.Fatalf("backup create exited before its upload; stderr:\n%s", r.stderr)
		case <-time.After(2 * time.Minute):
			t.Fatalf("no upload after 2 minutes; stderr:\n%s", r.stderr)
		}
		p.freeze(true)
		if err := r.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		d := within(t, `"interrupted: cleaning up" line`, 5*time.Second, r, func() bool {
			return strings.Contains(r.stderr.String(), "hsmbackup: interrupted: cleaning up")
		})
		if d > time.Second {
			t.Errorf(`"interrupted: cleaning up" took %s to appear, want ≤ 1 s`, d)
		}
		return s, p, bucket, r
	}
	wantInterrupted := func(t *testing.T, r *interruptedCreate) {
		t.Helper()
		if code := r.cmd.ProcessState.ExitCode(); code != exitInterrupted {
			t.Fatalf("backup create exited %d, want %d; stderr:\n%s", code, exitInterrupted, r.stderr)
		}
	}
	// clean checks that no backup is listed and that the bucket is empty,
	// once list --orphans and prune have dealt with what is left.
	clean := func(t *testing.T, s *service, bucket string) {
		t.Helper()
		if got := s.list(t); len(got) != 0 {
			t.Fatalf("backups after the interrupt: %+v", got)
		}
		if left := objects(t, srv, bucket, ""); len(left) > 0 {
			t.Logf("objects left by the interrupt: %v", left)
			out := s.cli(t, "backup", "list", "--orphans", "--orphan-grace", "0")
			for _, k := range left {
				if !strings.Contains(out, strings.TrimPrefix(k, "hsm/")) { // the store's key: under its prefix
					t.Errorf("backup list --orphans does not show %s:\n%s", k, out)
				}
			}
			s.cli(t, "backup", "prune", "--orphan-grace", "0")
		}
		if left := objects(t, srv, bucket, ""); len(left) != 0 {
			t.Fatalf("objects left: %v", left)
		}
		var uploads []string
		for u := range srv.Client(t).ListIncompleteUploads(context.Background(), bucket, "", true) {
			uploads = append(uploads, u.Key)
		}
		if len(uploads) != 0 {
			t.Fatalf("incomplete uploads left: %v", uploads)
		}
	}

	t.Run("once", func(t *testing.T) {
		s, p, bucket, r := interrupt(t)
		d := within(t, "exit", 15*time.Second, r, r.done)
		if d > 10*time.Second {
			t.Errorf("backup create took %s to exit after SIGINT, want ≤ 10 s", d)
		}
		wantInterrupted(t, r)
		t.Logf("exited %s after SIGINT against a store that stopped answering; stderr:\n%s", d, r.stderr)
		if lines := strings.Split(strings.TrimSpace(r.stderr.String()), "\n"); !strings.HasPrefix(lines[len(lines)-1], "hsmbackup: interrupted: backup create: ") {
			t.Errorf("last line of stderr %q, want the interrupted command's error", lines[len(lines)-1])
		}
		p.freeze(false)
		clean(t, s, bucket)
	})

	t.Run("twice", func(t *testing.T) {
		s, p, bucket, r := interrupt(t)
		time.Sleep(200 * time.Millisecond) // in its cleanup, which waits on the frozen store
		if r.done() {
			t.Skip("backup create finished its cleanup before the second SIGINT")
		}
		if err := r.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		d := within(t, "exit after the second SIGINT", 5*time.Second, r, r.done)
		if d > time.Second {
			t.Errorf("backup create took %s to exit after the second SIGINT, want at once", d)
		}
		wantInterrupted(t, r)
		if !strings.Contains(r.stderr.String(), "hsmbackup: interrupted again: quitting") {
			t.Errorf("stderr lacks the second interrupt's line:\n%s", r.stderr)
		}
		p.freeze(false)
		clean(t, s, bucket)
	})

	t.Run("orphan", func(t *testing.T) {
		// What a hard kill during the cleanup of a create leaves: a
		// complete image object, no manifest.
		bucket := srv.NewBucket(t, miniotest.BucketOptions{})
		s := s3Service(t, c, srv, bucket, srv.URL())
		const id = "backup-20261124T101500Z-abcdefghij"
		key := "clusters/" + testCluster + "/backups/" + id + "/image" // in the store, under its prefix "hsm/"
		image := bytes.Repeat([]byte{0xa5}, 100<<10)
		if _, err := srv.Client(t).PutObject(context.Background(), bucket, "hsm/"+key, bytes.NewReader(image), int64(len(image)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		if out := s.cli(t, "backup", "list"); out != "no backups\n" {
			t.Fatalf("backup list shows an image without a manifest:\n%s", out)
		}
		out := s.cli(t, "backup", "list", "--orphans")
		wantLines(t, out, "OBJECT", key)
		if !strings.Contains(out, "image object without a manifest") || !strings.Contains(out, "keeps it: ") || !strings.Contains(out, "within the 24 hours grace period") {
			t.Errorf("backup list --orphans:\n%s", out)
		}
		out = s.cli(t, "backup", "prune")
		if !strings.Contains(out, "1 stray objects younger than 24 hours left") {
			t.Errorf("backup prune within the grace period:\n%s", out)
		}
		if got := objects(t, srv, bucket, ""); len(got) != 1 {
			t.Fatalf("objects after a prune within the grace period: %v", got)
		}
		out = s.cli(t, "backup", "list", "--orphans", "--orphan-grace", "0", "--json")
		if !strings.Contains(out, `"stale":true`) || !strings.Contains(out, `"message_type":"summary","count":1`) {
			t.Errorf("backup list --orphans --orphan-grace 0 --json:\n%s", out)
		}
		out = s.cli(t, "backup", "prune", "--orphan-grace", "0")
		if !strings.Contains(out, id) || !strings.Contains(out, "removed") || !strings.Contains(out, key) {
			t.Errorf("backup prune past the grace period:\n%s", out)
		}
		if got := objects(t, srv, bucket, ""); len(got) != 0 {
			t.Fatalf("objects after the prune: %v", got)
		}
		if out := s.cli(t, "backup", "list", "--orphans"); out != "no orphans\n" {
			t.Errorf("backup list --orphans after the prune:\n%s", out)
		}
	})
}

// exitInterrupted is the CLI's exit code for an interrupted run.
const exitInterrupted = 130
