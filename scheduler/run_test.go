package scheduler

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/backup/backuptest"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// fleet is a set of clusters, one software HSM each, served in-process,
// whose backups go to one repo: real backups, real manifests.
type fleet struct {
	repo    backup.Repo
	kr      *wrap.Keyring
	pub     ed25519.PublicKey
	priv    ed25519.PrivateKey
	members map[string]*client.Client
}

func newFleet(t testing.TB, st store.Store, ids ...string) *fleet {
	t.Helper()
	kr, pub, priv := backuptest.Keys(t)
	f := &fleet{repo: backup.Repo{Store: st}, kr: kr, pub: pub, priv: priv, members: map[string]*client.Client{}}
	e := hsmtest.NewEnv(t)
	for _, id := range ids {
		cfg := e.InitCluster(t, e.Serve(t, nil), id, "admin", "correct horse battery")
		co, err := client.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(co.Close)
		if _, err := co.Login(context.Background(), "admin", "correct horse battery"); err != nil {
			t.Fatal(err)
		}
		f.members[id] = co
	}
	return f
}

// jobs runs real backups of the fleet's members; its hooks let a test
// make a backup panic, block or fail.
type jobs struct {
	f       *fleet
	calls   atomic.Int32
	before  func(ctx context.Context, cluster string, n int32) error // may panic
	drill   func(ctx context.Context, cluster string) (DrillResult, error)
	commit  func(ctx context.Context, n int32) // runs before the lease's commit check
	mu      sync.Mutex
	maintns map[string]int
}

func (j *jobs) Backup(ctx context.Context, cluster string, commit func(context.Context) error) (BackupResult, error) {
	n := j.calls.Add(1)
	if j.before != nil {
		if err := j.before(ctx, cluster, n); err != nil {
			return BackupResult{}, err
		}
	}
	if j.commit != nil {
		leaseCommit := commit
		commit = func(ctx context.Context) error { j.commit(ctx, n); return leaseCommit(ctx) }
	}
	m, err := backup.Create(ctx, j.f.members[cluster], j.f.repo, backup.CreateOptions{
		ClusterID: cluster, Recipients: []wrap.Recipient{j.f.kr}, SigningKey: j.f.priv, BeforeCommit: commit})
	if err != nil {
		return BackupResult{}, err
	}
	return BackupResult{BackupID: m.ID, Bytes: m.ObjectSize}, nil
}

func (j *jobs) Maintain(ctx context.Context, cluster string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.maintns == nil {
		j.maintns = map[string]int{}
	}
	j.maintns[cluster]++
	return nil
}

func (j *jobs) Drill(ctx context.Context, cluster string) (DrillResult, error) {
	if j.drill == nil {
		return DrillResult{}, errors.New("no drill")
	}
	return j.drill(ctx, cluster)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func schedulerFor(t *testing.T, f *fleet, j Jobs, holder, spec string, s Settings) *Scheduler {
	t.Helper()
	var cs []Cluster
	for id := range f.members {
		cs = append(cs, Cluster{ID: id, Backup: mustParse(t, spec)})
	}
	sc, err := New(Config{Clusters: cs, Settings: s, Repo: f.repo, PublicKey: f.pub, SigningKey: f.priv, Jobs: j, Holder: holder, Log: testLogger(t).With("replica", holder)})
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

// quiet is a schedule whose last slot is long past and whose next one is
// not near: a run starts with one catch-up and no slot fires during the
// test (an hourly one could, at the top of the hour).
const quiet = "0 0 1 1 *"

var fast = Settings{Concurrency: 2, Jitter: 0, LeaseDuration: 3 * time.Second, DrainTimeout: 10 * time.Second}

// slotsOf maps every READY backup of the repo to its slot, per cluster.
func slotsOf(t *testing.T, f *fleet, spec string) map[string]map[time.Time]int {
	t.Helper()
	ms, err := backup.List(context.Background(), f.repo, backup.Filter{State: backup.StateReady})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[time.Time]int{}
	for _, m := range ms {
		if out[m.ClusterID] == nil {
			out[m.ClusterID] = map[time.Time]int{}
		}
		out[m.ClusterID][Last(mustParse(t, spec), m.Created).UTC()]++
	}
	return out
}

// TestReplicasTakeEachSlotOnce: three replicas share four clusters on a
// two-second schedule: every slot of every cluster is backed up exactly
// once, with no slot missed between the first and the last.
func TestReplicasTakeEachSlotOnce(t *testing.T) {
	const spec = "*/2 * * * * *"
	f := newFleet(t, backuptest.FileStore(t), "c1", "c2", "c3", "c4")
	j := &jobs{f: f}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range 3 {
		sc := schedulerFor(t, f, j, fmt.Sprintf("r%d", i), spec, fast)
		wg.Add(1)
		go func() { defer wg.Done(); sc.Run(ctx) }()
	}
	time.Sleep(7 * time.Second)
	cancel()
	wg.Wait()
	for id := range f.members {
		slots := slotsOf(t, f, spec)[id]
		if len(slots) < 3 {
			t.Errorf("%s: %d slots backed up in 7 s of a 2 s schedule", id, len(slots))
		}
		var first, last time.Time
		for s, n := range slots {
			if n != 1 {
				t.Errorf("%s: slot %s backed up %d times", id, s.Format(time.TimeOnly), n)
			}
			if first.IsZero() || s.Before(first) {
				first = s
			}
			if s.After(last) {
				last = s
			}
		}
		for s := first; !s.After(last); s = s.Add(2 * time.Second) {
			if slots[s] == 0 {
				t.Errorf("%s: slot %s missed", id, s.Format(time.TimeOnly))
			}
		}
	}
	if n := int(j.calls.Load()); n != len(slotsOf(t, f, spec)["c1"])+len(slotsOf(t, f, spec)["c2"])+len(slotsOf(t, f, spec)["c3"])+len(slotsOf(t, f, spec)["c4"]) {
		t.Errorf("%d backup runs for fewer slots", n)
	}
}

// TestLongBackupNextSlot: a backup that outlasts the next slot's start
// (robfig skips that slot's run as still running) is followed at once by
// a backup for the slot that began meanwhile: no slot goes without one.
func TestLongBackupNextSlot(t *testing.T) {
	const spec = "*/2 * * * * *"
	f := newFleet(t, backuptest.FileStore(t), "c1")
	// The first backup lasts until just after the slot following the one
	// it started in: measured from its start, not from its commit, so a
	// slow machine does not stretch it over two slots (which the
	// scheduler rightly folds into one backup).
	var started time.Time
	j := &jobs{f: f, before: func(_ context.Context, _ string, n int32) error {
		if n == 1 {
			started = time.Now()
		}
		return nil
	}, commit: func(ctx context.Context, n int32) {
		if n == 1 {
			select {
			case <-time.After(time.Until(Next(mustParse(t, spec), started).Add(500 * time.Millisecond))):
			case <-ctx.Done():
			}
		}
	}}
	sc := schedulerFor(t, f, j, "r", spec, fast)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
	defer cancel()
	sc.Run(ctx)
	slots := slotsOf(t, f, spec)["c1"]
	var first, last time.Time
	for s := range slots {
		if first.IsZero() || s.Before(first) {
			first = s
		}
		if s.After(last) {
			last = s
		}
	}
	if len(slots) < 3 {
		t.Fatalf("%d slots backed up in 6 s", len(slots))
	}
	for s := first; !s.After(last); s = s.Add(2 * time.Second) {
		if slots[s] != 1 {
			t.Errorf("slot %s: %d backups", s.Format(time.TimeOnly), slots[s])
		}
	}
}

// TestFailuresRetriedInSlot: a failing backup is retried within its slot
// with backoff (1 s, then 2 s), and each failure is recorded in the run
// record until the backup succeeds.
func TestFailuresRetriedInSlot(t *testing.T) {
	f := newFleet(t, backuptest.FileStore(t), "c1")
	var times []time.Time
	j := &jobs{f: f, before: func(_ context.Context, _ string, n int32) error {
		times = append(times, time.Now())
		if n <= 2 {
			return fmt.Errorf("injected failure %d", n)
		}
		return nil
	}}
	sc := schedulerFor(t, f, j, "r", quiet, fast)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sc.Run(ctx)
	if len(times) != 3 {
		t.Fatalf("%d attempts, want 3", len(times))
	}
	if d1, d2 := times[1].Sub(times[0]), times[2].Sub(times[1]); d1 < time.Second || d2 < 2*time.Second || d2 > 3*time.Second {
		t.Errorf("retries after %s and %s, want 1 s then 2 s", d1, d2)
	}
	if ms, _ := backup.List(context.Background(), f.repo, backup.Filter{}); len(ms) != 1 {
		t.Errorf("%d backups, want 1", len(ms))
	}
	rec, err := readRun(context.Background(), f.repo.Store, "", "c1", KindBackup, f.pub)
	if err != nil || rec == nil || !rec.OK || rec.LastSuccess == nil || len(rec.Failures) != 2 ||
		!strings.Contains(rec.Failures[0].Error, "injected failure 2") {
		t.Fatalf("run record %+v, %v", rec, err)
	}
}

// TestPanickingBackupRunsAgain: a backup that panics fails its run like
// an error (its lease released, its concurrency token given back) and
// the cluster's next slots run.
func TestPanickingBackupRunsAgain(t *testing.T) {
	const spec = "* * * * * *"
	f := newFleet(t, backuptest.FileStore(t), "c1")
	j := &jobs{f: f, before: func(_ context.Context, _ string, n int32) error {
		if n == 1 {
			panic("injected")
		}
		return nil
	}}
	sc := schedulerFor(t, f, j, "r", spec, fast)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	sc.Run(ctx)
	if n := j.calls.Load(); n < 2 {
		t.Fatalf("%d backup runs after a panic", n)
	}
	if len(slotsOf(t, f, spec)["c1"]) == 0 {
		t.Fatal("no backup after the panic")
	}
	// The panicking run's lease was released, not left to expire.
	if n := j.calls.Load(); n < 3 {
		t.Errorf("%d backup runs in 4 s of a 1 s schedule: the panic held the slot", n)
	}
}

// TestRunnerRecoversPanics: robfig's runner as the scheduler builds it
// runs a job that panicked again at its next slot (with the chain in the
// other order, robfig v3.0.1 never runs it again), and never runs two of
// its runs at once.
func TestRunnerRecoversPanics(t *testing.T) {
	c := newRunner(testLogger(t))
	var runs, running, overlap atomic.Int32
	c.Schedule(mustParse(t, "* * * * * *").s, cronFunc(func() {
		if running.Add(1) > 1 {
			overlap.Add(1)
		}
		defer running.Add(-1)
		if runs.Add(1) == 1 {
			panic("injected")
		}
		time.Sleep(1500 * time.Millisecond) // spans a slot: that one is skipped
	}))
	c.Start()
	time.Sleep(4500 * time.Millisecond)
	<-c.Stop().Done()
	if n := runs.Load(); n < 2 {
		t.Errorf("%d runs in 4.5 s of a job that panicked at its first", n)
	}
	if overlap.Load() != 0 {
		t.Error("two runs of one job at once")
	}
}

// TestCatchUpOnce: a scheduler started long after its slots (no backup
// yet, a yearly schedule) takes one catch-up backup, not one per slot.
func TestCatchUpOnce(t *testing.T) {
	f := newFleet(t, backuptest.FileStore(t), "c1")
	j := &jobs{f: f}
	sc := schedulerFor(t, f, j, "r", quiet, fast)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	sc.Run(ctx)
	ms, err := backup.List(context.Background(), f.repo, backup.Filter{})
	if err != nil || len(ms) != 1 {
		t.Fatalf("%d backups after a start past the slot, want 1 (%v)", len(ms), err)
	}
	if j.maintns["c1"] != 1 {
		t.Errorf("maintenance ran %d times after one backup", j.maintns["c1"])
	}
}

// TestDrainCancels: a stopping scheduler waits for its runs for the
// drain timeout, then cancels them: nothing is listed, the failure is
// recorded, and the slot's lease is released for another replica.
func TestDrainCancels(t *testing.T) {
	f := newFleet(t, backuptest.FileStore(t), "c1")
	started := make(chan struct{})
	j := &jobs{f: f, before: func(ctx context.Context, _ string, _ int32) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}}
	s := fast
	s.DrainTimeout = 300 * time.Millisecond
	sc := schedulerFor(t, f, j, "r", quiet, s)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() { errc <- sc.Run(ctx) }()
	<-started
	cancel()
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "drain timeout") {
		t.Fatalf("Run = %v, want the drain timeout", err)
	}
	if ms, _ := backup.List(context.Background(), f.repo, backup.Filter{}); len(ms) != 0 {
		t.Fatalf("%d backups listed after a cancelled run", len(ms))
	}
	rec, err := readRun(context.Background(), f.repo.Store, "", "c1", KindBackup, f.pub)
	if err != nil || rec == nil || rec.OK || !strings.Contains(rec.Error, "canceled") {
		t.Fatalf("run record = %+v, %v", rec, err)
	}
	other := NewLessor(f.repo.Store, "", "other", fast.LeaseDuration)
	if _, err := other.Acquire(context.Background(), "backup/c1", rec.Slot); err != nil {
		t.Fatalf("the cancelled slot's lease is not free: %v", err)
	}
}

// TestStatusAndMetrics: a drill that fails turns its cluster red on the
// status page and in the metrics, parsed by Prometheus' own parser; every
// cluster has its row.
func TestStatusAndMetrics(t *testing.T) {
	f := newFleet(t, backuptest.FileStore(t), "good", "bad")
	j := &jobs{f: f, drill: func(_ context.Context, cluster string) (DrillResult, error) {
		if cluster == "bad" {
			return DrillResult{BackupID: "x", Restore: time.Second}, errors.New("inventory mismatch: key 7 missing")
		}
		return DrillResult{BackupID: "y", Restore: 2 * time.Second, Users: 1}, nil
	}}
	m := NewMetrics("test")
	var cs []Cluster
	for _, id := range []string{"bad", "good"} {
		cs = append(cs, Cluster{ID: id, Backup: mustParse(t, quiet), Drill: mustParse(t, quiet)})
	}
	sc, err := New(Config{Clusters: cs, Settings: fast, Repo: f.repo, PublicKey: f.pub, SigningKey: f.priv, Jobs: j, Holder: "r", Log: testLogger(t), Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error)
	go func() { stopped <- sc.Run(ctx) }()
	var st []ClusterStatus
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		sc.Refresh(context.Background())
		st, _, err = sc.Status()
		done := err == nil && len(st) == 2
		for _, s := range st {
			done = done && s.NewestReady != nil && s.Drill != nil && s.Drill.Last != nil
		}
		if done {
			break
		}
	}
	if err != nil || len(st) != 2 {
		t.Fatalf("Status = %v, %v", st, err)
	}
	for _, s := range st {
		want := Green
		if s.Cluster == "bad" {
			want = Red
		}
		if s.Colour != want || s.NewestReady == nil || s.Drill == nil || s.Drill.Last == nil {
			t.Errorf("%s: %+v, want %s with a backup and a drill", s.Cluster, s, want)
		}
	}

	srv := httptest.NewServer(sc.Handler(m))
	defer srv.Close()
	page := get(t, srv.URL+"/")
	for _, want := range []string{`<tr class="green" id="cluster-good">`, `<tr class="red" id="cluster-bad">`,
		"inventory mismatch: key 7 missing", `name="viewport"`, `http-equiv="refresh"`} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if strings.Contains(page, "http://") || strings.Contains(page, "https://") {
		t.Error("status page refers to external assets")
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(get(t, srv.URL+"/metrics")))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	value := func(name, cluster string) float64 {
		for _, mt := range fams[name].GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "cluster" && l.GetValue() == cluster {
					if g := mt.GetGauge(); g != nil {
						return g.GetValue()
					}
					return mt.GetCounter().GetValue()
				}
			}
		}
		t.Errorf("%s{cluster=%q} missing", name, cluster)
		return -1
	}
	if value("hsmbackup_cluster_ok", "bad") != 0 || value("hsmbackup_cluster_ok", "good") != 1 {
		t.Error("hsmbackup_cluster_ok does not match the colours")
	}
	if value("hsmbackup_drill_last_result", "bad") != 0 || value("hsmbackup_drill_last_result", "good") != 1 {
		t.Error("hsmbackup_drill_last_result does not match the drills")
	}
	if v := value("hsmbackup_last_success_timestamp_seconds", "good"); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last success %v", v)
	}
	for _, name := range []string{"hsmbackup_backups_total", "hsmbackup_backup_duration_seconds", "hsmbackup_drill_restore_seconds", "hsmbackup_lease_held", "hsmbackup_schedule_period_seconds"} {
		if fams[name] == nil {
			t.Errorf("%s missing", name)
		}
	}
	if get(t, srv.URL+"/livez") != "ok\n" || get(t, srv.URL+"/readyz") != "ok\n" {
		t.Error("livez/readyz not ok")
	}
	cancel()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if got := get(t, srv.URL+"/readyz"); got != "stopping\n" {
		t.Errorf("readyz of a stopped scheduler = %q", got)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestForgedDrillRecord: a drill run record dated far ahead (a clock
// stepped back when it was written) does not hold the cluster's drills
// off.
func TestForgedDrillRecord(t *testing.T) {
	f := newFleet(t, backuptest.FileStore(t), "c1")
	if _, err := backup.Create(context.Background(), f.members["c1"], f.repo, backup.CreateOptions{
		ClusterID: "c1", Recipients: []wrap.Recipient{f.kr}, SigningKey: f.priv}); err != nil {
		t.Fatal(err) // a backup to drill
	}
	ahead := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := writeRun(context.Background(), f.repo.Store, "", &RunRecord{Cluster: "c1", Kind: KindDrill, Slot: ahead, Finished: ahead, OK: true}, f.priv); err != nil {
		t.Fatal(err)
	}
	var drills atomic.Int32
	j := &jobs{f: f, drill: func(context.Context, string) (DrillResult, error) {
		drills.Add(1)
		return DrillResult{BackupID: "b"}, nil
	}}
	sc, err := New(Config{Clusters: []Cluster{{ID: "c1", Drill: mustParse(t, quiet)}}, Settings: fast, Repo: f.repo,
		PublicKey: f.pub, SigningKey: f.priv, Jobs: j, Holder: "r", Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	sc.Run(ctx)
	if n := drills.Load(); n != 1 {
		t.Fatalf("%d drills after a forged record, want the 1 due", n)
	}
}

// TestEditedDrillRecord: a failed drill's record edited in the store to
// say it passed does not verify: the cluster is red, its last drill
// unknown, and the next drill is due at once.
func TestEditedDrillRecord(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t, backuptest.FileStore(t), "c1")
	slot := time.Now().UTC().Truncate(time.Hour)
	rec := &RunRecord{Cluster: "c1", Kind: KindDrill, Slot: slot, Finished: slot, OK: false, Error: "inventory mismatch"}
	if err := writeRun(ctx, f.repo.Store, "", rec, f.priv); err != nil {
		t.Fatal(err)
	}
	b := readAll(t, f.repo.Store, runKey("", "c1", KindDrill))
	edited := strings.Replace(string(b), `"ok":false`, `"ok":true`, 1)
	edited = strings.Replace(edited, `"error":"inventory mismatch",`, "", 1)
	if edited == string(b) {
		t.Fatal("the record was not edited")
	}
	if err := f.repo.Store.Put(ctx, runKey("", "c1", KindDrill), strings.NewReader(edited), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	cs := []Cluster{{ID: "c1", Drill: mustParse(t, quiet)}}
	st, err := Collect(ctx, f.repo, f.pub, cs, fast, time.Now())
	if err != nil || len(st) != 1 {
		t.Fatal(err)
	}
	if st[0].Colour != Red || !strings.Contains(strings.Join(st[0].Problems, "; "), "does not verify") {
		t.Errorf("an edited drill record: %s %q", st[0].Colour, st[0].Problems)
	}
	sc, err := New(Config{Clusters: cs, Settings: fast, Repo: f.repo, PublicKey: f.pub, SigningKey: f.priv, Jobs: &jobs{f: f},
		Holder: "r", Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if last, err := sc.lastRun(ctx, sc.cfg, KindDrill, "c1"); err != nil || !last.IsZero() {
		t.Errorf("lastRun of an edited record = %s, %v; want none (a drill due)", last, err)
	}
}

type cronFunc func()

func (f cronFunc) Run() { f() }

// TestDrillWaitsForFirstBackup: on a new fleet the drill, due at once,
// does not run before the cluster's first backup (it would fail with
// nothing to restore); the first backup starts it.
func TestDrillWaitsForFirstBackup(t *testing.T) {
	f := newFleet(t, backuptest.FileStore(t), "c1")
	var drills, early atomic.Int32
	j := &jobs{f: f, drill: func(ctx context.Context, _ string) (DrillResult, error) {
		drills.Add(1)
		if ms, _ := backup.List(ctx, f.repo, backup.Filter{}); len(ms) == 0 {
			early.Add(1)
		}
		return DrillResult{BackupID: "b"}, nil
	}, before: func(context.Context, string, int32) error {
		time.Sleep(300 * time.Millisecond) // the drill's check runs first
		return nil
	}}
	sc, err := New(Config{Clusters: []Cluster{{ID: "c1", Backup: mustParse(t, quiet), Drill: mustParse(t, quiet)}},
		Settings: fast, Repo: f.repo, PublicKey: f.pub, SigningKey: f.priv, Jobs: j, Holder: "r", Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	sc.Run(ctx)
	if drills.Load() != 1 || early.Load() != 0 {
		t.Fatalf("%d drills, %d before any backup; want 1, after the first backup", drills.Load(), early.Load())
	}
}
