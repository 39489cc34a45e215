package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// soakOpsVar sets TestSoak's number of operations (restores, migrations,
// faults); `make soak` sets it higher.
const soakOpsVar = "HSMBACKUP_SOAK_OPS"

// The soak's fleet: ten clusters on a four-second schedule; keys are
// moved from each source to its destination, backups of the static
// clusters restored, drills run on the drill clusters.
var (
	soakPairs   = [][2]string{{"fleet-00", "fleet-01"}, {"fleet-02", "fleet-03"}}
	soakStatic  = []string{"fleet-04", "fleet-05", "fleet-06", "fleet-07"}
	soakDrilled = []string{"fleet-08", "fleet-09"}
)

const (
	soakSchedule = "*/4 * * * * *"
	soakKilled   = "fleet-05" // the static cluster whose daemon is SIGKILLed
	soakKeys     = 40         // keys of each static cluster
	soakBatch    = 10         // keys each migration adds at its source first
)

// TestSoak: one `scheduler run` process backs up ten clusters of HSM
// daemon processes on a four-second schedule, with drills on two, while
// the operator's commands run against the same clusters and faults fire:
// keys generated and migrated between two pairs of clusters, backups of
// the static clusters restored into new HSMs, a static cluster's daemon
// SIGKILLed and restarted, bursts of S3 faults (a tenth of the
// scheduler's requests fail throughout). Every process is built with the
// race detector. A fixed number of operations ($HSMBACKUP_SOAK_OPS, 8 by
// default), then: no data race in any process; every READY backup passes
// verify --deep and a dry-run restore; every HSM holds what the
// operations left (each destination exactly its source's keys, each
// static cluster its keys, each restored HSM the backup's); the
// scheduler's goroutines and open files and every daemon's open files
// idle at the end as after the first round (a leak of one per run would
// add hundreds).
func TestSoak(t *testing.T) {
	t.Parallel()
	ops := 8
	if s := os.Getenv(soakOpsVar); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 4 {
			t.Fatalf("$%s=%q (make soak SOAK_OPS=…): want a number of operations, at least 4", soakOpsVar, s)
		}
		ops = n
	}
	race := RaceBinary(t)
	serve := func(tb testing.TB, dir string) string { return StartDaemonOf(tb, race, dir) }
	f := newFleetEnvServed(t, 10, soakSchedule, serve)
	addrs := map[string]string{}
	for id, c := range f.cfg["clusters"].(map[string]any) {
		addrs[id] = c.(map[string]any)["members"].([]string)[0]
	}
	opConfig := f.config // the operator's: straight to MinIO
	var outputs []string // every output, searched for races and secrets
	run := func(args ...string) Result {
		t.Helper()
		res := RunWith(t, RunOptions{Env: f.env, Bin: race}, append([]string{"--config", opConfig}, args...)...)
		outputs = append(outputs, res.Stdout, res.Stderr)
		return res
	}
	ok := func(args ...string) string {
		t.Helper()
		res := run(args...)
		if res.Code != 0 {
			t.Fatalf("hsmbackup %s: %s", strings.Join(args, " "), res)
		}
		return res.Stdout
	}

	// Alice, a crypto user, on every cluster that holds keys.
	alicePass := filepath.Join(f.dir, "alice.pw")
	if err := os.WriteFile(alicePass, []byte("alice soak password 91c2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	gen := func(id, label string, n int) {
		t.Helper()
		ok("keys", "generate", "--cluster", id, "--user", "alice", "--password-file", alicePass,
			"--type", "aes", "--usage", "encrypt,decrypt", "--label", label, "--count", fmt.Sprint(n), "--extractable")
	}
	for _, id := range append(append([]string{}, soakStatic...), soakPairs[0][0], soakPairs[0][1], soakPairs[1][0], soakPairs[1][1]) {
		ok("users", "create", "--cluster", id, "--name", "alice", "--role", "CU", "--new-password-file", alicePass)
	}
	for _, id := range soakStatic {
		gen(id, "static", soakKeys)
	}

	// The scheduler's config: its store through a fault proxy. It starts
	// yearly (one catch-up backup each), idle then for the counts the end
	// is compared with; SIGHUP takes the soak's schedule and drills, and,
	// after the operations, yearly again, to idle for the end's counts.
	px := newS3FaultProxy(t, f.srv.Endpoint)
	px.setRate(0.1)
	scratch := map[string][2]string{} // drill cluster: scratch HSM, claim file
	for _, id := range soakDrilled {
		addr, claim := f.newHSM(t, "scratch-"+id, serve)
		scratch[id] = [2]string{addr, claim}
	}
	f.cfg["store"] = fmt.Sprintf("s3://%s/fleet?endpoint=%s&region=us-east-1", f.bucket, px.URL)
	schedConfig := filepath.Join(f.dir, "scheduler.yaml")
	schedule := func(busy bool) {
		t.Helper()
		for id, c := range f.cfg["clusters"].(map[string]any) {
			c := c.(map[string]any)
			c["schedule"] = "@yearly"
			delete(c, "drill")
			if busy {
				c["schedule"] = soakSchedule
				if s, ok := scratch[id]; ok {
					c["drill"] = map[string]string{"schedule": "*/6 * * * * *", "hsm": s[0], "claim": s[1]}
				}
			}
		}
		b, err := yaml.Marshal(f.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(schedConfig, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	schedule(false)
	f.config = schedConfig
	rep := f.startReplicaOf(t, "soak", race)
	f.config = opConfig
	reload := func(busy bool) {
		t.Helper()
		n := strings.Count(rep.logs.String(), `"msg":"scheduler configuration reloaded"`)
		schedule(busy)
		rep.cmd.Process.Signal(syscall.SIGHUP) //nolint:errcheck // a dead replica fails the wait
		waitFor(t, "the reload", rep.exited, rep.logs, func() bool {
			return strings.Count(rep.logs.String(), `"msg":"scheduler configuration reloaded"`) > n
		})
	}

	rep.waitMetrics(t, func(m replicaMetrics) bool { return m.successes >= len(addrs) })
	storeAddr := strings.TrimPrefix(px.URL, "http://")
	before := soakIdle(t, rep, storeAddr, addrs)
	t.Logf("idle after the first round: scheduler %d goroutines, %d open files, %d connections to the store, %d to HSMs; daemons' open files %v",
		before.goroutines, before.files, before.store, before.hsm, before.daemonFDs)
	reload(true)

	moved := map[string]int{} // keys generated at each source
	var restored, migrations, kills, bursts int
	start := time.Now()
	for i := range ops {
		switch i % 4 {
		case 0: // keys generated at a source and migrated
			pair := soakPairs[(i/4)%len(soakPairs)]
			gen(pair[0], fmt.Sprintf("batch-%d", i), soakBatch)
			moved[pair[0]] += soakBatch
			ok("keys", "migrate", "--from", pair[0], "--to", pair[1], "--user", "alice", "--password-file", alicePass)
			migrations++
		case 1: // the newest backup of a static cluster restored into a new HSM
			id := soakStatic[rand.IntN(len(soakStatic))]
			target, claim := f.newHSM(t, fmt.Sprintf("restored-%d", i), serve)
			res := run("restore", "--backup", "latest", "--cluster", id, "--to", target, "--claim", filepath.Join(f.dir, claim))
			if res.Code != 0 {
				// latest may be pruned while it is read: the next one is not
				res = run("restore", "--backup", "latest", "--cluster", id, "--to", target, "--claim", filepath.Join(f.dir, claim))
			}
			if res.Code != 0 {
				t.Fatalf("restore of the newest backup of %s: %s", id, res)
			}
			m := &migration{c: &cluster{}, config: opConfig, alicePass: alicePass}
			if got := len(m.keys(t, id, target)); got != soakKeys {
				t.Errorf("HSM restored from %s holds %d of alice's keys, want %d", id, got, soakKeys)
			}
			restored++
		case 2: // a static cluster's daemon killed, then started again
			Kill(t, addrs[soakKilled])
			time.Sleep(time.Duration(500+rand.IntN(2000)) * time.Millisecond)
			RestartDaemon(t, addrs[soakKilled])
			kills++
		case 3: // a burst of S3 faults for the scheduler
			px.setRate(0.5)
			time.Sleep(3 * time.Second)
			px.setRate(0.1)
			bursts++
		}
	}
	px.setRate(0)
	// Every drill cluster drilled, and one more round of backups after the
	// last fault.
	last := rep.waitMetrics(t, func(m replicaMetrics) bool { return true }).successes
	rep.waitMetrics(t, func(m replicaMetrics) bool { return m.successes >= last+len(addrs) })
	waitFor(t, "a drill of each drill cluster", rep.exited, rep.logs, func() bool {
		return strings.Count(rep.logs.String(), `"msg":"drill passed"`) >= len(soakDrilled)
	})
	reload(false)
	after := soakIdle(t, rep, storeAddr, addrs)
	final := rep.waitMetrics(t, func(m replicaMetrics) bool { return true })
	took := time.Since(start)

	// Leaks: idle at the end as after the first round, but for the idle
	// store connections Go's HTTP transport pools (at most soakStorePool,
	// closed after a minute idle). No HSM connection stays open. The
	// killed daemon's process is another one now.
	var leaks []string
	if d := after.pooled() - before.pooled(); d > 3 {
		leaks = append(leaks, fmt.Sprintf("scheduler: %d goroutines more (beside the store connections' %d → %d)", d, 2*before.store, 2*after.store))
	}
	if d := after.files - before.files; d > 2 {
		leaks = append(leaks, fmt.Sprintf("scheduler: %d open files more", d))
	}
	if after.store > soakStorePool {
		leaks = append(leaks, fmt.Sprintf("scheduler: %d idle connections to the store, more than its pool of %d", after.store, soakStorePool))
	}
	if before.hsm+after.hsm > 0 {
		leaks = append(leaks, fmt.Sprintf("scheduler: %d, then %d idle connections to HSMs, want none", before.hsm, after.hsm))
	}
	for id, n := range before.daemonFDs {
		if d := after.daemonFDs[id] - n; id != soakKilled && d > 2 {
			leaks = append(leaks, fmt.Sprintf("daemon of %s: %d open files more", id, d))
		}
	}
	for _, l := range leaks {
		t.Error("leak: " + l)
	}
	if len(leaks) > 0 { // the goroutines, for the reader
		rep.cmd.Process.Signal(syscall.SIGQUIT) //nolint:errcheck
		<-rep.exited
		dump := rep.logs.String()
		t.Logf("the scheduler's goroutines at the end:\n%s", dump[max(0, strings.LastIndex(dump, "SIGQUIT")):])
	} else if code := rep.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Errorf("scheduler: exit %d after SIGTERM, want 0", code)
	}

	// Races, in every process: the scheduler, the daemons, the commands.
	logs := append(outputs, rep.logs.String())
	for _, addr := range addrs {
		logs = append(logs, DaemonLog(t, addr))
	}
	races := 0
	for _, l := range logs {
		races += strings.Count(l, "WARNING: DATA RACE")
	}
	if races > 0 {
		t.Errorf("%d data races reported; the processes' output holds them", races)
		for _, l := range logs {
			if strings.Contains(l, "WARNING: DATA RACE") {
				t.Logf("%.4000s", l[strings.Index(l, "WARNING: DATA RACE"):])
				break
			}
		}
	}

	// Every READY backup verifies and passes a dry-run restore (into a new
	// HSM, which stays new).
	all := f.backups(t)
	target, _ := f.newHSM(t, "dry-run-target", StartDaemon)
	verified := 0
	for _, id := range slices.Sorted(func(yield func(string) bool) {
		for id := range all {
			if !yield(id) {
				return
			}
		}
	}) {
		if len(all[id]) == 0 {
			t.Errorf("%s: no READY backup", id)
		}
		for _, s := range all[id] {
			f.cli(t, "backup", "verify", "--deep", "--cluster", id, s.ID)
			f.cli(t, "restore", "--backup", s.ID, "--cluster", id, "--to", target, "--dry-run")
			verified++
		}
	}

	// Every HSM holds what the operations left.
	m := &migration{c: &cluster{}, config: opConfig, alicePass: alicePass}
	for _, pair := range soakPairs {
		src, dst := m.keys(t, pair[0], ""), m.keys(t, pair[1], "")
		if len(src) != moved[pair[0]] {
			t.Errorf("%s holds %d of alice's keys, %d were generated", pair[0], len(src), moved[pair[0]])
		}
		want := map[labelKCV]bool{}
		for _, k := range src {
			want[keyOf(k)] = true
		}
		got := map[labelKCV]bool{}
		for _, k := range dst {
			if !want[keyOf(k)] || got[keyOf(k)] {
				t.Errorf("%s: key %d %s %s is not one of %s's, or is there twice", pair[1], k.Handle, k.Label, k.KCV, pair[0])
			}
			got[keyOf(k)] = true
		}
		if len(dst) != len(src) {
			t.Errorf("%s holds %d of alice's keys, %s %d", pair[1], len(dst), pair[0], len(src))
		}
	}
	for _, id := range soakStatic {
		if n := len(m.keys(t, id, "")); n != soakKeys {
			t.Errorf("%s holds %d of alice's keys, want %d", id, n, soakKeys)
		}
	}
	for _, out := range append(logs, m.c.outputs...) {
		if strings.Contains(out, fleetPassword) || strings.Contains(out, "alice soak password") || strings.Contains(out, f.srv.SecretKey) {
			t.Errorf("a secret appears in output:\n%.2000s", out)
		}
	}

	t.Logf("RELIABILITY soak: %d operations in %v (restores %d, migrations %d of %d keys, daemon SIGKILLs %d, S3 fault bursts %d, S3 faults %s); scheduled backups succeeded %d, failed %d (retried in their slot); drills passed %d; READY backups verified and dry-run restored %d; data races %d; leaks %d (scheduler idle: goroutines %d → %d, of which store connections' %d → %d; other open files %d → %d; HSM connections %d → %d)",
		ops, took.Round(time.Second), restored, migrations, moved[soakPairs[0][0]]+moved[soakPairs[1][0]], kills, bursts, px.fired(),
		final.successes, final.failures, strings.Count(rep.logs.String(), `"msg":"drill passed"`), verified, races, len(leaks),
		before.goroutines, after.goroutines, 2*before.store, 2*after.store, before.files, after.files, before.hsm, after.hsm)
}

// soakCounts are what the scheduler holds, and each daemon's open files,
// by cluster.
type soakCounts struct {
	goroutines int
	files      int // open files but TCP connections
	store, hsm int // TCP connections to the store (its proxy) and to HSMs
	daemonFDs  map[string]int
}

// pooled is the goroutines the scheduler's idle store connections hold:
// Go's HTTP transport keeps each with a reader and a writer goroutine, up
// to soakStorePool (minio-go's MaxIdleConnsPerHost) for a minute.
func (c soakCounts) pooled() int { return c.goroutines - 2*c.store }

const soakStorePool = 16

// soakIdle returns the least of each count over a few seconds of a
// scheduler with nothing more to run: the runs in flight end.
func soakIdle(t *testing.T, rep *replica, storeAddr string, addrs map[string]string) soakCounts {
	t.Helper()
	big := 1 << 30
	c := soakCounts{goroutines: big, files: big, store: big, hsm: big, daemonFDs: map[string]int{}}
	for id := range addrs {
		c.daemonFDs[id] = big
	}
	// Quiet: no run ended for 4 s (and the log no longer grows).
	runs, size, since := -1, -1, time.Now()
	for deadline := time.Now().Add(2 * time.Minute); time.Since(since) < 4*time.Second; time.Sleep(200 * time.Millisecond) {
		m := rep.waitMetrics(t, func(replicaMetrics) bool { return true })
		if n, l := m.successes+m.failures, rep.logs.Len(); n != runs || l != size {
			runs, size, since = n, l, time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatal("the scheduler did not go quiet within 2 minutes")
		}
	}
	hsms := map[string]bool{}
	for _, a := range addrs {
		hsms[a] = true
	}
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		m := rep.waitMetrics(t, func(replicaMetrics) bool { return true })
		peers, files := tcpPeers(t, rep.cmd.Process.Pid)
		store, hsm := 0, 0
		for p, n := range peers {
			switch {
			case p == storeAddr:
				store += n
			case hsms[p]:
				hsm += n
			}
		}
		c.goroutines, c.files = min(c.goroutines, m.goroutines), min(c.files, files)
		c.store, c.hsm = min(c.store, store), min(c.hsm, hsm)
		for id, addr := range addrs {
			fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", lookup(t, addr).cmd.Process.Pid))
			if err == nil {
				c.daemonFDs[id] = min(c.daemonFDs[id], len(fds))
			}
		}
	}
	return c
}

// tcpPeers returns the remote addresses ("127.0.0.1:PORT") of process
// pid's established IPv4 TCP connections, with how many to each, and the
// number of its open files that are no such connection.
func tcpPeers(t *testing.T, pid int) (map[string]int, int) {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		t.Fatal(err)
	}
	peers, conns := map[string]int{}, 0
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "01" || !inodes[f[9]] { // 01: ESTABLISHED
			continue
		}
		host, port, _ := strings.Cut(f[2], ":")
		h, err1 := strconv.ParseUint(host, 16, 32)
		p, err2 := strconv.ParseUint(port, 16, 16)
		if err1 != nil || err2 != nil {
			continue
		}
		peers[fmt.Sprintf("%d.%d.%d.%d:%d", byte(h), byte(h>>8), byte(h>>16), byte(h>>24), p)]++
		conns++
	}
	return peers, len(fds) - conns
}
