package scheduler

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/backup/backuptest"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// copyJobs backs a cluster up by storing a copy of one real backup's
// image object and a manifest re-signed for the cluster: the store's side
// of a small backup (two objects, the manifest last and create-only),
// without an HSM per cluster. It measures the scheduler, not the HSMs.
type copyJobs struct {
	t     *fleet
	tmpl  *backup.Manifest
	image []byte
	runs  atomic.Int32
}

func (j *copyJobs) Backup(ctx context.Context, cluster string, commit func(context.Context) error) (BackupResult, error) {
	defer j.runs.Add(1)
	m := *j.tmpl
	m.ClusterID = cluster
	m.Created = time.Now().UTC().Round(0)
	var suffix [6]byte
	rand.Read(suffix[:])
	const b32 = "abcdefghijklmnopqrstuvwxyz234567"
	id := []byte("backup-" + m.Created.Format("20060102T150405Z") + "-")
	for i := range 10 {
		id = append(id, b32[int(suffix[i%6]>>uint(i%3))%32])
	}
	m.ID = string(id)
	m.Inventory = nil
	repo := j.t.repo
	m.Location = store.KeyPrefix(repo.Store) + repo.ObjectKey(cluster, m.ID, "") // where it is written, as backup.Create binds it
	if err := repo.Store.Put(ctx, repo.ObjectKey(cluster, m.ID, backup.ImageObject), bytes.NewReader(j.image), store.PutOptions{CreateOnly: true}); err != nil {
		return BackupResult{}, err
	}
	if err := commit(ctx); err != nil {
		return BackupResult{}, err
	}
	if err := m.Sign(j.t.priv); err != nil {
		return BackupResult{}, err
	}
	raw, err := m.Marshal()
	if err != nil {
		return BackupResult{}, err
	}
	if err := repo.Store.Put(ctx, repo.ObjectKey(cluster, m.ID, backup.ManifestObject), bytes.NewReader(raw), store.PutOptions{CreateOnly: true}); err != nil {
		return BackupResult{}, err
	}
	return BackupResult{BackupID: m.ID, Bytes: int64(len(j.image))}, nil
}

func (j *copyJobs) Maintain(ctx context.Context, cluster string) error {
	_, err := backup.Prune(ctx, j.t.repo, backup.PruneOptions{
		LifecycleOptions: backup.LifecycleOptions{SigningKey: j.t.priv}, ClusterID: cluster,
		Policy: func(string) backup.Policy { return backup.Policy{RetentionDays: 30, KeepLast: 3} },
	})
	return err
}

func (j *copyJobs) Drill(context.Context, string) (DrillResult, error) { return DrillResult{}, nil }

// BenchmarkFleetDueAtOnce: one replica, N small clusters all due at once
// (an hourly schedule, no backup yet), default concurrency, no jitter:
// the wall time until every cluster is backed up, and the peak memory
// (the process's peak RSS, reset before each run, and the Go runtime's
// peak). Memory should grow far less than the number of clusters.
func BenchmarkFleetDueAtOnce(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("clusters=%d", n), func(b *testing.B) {
			for range b.N {
				benchFleet(b, n)
			}
		})
	}
}

func benchFleet(b *testing.B, n int) {
	b.StopTimer()
	st := backuptest.FileStore(b)
	j := templateJobs(b, st)
	cs := make([]Cluster, n)
	for i := range cs {
		cs[i] = Cluster{ID: fmt.Sprintf("c%04d", i), Backup: mustParse(b, "@hourly")}
	}
	s := DefaultSettings
	s.Jitter = 0
	sc, err := New(Config{Clusters: cs, Settings: s, Repo: j.t.repo, PublicKey: j.t.pub, Jobs: j, Holder: "bench",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: NewMetrics("bench")})
	if err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	goroutines := runtime.NumGoroutine()
	resetPeakRSS()
	stopPeak := samplePeak()
	start := time.Now()
	b.StartTimer()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- sc.Run(ctx) }()
	for int(j.runs.Load()) < n {
		time.Sleep(5 * time.Millisecond)
	}
	wall := time.Since(start)
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	goPeak := stopPeak()
	// Every cluster's goroutines end with the run: none is left per cluster.
	left := runtime.NumGoroutine()
	for deadline := time.Now().Add(2 * time.Second); left > goroutines+8 && time.Now().Before(deadline); left = runtime.NumGoroutine() {
		time.Sleep(10 * time.Millisecond)
	}
	if left > goroutines+8 {
		b.Fatalf("%d goroutines after the run of %d clusters, %d before", left, n, goroutines)
	}
	if ms, err := backup.List(context.Background(), j.t.repo, backup.Filter{}); err != nil || len(ms) != n {
		b.Fatalf("%d backups of %d clusters (%v)", len(ms), n, err)
	}
	b.ReportMetric(wall.Seconds(), "wall-s")
	b.ReportMetric(float64(n)/wall.Seconds(), "clusters/s")
	b.ReportMetric(float64(goPeak)/(1<<20), "peak-go-MiB")
	b.ReportMetric(float64(left-goroutines), "goroutines-left")
	if rss := peakRSS(); rss > 0 {
		b.ReportMetric(float64(rss)/(1<<20), "peak-rss-MiB")
	}
}

// templateJobs takes one real backup of a real (in-process) HSM and
// returns jobs that copy it.
func templateJobs(b *testing.B, st store.Store) *copyJobs {
	b.Helper()
	f := newFleet(b, st, "template")
	m, err := backup.Create(context.Background(), f.members["template"], f.repo, backup.CreateOptions{
		ClusterID: "template", Recipients: []wrap.Recipient{f.kr}, SigningKey: f.priv})
	if err != nil {
		b.Fatal(err)
	}
	rc, err := st.Get(context.Background(), f.repo.ObjectKey("template", m.ID, backup.ImageObject))
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	image, err := io.ReadAll(rc)
	if err != nil {
		b.Fatal(err)
	}
	// The template's own backup leaves the store, so that only the
	// clusters' backups are counted.
	for _, o := range []string{backup.ImageObject, backup.ManifestObject} {
		if err := st.Delete(context.Background(), f.repo.ObjectKey("template", m.ID, o)); err != nil {
			b.Fatal(err)
		}
	}
	return &copyJobs{t: f, tmpl: m, image: image}
}

// samplePeak samples the Go runtime's mapped memory until the returned
// function is called, which returns the peak.
func samplePeak() func() uint64 {
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}}
		for {
			metrics.Read(s)
			if v := s[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	return func() uint64 { close(stop); <-done; return peak.Load() }
}

// resetPeakRSS resets the kernel's record of the process's peak RSS
// (Linux: clear_refs 5), so that peakRSS measures from now.
func resetPeakRSS() { os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) } //nolint:errcheck // Linux only

// peakRSS is the process's peak RSS in bytes (VmHWM); 0 where unknown.
func peakRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}
