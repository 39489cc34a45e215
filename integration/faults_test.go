package integration

import (
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/internal/miniotest"
)

// Trials of TestFaultsEverywhere.
const (
	faultBackups  = 12
	faultRestores = 6
	// faultRate is the share of S3 requests the store's proxy fails.
	faultRate = 0.3
	// faultTimeout is the CLI's --timeout in the trials: how long a call
	// to an HSM may take, and an image transfer go without progress.
	faultTimeout = 5 * time.Second
)

// TestFaultsEverywhere: backups and restores with faults on both of the
// pipeline's links at once. Between the CLI and MinIO, a proxy fails
// 30% of all requests, at random: 503 SlowDown, 500, a reset
// connection, a response cut short, a stall of up to 4 s, a slow answer.
// Between the CLI and the HSM (the backup's source, the restore's
// target), a TCP proxy injects one fault per trial at a random byte of
// the traffic: a reset, a close, a stall shorter or longer than the
// CLI's timeout, or a bandwidth limit. Every backup either succeeds and
// passes verify --deep, or fails with nothing listed, no object and no
// multipart upload left; every restore either leaves its target in the
// backup's state or refuses and leaves it as it was; a failure is never
// reported as an interruption (exit code 130: nobody interrupted); no
// command runs past the harness's RunTimeout.
func TestFaultsEverywhere(t *testing.T) {
	t.Parallel()
	const keys = 12000 // an image of about 6 MB: two parts
	c := newCluster(t, "--capacity", "12100")
	fillKeys(t, c, keys)
	srv := miniotest.Shared(t)
	bucket := srv.NewBucket(t, miniotest.BucketOptions{})
	s3px := newS3FaultProxy(t, srv.Endpoint)
	hsmpx := newTCPFaultProxy(t, c.addr)
	clean := s3Service(t, c, srv, bucket, srv.URL()) // checks what the trials left, with no proxy
	faulted := *clean
	faulted.config = clean.writeConfig(t, "faulted.yaml", fmt.Sprintf("s3://%s/hsm?endpoint=%s&region=us-east-1", bucket, s3px.URL), hsmpx.addr)
	timeout := []string{"--timeout", faultTimeout.String()}

	// An unfaulted backup through both proxies: how many bytes cross the
	// HSM's link for one.
	ref := faulted.create(t)
	backupBytes := hsmpx.moved.Load()
	ready := []string{ref}

	var st faultStats
	seen := map[string]bool{} // leftovers reported
	start := time.Now()
	for i := range faultBackups {
		f := hsmpx.randomFault(i, backupBytes)
		s3px.setRate(faultRate)
		t0 := time.Now()
		res := faulted.cliRes(t, append(timeout, "backup", "create", "--cluster", testCluster)...)
		st.took(time.Since(t0))
		s3px.setRate(0)
		fired := hsmpx.disarm()
		st.hsmFault(f.kind, fired)
		st.backups++
		what := fmt.Sprintf("backup %d (HSM: %s at byte %d, fired %t)", i, f.kind, f.at, fired)
		if res.Code == 0 {
			m := createdLine.FindStringSubmatch(res.Stdout)
			if m == nil {
				t.Fatalf("%s: exit 0 without a created line: %s", what, res)
			}
			if v := clean.cliRes(t, "backup", "verify", "--deep", m[1]); v.Code != 0 {
				st.partial++
				t.Errorf("%s: READY backup %s does not verify: %s", what, m[1], v)
			} else {
				st.backupsOK++
			}
			ready = append(ready, m[1])
		} else {
			st.backupsFailed++
			st.failure(t, what, res)
		}
		st.partial += clean.leftovers(t, what, srv, bucket, ready, seen)
	}

	// Restores of the newest backup, each into a new HSM behind a TCP
	// fault proxy; the first without faults, for the state a restore
	// gives and the bytes it moves.
	id := ready[len(ready)-1]
	op := filepath.Join(c.dir, "op")
	var want api.Health
	var restoreBytes int64
	for i := range faultRestores + 1 {
		target := c.newHSM(t, fmt.Sprintf("fault-target-%d", i), op, testFirmware)
		tpx := newTCPFaultProxy(t, target)
		c.claims[tpx.addr] = c.claims[target]
		before := c.health(t, target)
		args := append(timeout, c.restoreArgs(id, tpx.addr)...)
		if i == 0 {
			faulted.cli(t, args...)
			want, restoreBytes = c.health(t, target), tpx.moved.Load()
			if want.StateDigest == before.StateDigest || !want.Initialized {
				t.Fatalf("the unfaulted restore left %s as it was: %+v", target, want)
			}
			continue
		}
		f := tpx.randomFault(i-1, restoreBytes)
		s3px.setRate(faultRate)
		t0 := time.Now()
		res := faulted.cliRes(t, args...)
		st.took(time.Since(t0))
		s3px.setRate(0)
		fired := tpx.disarm()
		st.hsmFault(f.kind, fired)
		st.restores++
		after := c.health(t, target)
		what := fmt.Sprintf("restore %d (HSM: %s at byte %d, fired %t)", i, f.kind, f.at, fired)
		switch {
		case res.Code == 0 && after.StateDigest == want.StateDigest && after.KeyCount == want.KeyCount:
			st.restoresOK++
		case res.Code == 0:
			st.unverified++
			t.Errorf("%s: exit 0, the target holds %+v, a restore gives %+v", what, after, want)
		case after.StateDigest != before.StateDigest || after.Initialized != before.Initialized:
			st.unverified++
			t.Errorf("%s: refused (%s) but the target changed: %+v, was %+v", what, lastLine(res.Stderr), after, before)
		default:
			st.restoresRefused++
			st.failure(t, what, res)
		}
	}
	st.s3 = s3px.fired()
	for _, e := range st.errors {
		t.Logf("a failure said: %s", e)
	}
	t.Logf("%d trials in %v; the longest command took %v", st.backups+st.restores, time.Since(start).Round(time.Second), st.longest.Round(100*time.Millisecond))
	t.Logf("RELIABILITY faults-everywhere: S3 faults %s; HSM-link faults %s; backups attempted %d, succeeded and verified %d, failed cleanly %d, left partial %d; restores attempted %d, restored %d, refused %d, imported anything unverified %d; longest command %v",
		st.s3, st.hsmSummary(), st.backups, st.backupsOK, st.backupsFailed, st.partial,
		st.restores, st.restoresOK, st.restoresRefused, st.unverified, st.longest.Round(time.Second))
	if st.s3 == "none" {
		t.Error("no S3 request met a fault")
	}
}

// faultStats are TestFaultsEverywhere's counts.
type faultStats struct {
	backups, backupsOK, backupsFailed, partial        int
	restores, restoresOK, restoresRefused, unverified int
	hsm                                               map[string][2]int // kind: injected, fired
	s3                                                string
	errors                                            []string // distinct last lines of failures
	longest                                           time.Duration
}

func (s *faultStats) took(d time.Duration) { s.longest = max(s.longest, d) }

func (s *faultStats) hsmFault(kind string, fired bool) {
	if s.hsm == nil {
		s.hsm = map[string][2]int{}
	}
	n := s.hsm[kind]
	n[0]++
	if fired {
		n[1]++
	}
	s.hsm[kind] = n
}

func (s *faultStats) hsmSummary() string {
	var parts []string
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range s.hsm {
			if !yield(k) {
				return
			}
		}
	}) {
		parts = append(parts, fmt.Sprintf("%s %d/%d", k, s.hsm[k][1], s.hsm[k][0]))
	}
	return strings.Join(parts, ", ") + " (fired/armed)"
}

// failure records a failed command's last line, failing t if it reports
// an interruption.
func (s *faultStats) failure(t *testing.T, what string, res Result) {
	t.Helper()
	if res.Code == 130 {
		t.Errorf("%s: exit code 130, an interruption, though nobody interrupted it: %s", what, res)
	}
	if line := lastLine(res.Stderr); !slices.Contains(s.errors, line) {
		s.errors = append(s.errors, line)
	}
}

// leftovers counts what the store holds that is no part of a backup in
// ready and was not counted before (seen): objects under the backups'
// prefix of another id, and incomplete multipart uploads. It fails t for
// each, after what.
func (s *service) leftovers(t *testing.T, what string, srv *miniotest.Server, bucket string, ready []string, seen map[string]bool) int {
	t.Helper()
	var left []string
	prefix := "hsm/clusters/" + testCluster + "/backups/"
	for _, k := range objects(t, srv, bucket, prefix) {
		id, _, _ := strings.Cut(strings.TrimPrefix(k, prefix), "/")
		if !slices.Contains(ready, id) {
			left = append(left, "object "+k)
		}
	}
	for _, u := range incompleteUploads(t, srv, bucket) {
		left = append(left, "incomplete upload of "+u)
	}
	n := 0
	for _, l := range left {
		if !seen[l] {
			seen[l] = true
			t.Errorf("%s: %s left in the store", what, l)
			n++
		}
	}
	if listed := s.list(t); len(listed) != len(ready) {
		t.Errorf("%s: backup list shows %d backups, %d are READY", what, len(listed), len(ready))
		n++
	}
	return n
}

// tcpFault is one fault a tcpFaultProxy injects, once, when at bytes have
// crossed it (both ways, over all connections) since it was armed.
type tcpFault struct {
	kind  string        // "reset", "close", "stall", "slow" or "call"
	at    int64         // bytes
	stall time.Duration // for "stall": how long nothing crosses
	rate  int           // for "slow": bytes a second from then on
	call  func()        // for "call": run then (in its own goroutine)
}

// tcpFaultProxy forwards loopback TCP connections to target and injects
// its armed fault.
type tcpFaultProxy struct {
	addr, target string
	moved        atomic.Int64 // bytes both ways since arm

	mu     sync.Mutex
	f      *tcpFault
	fired  bool
	frozen time.Time // nothing crosses until then
	rate   int       // bytes a second; 0 is full speed
}

func newTCPFaultProxy(t *testing.T, target string) *tcpFaultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpFaultProxy{addr: ln.Addr().String(), target: target}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			cl, err := ln.Accept()
			if err != nil {
				return
			}
			sv, err := net.Dial("tcp", p.target)
			if err != nil {
				cl.Close()
				continue
			}
			pair := [2]*net.TCPConn{cl.(*net.TCPConn), sv.(*net.TCPConn)}
			wg.Go(func() { p.pipe(pair[1], pair[0], pair) })
			wg.Go(func() { p.pipe(pair[0], pair[1], pair) })
		}
	})
	return p
}

// randomFault arms the i-th of the kinds of fault in turn, at a random
// byte of the first n, and returns it.
func (p *tcpFaultProxy) randomFault(i int, n int64) tcpFault {
	kinds := []tcpFault{
		{kind: "reset"},
		{kind: "close"},
		{kind: "stall", stall: faultTimeout / 2},
		{kind: "stall", stall: 2 * faultTimeout},
		{kind: "slow", rate: 2 << 20},
		{kind: "reset"},
	}
	f := kinds[i%len(kinds)]
	f.at = 1 + rand.Int64N(n-1)
	p.arm(f)
	return f
}

func (p *tcpFaultProxy) arm(f tcpFault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.moved.Store(0)
	p.f, p.fired, p.frozen, p.rate = &f, false, time.Time{}, 0
}

// disarm clears the fault and reports whether it fired.
func (p *tcpFaultProxy) disarm() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	fired := p.fired
	p.f, p.frozen, p.rate = nil, time.Time{}, 0
	return fired
}

// pipe copies src to dst until either fails, the fault injected on the
// way.
func (p *tcpFaultProxy) pipe(dst, src *net.TCPConn, pair [2]*net.TCPConn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 16<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			total := p.moved.Add(int64(n))
			p.mu.Lock()
			var f *tcpFault
			if p.f != nil && !p.fired && total >= p.f.at {
				f, p.fired = p.f, true
				switch f.kind {
				case "stall":
					p.frozen = time.Now().Add(f.stall)
				case "slow":
					p.rate = f.rate
				}
			}
			wait, rate := time.Until(p.frozen), p.rate
			p.mu.Unlock()
			if f != nil {
				switch f.kind {
				case "reset":
					pair[0].SetLinger(0)
					pair[1].SetLinger(0)
					pair[0].Close()
					pair[1].Close()
					return
				case "close":
					pair[0].Close()
					pair[1].Close()
					return
				case "call":
					go f.call()
				}
			}
			if wait > 0 {
				time.Sleep(wait)
			}
			if rate > 0 {
				time.Sleep(time.Duration(n) * time.Second / time.Duration(rate))
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

// s3Faults are the faults s3FaultProxy injects.
var s3Faults = []string{"SlowDown", "InternalError", "reset", "truncate", "stall", "slow"}

// s3FaultProxy forwards HTTP requests to an S3 endpoint and fails a
// share of them, each with one of s3Faults at random.
type s3FaultProxy struct {
	URL string
	rp  *httputil.ReverseProxy

	mu     sync.Mutex
	rate   float64
	counts map[string]int // faults that took effect, by kind
}

func newS3FaultProxy(t *testing.T, endpoint string) *s3FaultProxy {
	t.Helper()
	target, err := url.Parse("http://" + endpoint)
	if err != nil {
		t.Fatal(err)
	}
	p := &s3FaultProxy{rp: httputil.NewSingleHostReverseProxy(target), counts: map[string]int{}} // keeps the signed Host
	p.rp.ErrorLog = log.New(io.Discard, "", 0)
	srv := httptest.NewServer(p)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

func (p *s3FaultProxy) setRate(r float64) {
	p.mu.Lock()
	p.rate = r
	p.mu.Unlock()
}

func (p *s3FaultProxy) count(kind string) {
	p.mu.Lock()
	p.counts[kind]++
	p.mu.Unlock()
}

// fired returns the faults that took effect so far, by kind.
func (p *s3FaultProxy) fired() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var parts []string
	total := 0
	for _, k := range s3Faults {
		parts = append(parts, fmt.Sprintf("%s %d", k, p.counts[k]))
		total += p.counts[k]
	}
	if total == 0 {
		return "none"
	}
	return fmt.Sprintf("%d (%s)", total, strings.Join(parts, ", "))
}

func (p *s3FaultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	kind := ""
	if rand.Float64() < p.rate {
		kind = s3Faults[rand.IntN(len(s3Faults))]
	}
	p.mu.Unlock()
	switch kind {
	case "SlowDown", "InternalError":
		p.count(kind)
		code, msg := http.StatusServiceUnavailable, "Please reduce your request rate."
		if kind == "InternalError" {
			code, msg = http.StatusInternalServerError, "We encountered an internal error. Please try again."
		}
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(code)
		fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message><Resource>%s</Resource></Error>`,
			kind, msg, r.URL.Path)
	case "reset":
		p.count(kind)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	case "stall":
		p.count(kind)
		time.Sleep(time.Duration(1+rand.IntN(4)) * time.Second)
		p.rp.ServeHTTP(w, r)
	case "truncate":
		p.rp.ServeHTTP(&truncatingWriter{ResponseWriter: w, left: -1, fired: func() { p.count(kind) }}, r)
	case "slow":
		p.count(kind)
		p.rp.ServeHTTP(&slowWriter{ResponseWriter: w, rate: 2 << 20}, r)
	default:
		p.rp.ServeHTTP(w, r)
	}
}

// truncatingWriter passes on a random part of a response's body (of its
// Content-Length), then aborts the connection: a response cut short.
type truncatingWriter struct {
	http.ResponseWriter
	left  int64 // bytes still to pass on; -1 until the first Write
	fired func()
}

func (w *truncatingWriter) Write(b []byte) (int, error) {
	if w.left < 0 {
		n, err := strconv.ParseInt(w.Header().Get("Content-Length"), 10, 64)
		if err != nil || n <= 0 {
			n = int64(len(b))
		}
		w.left = rand.Int64N(n)
	}
	if int64(len(b)) <= w.left {
		w.left -= int64(len(b))
		return w.ResponseWriter.Write(b)
	}
	w.ResponseWriter.Write(b[:w.left])
	http.NewResponseController(w.ResponseWriter).Flush()
	w.fired()
	panic(http.ErrAbortHandler)
}

func (w *truncatingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// slowWriter passes a response's body on at rate bytes a second.
type slowWriter struct {
	http.ResponseWriter
	rate int
}

func (w *slowWriter) Write(b []byte) (int, error) {
	time.Sleep(time.Duration(len(b)) * time.Second / time.Duration(w.rate))
	return w.ResponseWriter.Write(b)
}

func (w *slowWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
