package scheduler

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/hsmbackup/hsmbackup/backup"
)

// Cluster is one cluster the scheduler runs jobs for.
type Cluster struct {
	ID string
	// Backup is when it is backed up; the zero Schedule for never.
	Backup Schedule
	// Drill is when its newest backup is restored into its scratch HSM
	// and checked; the zero Schedule for never.
	Drill Schedule
}

// Jobs is the work the scheduler runs at the times it decides; what a
// backup or a drill is belongs to the caller (the CLI, on packages
// backup and restore).
type Jobs interface {
	// Backup takes one backup of cluster. It calls commit just before
	// the backup becomes visible (backup.CreateOptions.BeforeCommit) and
	// fails, leaving nothing listed, if commit fails.
	Backup(ctx context.Context, cluster string, commit func(context.Context) error) (BackupResult, error)
	// Maintain runs after each successful backup: retention, purge of
	// expired deletions, stale uploads. Its failure is logged, and fails
	// no backup.
	Maintain(ctx context.Context, cluster string) error
	// Drill restores cluster's newest READY backup into its scratch HSM,
	// checks it and zeroizes the scratch HSM.
	Drill(ctx context.Context, cluster string) (DrillResult, error)
}

// BackupResult is what a backup run made.
type BackupResult struct {
	BackupID string
	Bytes    int64
}

// DrillResult is what a drill found. A failed drill returns an error and
// as much of its result as it got.
type DrillResult struct {
	BackupID   string
	Restore    time.Duration
	Users      int
	Keys       int
	Incomplete bool // the checks did not all run
}

// Config is what a Scheduler runs.
type Config struct {
	Clusters []Cluster
	Settings Settings
	// Repo is the store of the backups; leases and run records live
	// beside them, under scheduler/.
	Repo backup.Repo
	// PublicKey checks manifests when the scheduler decides what is
	// due: a forged manifest does not hold a cluster's backups off. It
	// also checks the run records.
	PublicKey ed25519.PublicKey
	// SigningKey, the manifest signing key, signs the run records, so
	// that a result edited in the store (a drill marked passed) is seen.
	SigningKey ed25519.PrivateKey
	Jobs       Jobs
	// Holder names this replica in leases and records.
	Holder string
	Log    *slog.Logger
	// Metrics, if set, are updated as jobs run.
	Metrics *Metrics
}

// Scheduler runs the backups and drills of a fleet of clusters on their
// schedules, through robfig/cron, sharing the fleet with other replicas
// pointed at the same store through leases.
type Scheduler struct {
	mu       sync.Mutex
	cfg      Config
	lessor   *Lessor
	sem      chan struct{}
	cron     *cron.Cron
	stopping bool
	stop     chan struct{} // closed when stopping
	runs     sync.WaitGroup

	// runCtx is the context of every run: cancelled when a drain's
	// deadline passes.
	runCtx     context.Context
	cancelRuns context.CancelFunc

	statusMu sync.Mutex
	status   []ClusterStatus
	statusAt time.Time
	statusOK error
}

// New returns a Scheduler for cfg; Run starts it.
func New(cfg Config) (*Scheduler, error) {
	if err := checkConfig(cfg); err != nil {
		return nil, err
	}
	s := &Scheduler{stop: make(chan struct{})}
	s.runCtx, s.cancelRuns = context.WithCancel(context.Background())
	s.apply(cfg)
	return s, nil
}

func checkConfig(cfg Config) error {
	switch {
	case cfg.Jobs == nil || cfg.Repo.Store == nil || cfg.Log == nil:
		return errors.New("scheduler: Jobs, Repo and Log are required")
	case cfg.Holder == "":
		return errors.New("scheduler: Holder is required")
	}
	if err := CheckConcurrency(cfg.Settings.Concurrency); err != nil {
		return fmt.Errorf("scheduler: concurrency %w", err)
	}
	if err := CheckLeaseDuration(cfg.Settings.LeaseDuration); err != nil {
		return fmt.Errorf("scheduler: lease duration %w", err)
	}
	return nil
}

// apply makes cfg the configuration of the runs that start from now on.
func (s *Scheduler) apply(cfg Config) {
	s.cfg = cfg
	s.lessor = NewLessor(cfg.Repo.Store, repoPrefix(cfg.Repo), cfg.Holder, cfg.Settings.LeaseDuration)
	s.sem = make(chan struct{}, cfg.Settings.Concurrency)
	cfg.Metrics.clusters(cfg.Clusters)
}

// Run runs the schedules until ctx is done, then drains: it takes no new
// slot, lets the runs under way finish within the drain timeout, then
// cancels them (a cancelled backup leaves nothing listed) and releases
// their leases. On start, and so after any time down, every cluster whose
// last slot has no backup gets one catch-up run. Run returns an error if
// the drain had to cancel runs.
func (s *Scheduler) Run(ctx context.Context) error {
	go s.refreshLoop(ctx)
	s.mu.Lock()
	s.startCron()
	s.mu.Unlock()
	<-ctx.Done()
	return s.drain()
}

// Reload replaces the configuration: the clusters, their schedules and
// the settings take effect for the runs that start from now on; runs
// under way finish as they began.
func (s *Scheduler) Reload(cfg Config) error {
	if err := checkConfig(cfg); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return errors.New("scheduler: stopping")
	}
	s.apply(cfg)
	if s.cron != nil { // running: a runner on the new schedules
		s.cron.Stop()
		s.startCron()
	}
	s.cfg.Log.Info("scheduler configuration reloaded", "clusters", len(cfg.Clusters))
	return nil
}

// cronLogger adapts slog to robfig's logger.
type cronLogger struct{ l *slog.Logger }

func (c cronLogger) Info(msg string, kv ...any) { c.l.Debug("cron: "+msg, kv...) }
func (c cronLogger) Error(err error, msg string, kv ...any) {
	c.l.Error("cron: "+msg, append(kv, "err", err)...)
}

// newRunner is robfig's runner as the scheduler uses it: in UTC, with
// every job wrapped in SkipIfStillRunning(Recover(job)). Skip goes
// outside Recover: the other order loses Skip's token when a job panics
// (robfig v3.0.1), and that job never runs again.
func newRunner(log *slog.Logger) *cron.Cron {
	l := cronLogger{log}
	return cron.New(cron.WithLocation(time.UTC), cron.WithLogger(l),
		cron.WithChain(cron.SkipIfStillRunning(l), cron.Recover(l)))
}

// startCron schedules every job in a new robfig runner, and starts one
// catch-up run of each. s.mu is held.
func (s *Scheduler) startCron() {
	c := newRunner(s.cfg.Log)
	var catchUp []cron.Job
	for _, cl := range s.cfg.Clusters {
		for _, kind := range []string{KindBackup, KindDrill} {
			sched := cl.Backup
			if kind == KindDrill {
				sched = cl.Drill
			}
			if sched.IsZero() {
				continue
			}
			id := c.Schedule(sched.s, cron.FuncJob(func() { s.run(kind, cl.ID, sched) }))
			catchUp = append(catchUp, c.Entry(id).WrappedJob)
		}
	}
	c.Start()
	s.cron = c
	for _, j := range catchUp {
		go j.Run()
	}
}

// drain stops the runner and waits for the runs under way.
func (s *Scheduler) drain() error {
	s.mu.Lock()
	s.stopping = true
	close(s.stop)
	if s.cron != nil {
		s.cron.Stop()
	}
	timeout := s.cfg.Settings.DrainTimeout
	log := s.cfg.Log
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.runs.Wait(); close(done) }()
	log.Info("scheduler draining: no new slots", "drain_timeout", timeout.String())
	select {
	case <-done:
		log.Info("scheduler stopped: every run finished")
		return nil
	case <-time.After(timeout):
	}
	log.Warn("drain timeout passed: cancelling the runs under way")
	s.cancelRuns()
	<-done
	return errors.New("drain timeout passed: runs were cancelled (nothing partial is listed)")
}

// begin registers a run, unless the scheduler is stopping, and returns
// the configuration it runs with.
func (s *Scheduler) begin() (Config, *Lessor, chan struct{}, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return Config{}, nil, nil, false
	}
	s.runs.Add(1)
	return s.cfg, s.lessor, s.sem, true
}

// Retry timing within a slot.
const (
	firstBackoff = time.Second
	maxBackoff   = 5 * time.Minute
)

// run runs the slots of kind of cluster that are due: the latest, then,
// if that run outlasted the next slot's start (a long backup, a slot
// given up), the one that began meanwhile, which robfig's runner skipped
// as still running. A slot already run or given up is not run again.
func (s *Scheduler) run(kind, cluster string, sched Schedule) {
	cfg, lessor, sem, ok := s.begin()
	if !ok {
		return
	}
	defer s.runs.Done()
	ctx := s.runCtx
	log := cfg.Log.With("cluster", cluster, "job", kind)
	var finished time.Time
	for {
		// The check takes a concurrency token too, so that a thousand
		// clusters starting at once do not all read the store at once.
		if !s.take(ctx, sem) {
			return
		}
		last, err := s.lastRun(ctx, cfg, kind, cluster)
		var newest time.Time
		if err == nil && kind == KindDrill {
			// Nothing to drill before the cluster's first backup: not
			// due, and the first backup starts the drill (drillAfter).
			newest, err = s.lastRun(ctx, cfg, KindBackup, cluster)
		}
		<-sem
		if err != nil {
			log.Error("cannot tell if a run is due", "err", err)
			return // the next slot (or restart) tries again
		}
		slot, due := Due(sched, last, time.Now())
		if !due || !slot.After(finished) || kind == KindDrill && newest.IsZero() {
			return
		}
		if !s.runSlot(ctx, cfg, lessor, sem, log.With("slot", slot.UTC().Format(time.RFC3339)), kind, cluster, sched, slot) {
			return
		}
		finished = slot
		if kind == KindBackup {
			s.drillAfter(cfg, cluster)
		}
	}
}

// drillAfter starts a check of cluster's drill after a backup of it: a
// drill that was due while the cluster had no backup (a new fleet) runs
// now, not at its next slot. The check finds it not due otherwise.
func (s *Scheduler) drillAfter(cfg Config, cluster string) {
	for _, c := range cfg.Clusters {
		if c.ID == cluster && !c.Drill.IsZero() {
			go s.run(KindDrill, cluster, c.Drill)
		}
	}
}

// runSlot runs one slot: it waits its jitter, takes a concurrency token
// and the slot's lease, and runs the job; a failure is retried with
// capped exponential backoff until the next slot begins. A lease held by
// another replica is waited on: the slot is done when that replica
// succeeds, or taken over when its lease expires. It returns false if
// the scheduler stopped.
func (s *Scheduler) runSlot(ctx context.Context, cfg Config, lessor *Lessor, sem chan struct{}, log *slog.Logger, kind, cluster string, sched Schedule, slot time.Time) bool {
	end := Next(sched, slot)
	if !s.sleep(ctx, jitter(sched, slot, cfg.Settings.Jitter)) {
		return false
	}
	job := kind + "/" + cluster
	backoff := firstBackoff
	poll := max(time.Second, cfg.Settings.LeaseDuration/8)
	for {
		if !s.take(ctx, sem) {
			return false
		}
		lease, err := lessor.Acquire(ctx, job, slot)
		wait := poll
		switch {
		case errors.Is(err, ErrSlotDone):
			<-sem
			return true
		case errors.Is(err, ErrLeaseHeld), errors.Is(err, ErrLeaseLost):
			log.Debug("slot held by another replica", "err", err)
		case err != nil:
			log.Error("cannot take the slot's lease", "err", err)
			wait = backoff
		default:
			err = s.held(ctx, cfg, log, kind, cluster, slot, lease)
			if err == nil || kind == KindDrill {
				<-sem
				return true // a drill's failure is its result, not retried
			}
			wait = backoff
			backoff = min(2*backoff, maxBackoff)
		}
		<-sem
		if !end.IsZero() && time.Now().Add(wait).After(end) {
			if err != nil {
				log.Warn("slot given up: the next slot begins", "err", err)
			}
			return true
		}
		if !s.sleep(ctx, wait) {
			return false
		}
	}
}

// take takes a concurrency token, unless ctx is done or the scheduler
// stops first.
func (s *Scheduler) take(ctx context.Context, sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		return false
	case <-s.stop:
		return false
	}
	if s.isStopping() {
		<-sem
		return false
	}
	return true
}

func (s *Scheduler) isStopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

// sleep waits d, or until ctx is done or the scheduler stops; false if
// it was not a whole d.
func (s *Scheduler) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(max(d, 0))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.stop:
		return false
	}
}

// jitter is a random delay for a run of sched's slot: at most the
// setting, and at most a tenth of the period, so that short schedules
// keep their rhythm.
func jitter(sched Schedule, slot time.Time, most time.Duration) time.Duration {
	if next := Next(sched, slot); !next.IsZero() {
		most = min(most, next.Sub(slot)/10)
	}
	if most <= 0 {
		return 0
	}
	return rand.N(most)
}

// lastRun is what a kind's due-ness is measured from: for a backup, the
// creation time of the cluster's newest READY backup whose manifest
// verifies; for a drill, the slot of its last run.
func (s *Scheduler) lastRun(ctx context.Context, cfg Config, kind, cluster string) (time.Time, error) {
	if kind == KindDrill {
		r, err := readRun(ctx, cfg.Repo.Store, repoPrefix(cfg.Repo), cluster, KindDrill, cfg.PublicKey)
		if errors.Is(err, ErrRecordUnverified) {
			return time.Time{}, nil // a forged record holds no drill off
		}
		if err != nil || r == nil {
			return time.Time{}, err
		}
		if r.Slot.After(time.Now()) {
			// Run records are not signed: one dated ahead (a clock
			// stepped back, or a forged record) must not hold drills off.
			return time.Time{}, nil
		}
		return r.Slot, nil
	}
	l, err := backup.Scan(ctx, cfg.Repo, backup.ListOptions{
		Filter: backup.Filter{ClusterID: cluster, State: backup.StateReady}, PublicKey: cfg.PublicKey})
	if err != nil {
		return time.Time{}, fmt.Errorf("list backups: %w", err)
	}
	if len(l.Backups) == 0 {
		return time.Time{}, nil
	}
	return l.Backups[len(l.Backups)-1].Created, nil
}

type loggerKey struct{}

// Logger is the logger of the run whose context ctx is, with the
// cluster, job, slot and lease generation on every line (nil outside a
// run), for the Jobs to log with.
func Logger(ctx context.Context) *slog.Logger {
	l, _ := ctx.Value(loggerKey{}).(*slog.Logger)
	return l
}

// releaseTimeout bounds the writes after a run (its record, the lease's
// release), which go on when the run's context is cancelled.
const releaseTimeout = 15 * time.Second

// held runs a slot whose lease this replica holds, renewing the lease
// while it runs and cancelling the run if the lease is lost; then it
// records the result and releases the lease.
func (s *Scheduler) held(ctx context.Context, cfg Config, log *slog.Logger, kind, cluster string, slot time.Time, lease *Lease) error {
	log = log.With("generation", lease.Generation())
	runCtx, cancel := context.WithCancelCause(context.WithValue(ctx, loggerKey{}, log))
	defer cancel(nil)
	keepCtx, stopKeep := context.WithCancel(runCtx)
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		lease.Keep(keepCtx, func(err error) {
			log.Error("lease lost: aborting the run", "err", err)
			cancel(fmt.Errorf("%w: %w", ErrLeaseLost, err))
		})
	}()
	cfg.Metrics.held(kind, cluster, true)
	defer cfg.Metrics.held(kind, cluster, false)

	rec := &RunRecord{Cluster: cluster, Kind: kind, Slot: slot.UTC(), Started: time.Now().UTC().Round(0), Holder: cfg.Holder}
	err := s.job(runCtx, cfg, log, kind, cluster, slot, lease, rec)
	stopKeep() // no renewal after the run: the release is the last write
	<-kept
	if cause := context.Cause(runCtx); err != nil && cause != nil && !errors.Is(err, cause) {
		err = fmt.Errorf("%w (%w)", err, cause)
	}
	rec.Finished = time.Now().UTC().Round(0)
	rec.OK = err == nil
	if err != nil {
		rec.Error = err.Error()
	}
	cfg.Metrics.ran(kind, cluster, rec.OK, rec.Finished.Sub(rec.Started))

	after, cancelAfter := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancelAfter()
	if !errors.Is(err, ErrLeaseLost) { // a lost slot is another replica's to record
		if werr := writeRun(after, cfg.Repo.Store, repoPrefix(cfg.Repo), rec, cfg.SigningKey); werr != nil {
			log.Error("run not recorded", "err", werr)
		}
	}
	// A drill's slot is done whatever it found; a backup's only if it
	// succeeded, so that a failed slot can be taken by another replica.
	if rerr := lease.Release(after, err == nil || kind == KindDrill); rerr != nil && !errors.Is(err, ErrLeaseLost) {
		log.Warn("lease not released: it expires", "err", rerr)
	}
	return err
}

// job runs the job, a panic in it turned into its error (logged with
// its stack), so that the run still records its result, releases its
// lease and gives back its concurrency token.
func (s *Scheduler) job(ctx context.Context, cfg Config, log *slog.Logger, kind, cluster string, slot time.Time, lease *Lease, rec *RunRecord) (err error) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("job panicked", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = fmt.Errorf("%s panicked: %v", kind, r)
		}
	}()
	if kind == KindBackup {
		return s.backup(ctx, cfg, log, cluster, slot, lease, rec)
	}
	return s.drill(ctx, cfg, log, cluster, rec)
}

// backup runs a backup for slot: after re-checking, under the lease,
// that no backup covers the slot yet.
func (s *Scheduler) backup(ctx context.Context, cfg Config, log *slog.Logger, cluster string, slot time.Time, lease *Lease, rec *RunRecord) error {
	last, err := s.lastRun(ctx, cfg, KindBackup, cluster)
	if err != nil {
		return err
	}
	if !last.Before(slot) {
		log.Info("slot already covered by a backup")
		return nil
	}
	log.Info("backup started")
	res, err := cfg.Jobs.Backup(ctx, cluster, func(ctx context.Context) error {
		if err := lease.Renew(ctx); err != nil {
			return err
		}
		return context.Cause(ctx)
	})
	if err != nil {
		log.Error("backup failed", "err", err)
		return err
	}
	rec.BackupID, rec.Bytes = res.BackupID, res.Bytes
	cfg.Metrics.backedUp(cluster, time.Now())
	log.Info("backup done", "backup", res.BackupID, "bytes", res.Bytes)
	if err := cfg.Jobs.Maintain(ctx, cluster); err != nil {
		log.Warn("maintenance after the backup failed", "backup", res.BackupID, "err", err)
	}
	return nil
}

// drill runs a drill and records what it found.
func (s *Scheduler) drill(ctx context.Context, cfg Config, log *slog.Logger, cluster string, rec *RunRecord) error {
	log.Info("drill started")
	res, err := cfg.Jobs.Drill(ctx, cluster)
	rec.BackupID, rec.Users, rec.Keys = res.BackupID, res.Users, res.Keys
	rec.RestoreSeconds = res.Restore.Seconds()
	if res.Restore > 0 {
		cfg.Metrics.restored(res.Restore)
	}
	if err != nil {
		log.Error("drill failed", "backup", res.BackupID, "err", err)
		return err
	}
	log.Info("drill passed", "backup", res.BackupID, "restore_seconds", rec.RestoreSeconds, "users", res.Users, "keys", res.Keys)
	return nil
}

// refreshEvery is how often a replica re-reads the fleet's state from
// the store for its status page, readiness and gauges: every 5 s for a
// small fleet, up to every 30 s for a thousand clusters (each read lists
// every manifest).
func refreshEvery(clusters int) time.Duration {
	return min(30*time.Second, max(5*time.Second, time.Duration(clusters)*30*time.Millisecond))
}

func (s *Scheduler) refreshLoop(ctx context.Context) {
	for {
		s.Refresh(ctx)
		s.mu.Lock()
		n := len(s.cfg.Clusters)
		s.mu.Unlock()
		if !s.sleep(ctx, refreshEvery(n)) {
			return
		}
	}
}

// Refresh re-reads the fleet's state from the store now.
func (s *Scheduler) Refresh(ctx context.Context) {
	s.mu.Lock()
	cfg := s.cfg
	s.mu.Unlock()
	st, err := Collect(ctx, cfg.Repo, cfg.PublicKey, cfg.Clusters, cfg.Settings, time.Now())
	s.statusMu.Lock()
	defer s.statusMu.Unlock()
	s.statusOK = err
	if err != nil {
		cfg.Log.Warn("fleet status not read", "err", err)
		return
	}
	s.status, s.statusAt = st, time.Now()
	cfg.Metrics.fleet(st)
}

// Status returns the fleet's state as last read, when it was read, and
// the error of the last attempt.
func (s *Scheduler) Status() ([]ClusterStatus, time.Time, error) {
	s.statusMu.Lock()
	defer s.statusMu.Unlock()
	return s.status, s.statusAt, s.statusOK
}
