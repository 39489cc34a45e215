// Package miniotest runs a real MinIO server for tests: the binary, as a
// process on 127.0.0.1 with free ports, a temporary data directory, random
// root credentials and a static KMS key (so SSE-S3 and SSE-KMS work).
//
// The binary is `minio` on PATH (`make tools` builds it into .tools/bin)
// or the file $HSMBACKUP_MINIO names. Without it tests skip through
// testenv.Skip, which fails them under HSMBACKUP_TEST_DISALLOW_SKIP=1.
//
// A test package shares one server:
//
//	func TestMain(m *testing.M) { miniotest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		srv := miniotest.Shared(t)
//		bucket := srv.NewBucket(t, miniotest.BucketOptions{})
//		…
//	}
//
// MinIO is AGPLv3: it is run as a separate program, never linked.
package miniotest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/hsmbackup/hsmbackup/internal/testenv"
)

// BinaryVar names the environment variable that may point at the minio
// binary; otherwise it is looked up on PATH.
const BinaryVar = "HSMBACKUP_MINIO"

// KMSKeyID is the name of the server's one static KMS key, the only key id
// SSE-KMS accepts.
const KMSKeyID = "hsmbackup-test-key"

// Timeouts.
const (
	startTimeout = 20 * time.Second
	stopTimeout  = 5 * time.Second
)

// Server is a running MinIO.
type Server struct {
	Endpoint  string // host:port, plain HTTP
	AccessKey string
	SecretKey string
	KMSKeyID  string

	dir     string
	console string // the console's address
	kmsKey  string // MINIO_KMS_SECRET_KEY
	log     *syncBuffer
	once    sync.Once

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// URL returns the server's base URL.
func (s *Server) URL() string { return "http://" + s.Endpoint }

// Credentials returns static credentials for the root user.
func (s *Server) Credentials() *credentials.Credentials {
	return credentials.NewStaticV4(s.AccessKey, s.SecretKey, "")
}

// Client returns a minio-go client for the server, logged in as root.
func (s *Server) Client(tb testing.TB) *minio.Client {
	tb.Helper()
	c, err := minio.New(s.Endpoint, &minio.Options{Creds: s.Credentials(), Region: "us-east-1"})
	if err != nil {
		tb.Fatalf("miniotest: client: %v", err)
	}
	return c
}

// BucketOptions are options for NewBucket; the zero value makes a plain
// bucket.
type BucketOptions struct {
	// ObjectLocking makes the bucket with object lock (and so versioning).
	ObjectLocking bool
}

// NewBucket makes a bucket with a fresh random name and returns the name.
// The bucket goes with the server's data directory.
func (s *Server) NewBucket(tb testing.TB, opts BucketOptions) string {
	tb.Helper()
	name := "test-" + randomHex(8)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := s.Client(tb).MakeBucket(ctx, name, minio.MakeBucketOptions{ObjectLocking: opts.ObjectLocking})
	if err != nil {
		tb.Fatalf("miniotest: make bucket %s: %v", name, err)
	}
	return name
}

// Start starts a server of tb's own, stopped when tb ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	bin := lookBinary(tb)
	dir, err := os.MkdirTemp("", "miniotest-")
	if err != nil {
		tb.Fatalf("miniotest: %v", err)
	}
	s, err := start(bin, dir)
	if err != nil {
		os.RemoveAll(dir)
		tb.Fatalf("miniotest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

var shared struct {
	mu  sync.Mutex
	srv *Server
	err error // a start failure, reported to every later caller
}

// Shared returns the test binary's one shared server, starting it on first
// use. Main stops it; a TestMain that does not call Main leaks it until the
// test binary exits (the server is killed with its parent on Linux).
func Shared(tb testing.TB) *Server {
	tb.Helper()
	bin := lookBinary(tb)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv == nil && shared.err == nil {
		dir, err := os.MkdirTemp("", "miniotest-")
		if err == nil {
			shared.srv, err = start(bin, dir)
			if err != nil {
				os.RemoveAll(dir)
			}
		}
		shared.err = err
	}
	if shared.err != nil {
		tb.Fatalf("miniotest: shared server: %v", shared.err)
	}
	return shared.srv
}

// StopShared stops the shared server, if one was started.
func StopShared() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv != nil {
		shared.srv.Stop()
		shared.srv = nil
	}
}

// Main runs m's tests, stops the shared server and exits with the tests'
// code. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	StopShared()
	os.Exit(code)
}

func lookBinary(tb testing.TB) string {
	tb.Helper()
	if bin := os.Getenv(BinaryVar); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			tb.Fatalf("miniotest: %s=%s: %v", BinaryVar, bin, err)
		}
		return bin
	}
	bin, err := exec.LookPath("minio")
	if err != nil {
		testenv.Skip(tb, "skipped: minio not found on PATH or in $%s (run `make tools`): %v", BinaryVar, err)
	}
	return bin
}

// start runs the server with its data in dir, trying again on other ports
// if the first ones were taken in the meantime.
func start(bin, dir string) (*Server, error) {
	var err error
	for range 3 {
		var s *Server
		if s, err = startOnce(bin, dir); err == nil {
			return s, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, err
}

func startOnce(bin, dir string) (*Server, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	rand.Read(key)
	s := &Server{
		Endpoint:  fmt.Sprintf("127.0.0.1:%d", ports[0]),
		AccessKey: "test-" + hex.EncodeToString(key[:6]),
		KMSKeyID:  KMSKeyID,
		dir:       dir,
		console:   fmt.Sprintf("127.0.0.1:%d", ports[1]),
		log:       &syncBuffer{},
	}
	secret := make([]byte, 20)
	rand.Read(secret)
	s.SecretKey = hex.EncodeToString(secret)
	rand.Read(key)
	s.kmsKey = KMSKeyID + ":" + base64.StdEncoding.EncodeToString(key)
	if err := s.launch(bin); err != nil {
		return nil, err
	}
	return s, nil
}

// launch starts the server's process and waits until it is live.
func (s *Server) launch(bin string) error {
	cmd := exec.Command(bin, "server",
		"--address", s.Endpoint,
		"--console-address", s.console,
		"--certs-dir", s.dir+"/certs",
		"--quiet",
		s.dir+"/data")
	env := []string{
		"MINIO_ROOT_USER=" + s.AccessKey,
		"MINIO_ROOT_PASSWORD=" + s.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"MINIO_KMS_SECRET_KEY=" + s.kmsKey,
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MINIO_") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	cmd.Stdout = s.log
	cmd.Stderr = s.log
	// Die with the test binary even if it is killed before cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	if err := s.waitLive(); err != nil {
		s.kill()
		return fmt.Errorf("%w; server log:\n%s", err, s.log.String())
	}
	return nil
}

// Kill stops the server at once (SIGKILL), as a crash or a lost host,
// keeping its data for Restart. Not for the shared server.
func (s *Server) Kill() { s.kill() }

// Restart starts a server Kill stopped again, on the same address with
// the same data, credentials and KMS key, and waits until it is live.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if err := s.launch(lookBinary(tb)); err != nil {
		tb.Fatalf("miniotest: restart: %v", err)
	}
}

// waitLive polls the liveness endpoint until it answers 200.
func (s *Server) waitLive() error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		resp, err := client.Get(s.URL() + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		s.mu.Lock()
		cmd, done := s.cmd, s.done
		s.mu.Unlock()
		select {
		case <-done:
			return fmt.Errorf("minio exited during start-up: %v", cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("minio not live at %s after %v", s.Endpoint, startTimeout)
}

// Stop stops the server (SIGTERM, then SIGKILL after a grace period) and
// removes its data. It is safe to call more than once.
func (s *Server) Stop() {
	s.once.Do(func() {
		s.mu.Lock()
		cmd, done := s.cmd, s.done
		s.mu.Unlock()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(stopTimeout):
			s.kill()
		}
		os.RemoveAll(s.dir)
	})
}

func (s *Server) kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	cmd.Process.Kill()
	<-done
}

// Log returns what the server has printed so far.
func (s *Server) Log() string { return s.log.String() }

// freePorts returns n distinct TCP ports free on 127.0.0.1 just now.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// syncBuffer is a bytes.Buffer safe for the process's writers and readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 1<<20 {
		return len(p), nil // enough to diagnose; drop the rest
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
