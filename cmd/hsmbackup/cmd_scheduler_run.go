package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/scheduler"
)

func schedulerRunCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "run the scheduled backups and drills of the clusters in --config until stopped",
		Description: "Backs up every cluster on its schedule, and restores drills on theirs,\n" +
			"sharing the fleet with the other replicas pointed at the same store: each\n" +
			"slot is taken by one replica through a lease in the store. On start, a\n" +
			"cluster whose last slot has no backup gets one catch-up backup. SIGHUP\n" +
			"reloads --config (an invalid one is reported and the old one kept);\n" +
			"SIGTERM or SIGINT drains: no new slot, runs under way finish within\n" +
			"drain_timeout, then are cancelled (nothing partial is listed). Serves\n" +
			"/ (status page), /status, /metrics, /livez and /readyz on --listen.\n" +
			"Logs are JSON lines unless --log-format says otherwise.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:9464", Usage: "serve the status page and metrics on `ADDR` (\"\" for none)"},
			&cli.StringFlag{Name: "replica", Usage: "`NAME` of this replica in leases and records (default: host-pid-random)"},
			logFormatFlag(),
			logLevelFlag(),
		}, serviceFlags()...),
		OnUsageError: usageError,
		Action: action("scheduler run", func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			stopsItself.Store(true) // it drains and logs on its own
			return runScheduler(c.Context, c, c.String("listen"), c.String("replica"))
		}),
	}
}

// fleetJobs are the scheduler's jobs, on a command env: backups as backup
// create takes them, the retention of backup prune, drills.
type fleetJobs struct {
	e    *env
	keys *backupKeys
}

// env is the jobs' env, logging with the run's logger.
func (j *fleetJobs) env(ctx context.Context) *env {
	e := *j.e
	if l := scheduler.Logger(ctx); l != nil {
		e.log = l
	}
	return &e
}

func (j *fleetJobs) Backup(ctx context.Context, cluster string, commit func(context.Context) error) (scheduler.BackupResult, error) {
	m, err := takeBackup(ctx, j.env(ctx), j.keys, createOptions{cluster: cluster}, commit)
	if err != nil {
		return scheduler.BackupResult{}, err
	}
	return scheduler.BackupResult{BackupID: m.ID, Bytes: m.ObjectSize}, nil
}

// Maintain applies the cluster's retention, purges its deletions past
// their 7 days and removes stale uploads, as backup prune does.
func (j *fleetJobs) Maintain(ctx context.Context, cluster string) error {
	e := j.env(ctx)
	e.removeStaleUploads(ctx)
	actions, err := backup.Prune(ctx, e.repo, backup.PruneOptions{
		LifecycleOptions: backup.LifecycleOptions{SigningKey: j.keys.signing},
		ClusterID:        cluster, Policy: e.retention,
	})
	for _, a := range actions {
		e.log.Info("pruned", "cluster", a.ClusterID, "backup", a.BackupID, "from", a.From, "to", a.To,
			"reason", a.Reason, "object", a.Object, "err", a.Error)
	}
	return err
}

// Drill runs the cluster's restore drill, as scheduler drill does.
func (j *fleetJobs) Drill(ctx context.Context, cluster string) (scheduler.DrillResult, error) {
	rep, err := runDrill(ctx, j.env(ctx), cluster)
	return scheduler.DrillResult{BackupID: rep.BackupID, Restore: rep.Restore, Users: rep.Users, Keys: rep.Keys}, err
}

// fleet builds the scheduler's configuration from the env's config. It
// refuses, with every problem at once, a fleet it could not run: no
// scheduled cluster, a cluster whose certificates, key or password file
// cannot be read (or that others can read), missing service keys.
func fleet(ctx context.Context, e *env, holder string) (scheduler.Config, error) {
	var problems []string
	var clusters []scheduler.Cluster
	drills := false
	for _, id := range e.cfg.clusterIDs() {
		cl, err := clusterSchedules(id, e.cfg.Clusters[id])
		if err != nil { // checked at load; kept for a config built otherwise
			problems = append(problems, err.Error())
			continue
		}
		if cl.Backup.IsZero() && cl.Drill.IsZero() {
			continue
		}
		drills = drills || !cl.Drill.IsZero()
		t, err := e.clusterTarget(id, true)
		if err == nil {
			_, err = t.password()
			if err != nil {
				err = fmt.Errorf("cluster %s: %w", id, err)
			}
		}
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		clusters = append(clusters, cl)
	}
	if drills {
		if _, _, err := e.roots(); err != nil { // a drill attests its scratch HSM against them
			problems = append(problems, err.Error())
		}
	}
	if len(clusters) == 0 && len(problems) == 0 {
		problems = append(problems, "no cluster in the config has a schedule (or a drill schedule)")
	}
	keys, err := e.serviceKeys(ctx)
	if err != nil {
		problems = append(problems, err.Error())
	}
	pub, err := e.publicKey()
	if err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return scheduler.Config{}, fleetProblems(problems)
	}
	return scheduler.Config{
		Clusters: clusters, Settings: e.cfg.Scheduler.settings(), Repo: e.repo, PublicKey: pub, SigningKey: keys.signing,
		Jobs: &fleetJobs{e: e, keys: &keys}, Holder: holder, Log: e.log.With("replica", holder),
	}, nil
}

// fleetProblems are why a fleet cannot run, one a line; a usage error:
// the config is wrong.
type fleetProblems []string

func (p fleetProblems) Error() string { return strings.Join(p.Lines(), "\n") }
func (p fleetProblems) Unwrap() error { return errUsage }

// Lines are a heading, then the problems.
func (p fleetProblems) Lines() []string {
	return append([]string{fmt.Sprintf("the fleet cannot run: %d problems:", len(p))}, p...)
}

// replicaName is a replica's default name: host, process and a random
// suffix, unique even for two processes of one pid in two containers.
func replicaName() string {
	host, _ := os.Hostname()
	var b [3]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// runScheduler runs the scheduler daemon until ctx is done.
func runScheduler(ctx context.Context, c *cli.Context, listen, holder string) error {
	if holder == "" {
		holder = replicaName()
	}
	e, err := newStoreEnv(c)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	envs := []*env{e} // closed at exit: runs may still use a reloaded one
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range envs {
			e.close()
		}
	}()
	cfg, err := fleet(ctx, e, holder)
	if err != nil {
		return err
	}
	metrics := scheduler.NewMetrics(version)
	cfg.Metrics = metrics
	sc, err := scheduler.New(cfg)
	if err != nil {
		return err
	}
	log := cfg.Log
	if listen != "" {
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		srv := &http.Server{Handler: sc.Handler(metrics), ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln) //nolint:errcheck // ends with Close
		defer srv.Close()
		log.Info("serving the status page and metrics", "addr", ln.Addr().String())
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			ne, err := newStoreEnv(c)
			if err == nil {
				var ncfg scheduler.Config
				if ncfg, err = fleet(ctx, ne, holder); err == nil {
					ncfg.Metrics = metrics
					err = sc.Reload(ncfg)
				}
				if err != nil {
					ne.close()
				} else {
					mu.Lock()
					envs = append(envs, ne)
					mu.Unlock()
				}
			}
			if err != nil {
				log.Error("config not reloaded: the old one stays", "err", err)
			}
		}
	}()
	log.Info("scheduler started", "clusters", len(cfg.Clusters), "concurrency", cfg.Settings.Concurrency,
		"lease_duration", cfg.Settings.LeaseDuration.String())
	return sc.Run(ctx)
}
