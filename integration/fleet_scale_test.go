package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/server"
)

// BenchmarkFleetScale: one `scheduler run` process backs up 100 and then
// 1,000 small clusters (10 and 50 with -short), all due at once, each a
// real HSM on loopback TLS (served in this test process, so that the
// scheduler's memory is its own), to MinIO. It reports the wall time from
// the process's start, the scheduler process's peak RSS, the TLS
// connections each cluster's HSM accepted per backup, and the goroutines
// and open files the scheduler has while the first runs are under way and
// once every cluster is backed up. It fails if a cluster's backup took
// more than one connection, or if the goroutines or files left once idle
// grow with the clusters (beyond those of the smallest fleet).
func BenchmarkFleetScale(b *testing.B) {
	sizes := []int{100, 1000}
	if testing.Short() {
		sizes = []int{10, 50}
	}
	var smallest *replicaMetrics // idle, after the smallest fleet's round
	for _, n := range sizes {
		b.Run(fmt.Sprintf("%d-clusters", n), func(b *testing.B) {
			hsms := &countingHSMs{}
			f := newFleetEnvServed(b, n, "0 * * * *", hsms.serve) // hourly: every cluster is due at start
			f.cfg["scheduler"] = map[string]any{"jitter": "0s"}   // the default concurrency (4)
			for i := 0; b.Loop(); i++ {
				f.cfg["store"] = fmt.Sprintf("s3://%s/round-%d?endpoint=%s&region=us-east-1", f.bucket, i, f.srv.URL())
				f.writeConfig(b)
				accepted := hsms.accepted.Load()
				start := time.Now()
				r := f.startReplica(b, fmt.Sprintf("r%d", i))
				var peak atomic.Int64
				done := make(chan struct{})
				go watchPeak(r.cmd.Process.Pid, &peak, done)
				during := r.waitMetrics(b, func(m replicaMetrics) bool { return m.goroutines > 0 })
				after := r.waitMetrics(b, func(m replicaMetrics) bool { return m.successes >= n || m.failures > 0 })
				wall := time.Since(start)
				close(done)
				if after.failures > 0 {
					b.Fatalf("%d of %d backups failed:\n%s", after.failures, n, r.logs)
				}
				// Idle again: the last run's connections closed, nothing
				// of any cluster's run left but its cron entry.
				time.Sleep(2 * time.Second)
				idle := r.waitMetrics(b, func(replicaMetrics) bool { return true })
				if code := r.stop(b, syscall.SIGTERM, 30*time.Second); code != 0 {
					b.Fatalf("scheduler exit %d after SIGTERM:\n%s", code, r.logs)
				}
				conns := float64(hsms.accepted.Load()-accepted) / float64(n)
				b.Logf("%d clusters: %s, peak RSS %.1f MiB, %.2f TLS connections per backup, goroutines %d → %d, open files %d → %d",
					n, wall.Round(time.Millisecond), float64(peak.Load())/(1<<20), conns, during.goroutines, idle.goroutines, during.fds, idle.fds)
				if conns > 1 {
					b.Errorf("each backup took %.2f TLS connections to its HSM, want 1: they are not reused within a run", conns)
				}
				if smallest == nil {
					smallest = &idle
				} else {
					if grown := idle.goroutines - smallest.goroutines; grown > 8 {
						b.Errorf("idle after the round: %d goroutines more than after a smaller fleet's: runs left some behind", grown)
					}
					if grown := idle.fds - smallest.fds; grown > 8 {
						b.Errorf("idle after the round: %d open files more than after a smaller fleet's: runs left connections open", grown)
					}
				}
				b.ReportMetric(wall.Seconds(), "wall-s")
				b.ReportMetric(float64(n)/wall.Seconds(), "clusters/s")
				b.ReportMetric(float64(peak.Load())/(1<<20), "peak-RSS-MiB")
				b.ReportMetric(conns, "TLS-conns/backup")
				b.ReportMetric(float64(idle.goroutines), "goroutines-after")
				b.ReportMetric(float64(idle.fds), "fds-after")
			}
		})
	}
}

// countingHSMs serves HSMs in this process and counts the connections
// they accept.
type countingHSMs struct {
	accepted atomic.Int64
}

func (h *countingHSMs) serve(tb testing.TB, deviceDir string) string {
	tb.Helper()
	d, err := device.Open(deviceDir, device.Options{PasswordIterations: TestPasswordIterations})
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := server.New(server.Config{Device: d})
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ctx, countingListener{ln, &h.accepted}) }) //nolint:errcheck // ends with the test
	tb.Cleanup(func() { cancel(); wg.Wait(); d.Close() })
	return ln.Addr().String()
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// replicaMetrics is what a replica's /metrics says of its runs and of
// itself.
type replicaMetrics struct {
	successes, failures int
	goroutines, fds     int
}

// waitMetrics polls r's /metrics until ok holds, for at most ten minutes.
func (r *replica) waitMetrics(tb testing.TB, ok func(replicaMetrics) bool) replicaMetrics {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Minute)
	for {
		if m, err := r.metrics(); err == nil && ok(m) {
			return m
		}
		select {
		case <-r.exited:
			tb.Fatalf("replica %s exited:\n%s", r.name, r.logs)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("replica %s: metrics not as awaited after 10 minutes", r.name)
		}
	}
}

func (r *replica) metrics() (replicaMetrics, error) {
	var m replicaMetrics
	resp, err := http.Get("http://" + r.listen + "/metrics")
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return m, err
	}
	for _, s := range fams["hsmbackup_backups_total"].GetMetric() {
		for _, l := range s.GetLabel() {
			if l.GetName() == "result" && l.GetValue() == "success" {
				m.successes += int(s.GetCounter().GetValue())
			} else if l.GetName() == "result" && l.GetValue() == "failure" {
				m.failures += int(s.GetCounter().GetValue())
			}
		}
	}
	if g := fams["go_goroutines"].GetMetric(); len(g) == 1 {
		m.goroutines = int(g[0].GetGauge().GetValue())
	}
	if g := fams["process_open_fds"].GetMetric(); len(g) == 1 {
		m.fds = int(g[0].GetGauge().GetValue())
	}
	return m, nil
}
