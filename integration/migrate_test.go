package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	hsmcluster "github.com/hsmbackup/hsmbackup/hsmcore/cluster"
)

const (
	// testDRCluster is the destination cluster of the migration tests.
	testDRCluster = "cluster-dr"
	// migrateKeysVar lowers the number of keys TestMigrateFullHSMInterrupted
	// fills the source HSM with (default: a full HSM, fullHSMKeys).
	migrateKeysVar = "HSMBACKUP_TEST_MIGRATE_KEYS"
	// fullHSMKeys is the capacity of an hsm2m.medium (device.DefaultCapacity),
	// which the HSMs of these tests are manufactured with.
	fullHSMKeys = 16666
	// migrateRunTimeout bounds one keys migrate run of a full HSM: the
	// benchmark moves 16,666 keys in about 90 s (docs/BENCHMARKS.md).
	migrateRunTimeout = 10 * time.Minute
)

// newDRCluster makes a second cluster, cluster-dr, of three HSM daemon
// processes with the authorities and the customer CA of c: three HSMs
// manufactured with the CLI; the first initialized with `cluster init`
// (the attested CSR, signed with OpenSSL by c's CA, then installed) and
// activated with c's crypto officer; the other two attested and cloned
// from it by the cluster client, which holds their claim secrets. c's
// client certificate serves both clusters.
func newDRCluster(t *testing.T, c *cluster) hsmcluster.Config {
	t.Helper()
	opDir := filepath.Join(c.dir, "op")
	var members []string
	for _, name := range []string{"hsm-dr-a", "hsm-dr-b", "hsm-dr-c"} {
		members = append(members, c.newHSM(t, name, opDir, testFirmware))
	}
	first := members[0]
	csr, crt := filepath.Join(c.dir, "cluster-dr.csr"), filepath.Join(c.dir, "cluster-dr.crt")
	out := c.run(t, "cluster", "init", "--addr", first, "--claim", c.claims[first], "--manufacturer-root", c.mfrRoot,
		"--operator-root", c.opRoot, "--cluster-id", testDRCluster, "--csr-out", csr)
	wantLines(t, out, "attestation verified: serial ", "cluster CSR for "+testDRCluster+" from HSM ")
	c.ca.Sign(t, csr, crt)
	out = c.run(t, "cluster", "init", "--addr", first, "--claim", c.claims[first], "--manufacturer-root", c.mfrRoot,
		"--cert", crt, "--customer-ca", c.ca.Cert)
	wantLines(t, out, "cluster "+testDRCluster+" initialized on HSM ")
	out = c.run(t, "cluster", "activate", "--addr", first, "--customer-ca", c.ca.Cert, "--cert", c.cert, "--key", c.key,
		"--cluster-id", testDRCluster, "--user", testOfficer, "--password-file", c.passwordFile)
	wantLines(t, out, "cluster "+testDRCluster+" activated on HSM ")

	pair, err := tls.LoadX509KeyPair(c.cert, c.key)
	if err != nil {
		t.Fatal(err)
	}
	mfr, op := x509.NewCertPool(), x509.NewCertPool()
	mfr.AddCert(loadCert(t, c.mfrRoot))
	op.AddCert(loadCert(t, c.opRoot))
	cfg := hsmcluster.Config{
		Members: []string{first},
		Client: client.Config{Certificate: &pair, CustomerCA: loadCert(t, c.ca.Cert), ClusterID: testDRCluster,
			ManufacturerRoots: mfr, Timeout: 10 * time.Second},
		OperatorRoots: op,
	}
	claims := hsmcore.Claims{}
	for _, addr := range members[1:] {
		claims.Add(readClaim(t, c.claims[addr]))
	}
	withClaims := cfg
	withClaims.Client.Claims = claims
	ctx := context.Background()
	admin, err := hsmcluster.Open(ctx, withClaims, testOfficer, c.password)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, addr := range members[1:] {
		if err := admin.AddMember(ctx, addr, hsmcluster.AddOptions{}); err != nil {
			t.Fatalf("add %s to %s: %v", addr, testDRCluster, err)
		}
		cfg.Members = append(cfg.Members, addr)
	}
	wantInSync(t, cfg)
	return cfg
}

// migration is the operator's side of TestMigrateFullHSMInterrupted: a
// config naming both clusters, and crypto user alice on both.
type migration struct {
	c                *cluster
	dir              string
	config           string
	src, dst         hsmcluster.Config
	alice, alicePass string // alice's password and its file
}

// ok runs hsmbackup --config CONFIG args..., which must succeed with no
// more on stderr than info log lines, and returns stdout.
func (m *migration) ok(t testing.TB, args ...string) string {
	t.Helper()
	res := m.run(t, RunTimeout, args...)
	if res.Code != 0 {
		t.Fatalf("hsmbackup %s: %s", strings.Join(args, " "), res)
	}
	for _, l := range strings.Split(strings.TrimSuffix(res.Stderr, "\n"), "\n") {
		if l != "" && !strings.Contains(l, " level=INFO msg=") {
			t.Fatalf("hsmbackup %s: stderr has more than info logs: %s", strings.Join(args, " "), res)
		}
	}
	return res.Stdout
}

// run runs hsmbackup --config CONFIG args..., under timeout, and records
// its output, to be searched for the passwords.
func (m *migration) run(t testing.TB, timeout time.Duration, args ...string) Result {
	t.Helper()
	args = append([]string{"--config", m.config}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, Binary(t), args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String(), Code: cmd.ProcessState.ExitCode()}
	m.c.outputs = append(m.c.outputs, res.Stdout, res.Stderr)
	if ctx.Err() != nil {
		t.Fatalf("hsmbackup %s: no exit within %s\n%s", strings.Join(args, " "), timeout, res)
	}
	if _, exit := err.(*exec.ExitError); err != nil && !exit {
		t.Fatalf("hsmbackup %s: %v", strings.Join(args, " "), err)
	}
	return res
}

// migrateArgs are the arguments of keys migrate from cluster-1 to
// cluster-dr as alice.
func (m *migration) migrateArgs(extra ...string) []string {
	return append([]string{"keys", "migrate", "--from", testCluster, "--to", testDRCluster,
		"--user", "alice", "--password-file", m.alicePass}, extra...)
}

// keys lists alice's keys with keys list --json: on the whole cluster id,
// or on its one member addr if addr is set.
func (m *migration) keys(t *testing.T, id, addr string) []hsmcore.KeyInfo {
	t.Helper()
	args := []string{"--json", "keys", "list", "--cluster", id, "--user", "alice", "--password-file", m.alicePass}
	if addr != "" {
		args = append(args, "--addr", addr)
	}
	out := m.ok(t, args...)
	var keys []hsmcore.KeyInfo
	count := -1
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var typ struct {
			MessageType string `json:"message_type"`
			Count       int    `json:"count"`
		}
		if err := json.Unmarshal([]byte(line), &typ); err != nil {
			t.Fatalf("keys list --json: %v: %.200s", err, line)
		}
		switch typ.MessageType {
		case "result":
			var k hsmcore.KeyInfo
			if err := json.Unmarshal([]byte(line), &k); err != nil {
				t.Fatalf("keys list --json: %v: %.200s", err, line)
			}
			keys = append(keys, k)
		case "summary":
			count = typ.Count
		default:
			t.Fatalf("keys list --json: a line of type %q: %.200s", typ.MessageType, line)
		}
	}
	if count != len(keys) {
		t.Fatalf("keys list --json of %s %s: %d keys listed, the summary says %d", id, addr, len(keys), count)
	}
	return keys
}

// migrationReport is keys migrate's report, as --report and --json write
// it.
type migrationReport struct {
	From    string             `json:"from"`
	To      string             `json:"to"`
	DryRun  bool               `json:"dry_run"`
	Keys    []hsmcore.Migrated `json:"keys"`
	Moved   int                `json:"moved"`
	Skipped int                `json:"skipped"`
	Refused int                `json:"refused"`
}

// bundleMoved is the log line keys migrate writes after each bundle.
var bundleMoved = regexp.MustCompile(`^time=\S+ level=INFO msg="bundle moved" from=` + regexp.QuoteMeta(testCluster) +
	` to=` + regexp.QuoteMeta(testDRCluster) + ` done=(\d+) of=(\d+)$`)

// killed is what a keys migrate run that lost a process to SIGKILL had
// logged, and how it ended.
type killed struct {
	done, total int // of its last "bundle moved" line
	lines       int // "bundle moved" lines
	// daemon is the address of the HSM daemon killed ("" if keys migrate
	// itself was), and state its health just before the kill.
	daemon string
	state  api.Health
	// res is what keys migrate wrote and its exit code, and afterKill the
	// time from the kill to its exit, when a daemon was killed.
	res       Result
	afterKill time.Duration
}

// killTarget is what an interrupted run of keys migrate loses: keys
// migrate itself if pick is nil, else the HSM daemon pick names when the
// kill is due, with its health then (or an error, or "" once exited is
// closed: keys migrate ended first).
type killTarget struct {
	what string
	pick func(exited <-chan struct{}) (addr string, state api.Health, err error)
}

// keysMigrate is keys migrate itself as a killTarget.
var keysMigrate = killTarget{what: "keys migrate"}

// memberHealth is what the member of cfg on addr reports of itself.
func memberHealth(cfg hsmcluster.Config, addr string) (api.Health, error) {
	cc := cfg.Client
	cc.Addr = addr
	cl, err := client.New(cc)
	if err != nil {
		return api.Health{}, err
	}
	defer cl.Close()
	return cl.Health(context.Background())
}

// committer is, as a killTarget, the destination member that commits
// the bundles of the next run: each bundle is imported at the member that
// made its transport key, and keys migrate asks them in turn (the cluster
// client's round robin), so it is found, not assumed: the one member whose
// own entry of its state version (the changes it made) grew since now.
func (m *migration) committer(t *testing.T) killTarget {
	t.Helper()
	own := map[string]uint64{}
	for _, addr := range m.dst.Members {
		h, err := memberHealth(m.dst, addr)
		if err != nil {
			t.Fatalf("health of %s: %v", addr, err)
		}
		own[addr] = h.StateVersion[h.Serial]
	}
	return killTarget{what: "the destination member committing the bundles", pick: func(exited <-chan struct{}) (string, api.Health, error) {
		var at []string
		for _, addr := range m.dst.Members {
			select {
			case <-exited:
				return "", api.Health{}, nil
			default:
			}
			h, err := memberHealth(m.dst, addr)
			if err != nil {
				return "", h, fmt.Errorf("health of %s: %v", addr, err)
			}
			if h.StateVersion[h.Serial] > own[addr] {
				at = append(at, addr)
			}
		}
		if len(at) != 1 {
			return "", api.Health{}, fmt.Errorf("the run's bundles were committed at %d destination members %v, want one", len(at), at)
		}
		h, err := memberHealth(m.dst, at[0]) // last, just before the kill
		if err != nil {
			return "", h, fmt.Errorf("health of %s: %v", at[0], err)
		}
		return at[0], h, nil
	}}
}

// exporter is, as a killTarget, the source member exporting a bundle
// when the kill is due, or the next to: keys migrate asks the source's
// members for bundles in turn (the cluster client's round robin), and the
// one exporting is the one whose audit log grows, an entry for each key
// it wraps; nothing else writes to the source's audit logs once keys
// migrate has logged in. An export changes no state: the health returned
// is the source's before the run.
func (m *migration) exporter(t *testing.T) killTarget {
	t.Helper()
	var logs []string
	var state api.Health
	for i, addr := range m.src.Members {
		logs = append(logs, filepath.Join(lookup(t, addr).dir, "audit.log"))
		h, err := memberHealth(m.src, addr)
		if err != nil {
			t.Fatalf("health of %s: %v", addr, err)
		}
		if i > 0 && h.StateDigest != state.StateDigest {
			t.Fatalf("the source's members differ before the run: %s and %s", state.StateDigest, h.StateDigest)
		}
		state = h
	}
	sizes := func() []int64 {
		var out []int64
		for _, l := range logs {
			fi, err := os.Stat(l)
			if err != nil {
				return nil
			}
			out = append(out, fi.Size())
		}
		return out
	}
	return killTarget{what: "the source member exporting a bundle", pick: func(exited <-chan struct{}) (string, api.Health, error) {
		last := sizes()
		for {
			select {
			case <-exited:
				return "", api.Health{}, nil
			case <-time.After(time.Millisecond):
			}
			now := sizes()
			if now == nil || last == nil {
				return "", api.Health{}, fmt.Errorf("the source members' audit logs %v: not found", logs)
			}
			for i, addr := range m.src.Members {
				if now[i] > last[i] {
					return addr, state, nil
				}
			}
			last = now
		}
	}}
}

// interrupted runs keys migrate (with extra arguments) and kills v with
// SIGKILL once it has logged its after-th "bundle moved" line: at once if
// midBundle is false, else halfway through the next bundle (half the time
// its bundles took so far), when that bundle is being committed at the
// destination or replicated to its other members, or exported at the
// source; a daemon to kill is found then, and the exporting source member
// may be waited for until its export starts. Killed itself, keys migrate
// must have died of the SIGKILL; losing a daemon, it must exit on its own
// within migrateRunTimeout, having carried on with the other members or
// failed.
func (m *migration) interrupted(t *testing.T, after int, midBundle bool, v killTarget, extra ...string) killed {
	t.Helper()
	args := append([]string{"--config", m.config}, m.migrateArgs(extra...)...)
	cmd := exec.Command(Binary(t), args...)
	var stdout strings.Builder
	cmd.Stdout = &stdout
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var overran atomic.Bool
	overdue := time.AfterFunc(migrateRunTimeout, func() { overran.Store(true); cmd.Process.Kill() })
	defer overdue.Stop()

	// The kill of a daemon, when due: the daemon picked, killed and
	// recorded in the variables mu guards.
	exited := make(chan struct{})
	var mu sync.Mutex
	var daemon string
	var state api.Health
	var killedAt time.Time
	var pickErr error
	var pending sync.WaitGroup
	var timer *time.Timer
	killNow := func() {
		if v.pick == nil {
			cmd.Process.Kill()
			return
		}
		addr, h, err := v.pick(exited)
		if err == nil && addr != "" {
			Kill(t, addr)
		}
		mu.Lock()
		defer mu.Unlock()
		daemon, state, killedAt, pickErr = addr, h, time.Now(), err
	}

	var stderr strings.Builder
	var k killed
	var first time.Time // of the first "bundle moved" line
	sc := bufio.NewScanner(pipe)
	for sc.Scan() { // to the end: the lines it wrote before it died count
		line := sc.Text()
		stderr.WriteString(line + "\n")
		mm := bundleMoved.FindStringSubmatch(line)
		if mm == nil {
			continue
		}
		k.done, _ = strconv.Atoi(mm[1])
		k.total, _ = strconv.Atoi(mm[2])
		if k.lines++; k.lines == 1 {
			first = time.Now()
		}
		if k.lines != after {
			continue
		}
		if !midBundle {
			killNow()
			continue
		}
		perBundle := time.Since(start) / time.Duration(after)
		if after > 1 { // the first bundle also waited for the logins
			perBundle = time.Since(first) / time.Duration(after-1)
		}
		pending.Add(1)
		timer = time.AfterFunc(perBundle/2, func() { defer pending.Done(); killNow() })
		t.Logf("killing %s %s after bundle %d", v.what, (perBundle / 2).Round(time.Millisecond), after)
	}
	cmd.Wait()
	ended := time.Now()
	close(exited)
	if timer != nil && timer.Stop() {
		pending.Done() // it never ran
	}
	pending.Wait()
	st := cmd.ProcessState
	k.res = Result{Stdout: stdout.String(), Stderr: stderr.String(), Code: st.ExitCode()}
	m.c.outputs = append(m.c.outputs, k.res.Stdout, k.res.Stderr)
	if v.pick == nil {
		if k.lines < after || st.Exited() || st.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("keys migrate ended (%v) after %d \"bundle moved\" lines, before it was killed after %d:\nstdout:\n%.2000s\nstderr:\n%s",
				st, k.lines, after, k.res.Stdout, k.res.Stderr)
		}
		return k
	}
	k.daemon, k.state, k.afterKill = daemon, state, ended.Sub(killedAt)
	switch {
	case pickErr != nil:
		t.Fatalf("keys migrate after %d \"bundle moved\" lines: %s not found: %v\nstderr:\n%s", k.lines, v.what, pickErr, k.res.Stderr)
	case overran.Load():
		t.Fatalf("keys migrate: no exit within %s, %s killed after %d \"bundle moved\" lines: a hang\nstderr:\n%s", migrateRunTimeout, v.what, after, k.res.Stderr)
	case k.daemon == "":
		t.Fatalf("keys migrate ended (%v) after %d \"bundle moved\" lines, before %s was killed after %d:\nstdout:\n%.2000s\nstderr:\n%s",
			st, k.lines, v.what, after, k.res.Stdout, k.res.Stderr)
	case !st.Exited():
		t.Fatalf("keys migrate did not exit on its own (%v) once %s (%s) was killed:\nstderr:\n%s", st, v.what, k.daemon, k.res.Stderr)
	}
	var said []string // its warnings and its last line
	for _, l := range strings.Split(strings.TrimSuffix(k.res.Stderr, "\n"), "\n") {
		if !strings.Contains(l, " level=INFO ") {
			said = append(said, l)
		}
	}
	t.Logf("keys migrate exited %d, %s after %s (%s) was killed:\n%s", k.res.Code, k.afterKill.Round(time.Millisecond), v.what, k.daemon, strings.Join(said, "\n"))
	return k
}

// inSync reports whether every member of cfg is in the same state.
func inSync(d []string) bool {
	for i := range d {
		if d[i] != d[0] {
			return false
		}
	}
	return true
}

type labelKCV [2]string

func keyOf(k hsmcore.KeyInfo) labelKCV { return labelKCV{k.Label, k.KCV} }

// TestMigrateFullHSMInterrupted moves a full HSM of alice's keys (16,666
// AES-256 keys, its capacity: all but one extractable) from cluster-1 to
// cluster-dr, two clusters of three HSM daemon processes each, with
// `keys migrate`, run as an operator would after interruptions, each a
// SIGKILL: keys migrate killed right after a few bundles, then again
// halfway through a bundle; then, halfway through a bundle, the source
// HSM daemon exporting it (in a run of one batch's keys), and the
// destination's daemon committing the bundles; then run to the end. After
// losing a daemon, keys migrate exits on its own, having carried on with
// the other members or failed saying what; the daemon, started again,
// opens with its state just before the kill or one whole bundle more,
// never a mix (the source's unchanged; every key of the destination
// member's one of the source's, once). Every extractable key is then on
// every destination member exactly once, as at the source, at the handle
// the report names; the report adds up (what the interrupted runs moved
// skipped, the rest moved, the non-extractable key refused); and one more
// run moves nothing and changes nothing. It logs the counts on a line
// starting "RELIABILITY kill-mid-migration:" (docs/RELIABILITY.md).
//
// $HSMBACKUP_TEST_MIGRATE_KEYS sets the number of keys the source holds
// (default 16,666, a full hsm2m.medium; at least 2,500, which four
// interrupted runs and the last need) for a quicker run.
func TestMigrateFullHSMInterrupted(t *testing.T) {
	// Not parallel, as the other tests of clusters of several daemon
	// processes: it keeps six daemons busy for minutes.
	const minKeys = 2500
	n := fullHSMKeys
	if s := os.Getenv(migrateKeysVar); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < minKeys || v > fullHSMKeys {
			t.Fatalf("$%s=%q: want a number of keys from %d to %d", migrateKeysVar, s, minKeys, fullHSMKeys)
		}
		n = v
	}
	extractable := n - 1 // and one that is not
	start := time.Now()
	phase := start
	lap := func(what string) {
		t.Logf("%s: %s", what, time.Since(phase).Round(100*time.Millisecond))
		phase = time.Now()
	}

	c, srcCfg := threeMembers(t)
	dstCfg := newDRCluster(t, c)
	lap("two clusters of three daemons")

	m := &migration{c: c, dir: filepath.Join(c.dir, "migration"), src: srcCfg, dst: dstCfg, alice: rand.Text()}
	if err := os.Mkdir(m.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m.alicePass = filepath.Join(m.dir, "alice.pw")
	if err := os.WriteFile(m.alicePass, []byte(m.alice+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	entry := func(members []string) map[string]any {
		return map[string]any{"members": members, "customer_ca": c.ca.Cert, "cert": c.cert, "key": c.key,
			"user": testOfficer, "password_file": c.passwordFile}
	}
	data, err := yaml.Marshal(map[string]any{
		"manufacturer_root": c.mfrRoot,
		"operator_root":     c.opRoot,
		"clusters":          map[string]any{testCluster: entry(srcCfg.Members), testDRCluster: entry(dstCfg.Members)},
	})
	if err != nil {
		t.Fatal(err)
	}
	m.config = filepath.Join(m.dir, "config.yaml")
	if err := os.WriteFile(m.config, data, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, s := range c.outputs {
			if strings.Contains(s, m.alice) {
				t.Errorf("alice's password appears in output:\n%.2000s", s)
			}
		}
	})

	// Alice, a crypto user of the same name and password on both clusters,
	// made by their officer.
	for _, id := range []string{testCluster, testDRCluster} {
		out := m.ok(t, "users", "create", "--cluster", id, "--name", "alice", "--role", "CU", "--new-password-file", m.alicePass)
		wantLines(t, out, "created crypto user alice on every member")
	}

	// The source filled: the extractable keys in batches of the most
	// keys generate makes at once, a label for each batch, and one key
	// that may never leave.
	gen := func(label string, count int, extra ...string) {
		t.Helper()
		out := m.ok(t, append([]string{"keys", "generate", "--cluster", testCluster, "--user", "alice", "--password-file", m.alicePass,
			"--type", "aes", "--usage", "encrypt,decrypt", "--label", label, "--count", fmt.Sprint(count)}, extra...)...)
		if out == "" {
			t.Fatalf("keys generate --label %s --count %d printed nothing", label, count)
		}
	}
	for i, batch := 0, 0; i < extractable; batch++ {
		count := min(1000, extractable-i)
		gen(fmt.Sprintf("k-%02d", batch), count, "--extractable")
		i += count
	}
	gen("fixed", 1)
	// This test tells keys apart by label and check value, and a check
	// value is 3 bytes: two keys of a batch of 1,000 share both with a
	// chance of 3%. (keys migrate tells them apart by origin, the source
	// handle: hsmcore/device TestMigrateSameLabelAndCheckValue.) For the
	// test's own bookkeeping one of each such pair is replaced by a key of
	// a label of its own.
	var srcKeys []hsmcore.KeyInfo
	for round := 0; ; round++ {
		srcKeys = m.keys(t, testCluster, "")
		seen := map[labelKCV]bool{}
		var twins []hsmcore.KeyInfo
		for _, k := range srcKeys {
			if seen[keyOf(k)] {
				twins = append(twins, k)
			}
			seen[keyOf(k)] = true
		}
		if len(twins) == 0 {
			break
		}
		if round == 3 {
			t.Fatalf("keys of the same label and check value at the source after %d rounds of replacing them: %+v", round, twins)
		}
		for i, k := range twins {
			t.Logf("key %d shares label %s and check value %s with another: replaced", k.Handle, k.Label, k.KCV)
			res := m.run(t, RunTimeout, "keys", "delete", "--cluster", testCluster, "--user", "alice", "--password-file", m.alicePass,
				"--handle", fmt.Sprint(k.Handle), "--yes")
			if res.Code != 0 || !strings.HasPrefix(res.Stdout, fmt.Sprintf("deleted key %d ", k.Handle)) {
				t.Fatalf("keys delete --handle %d: %s", k.Handle, res)
			}
			gen(fmt.Sprintf("k-twin-%d-%d", round, i), 1, "--extractable")
		}
	}
	wantInSync(t, srcCfg)
	if len(srcKeys) != n {
		t.Fatalf("the source lists %d keys, want %d", len(srcKeys), n)
	}
	want := map[labelKCV]hsmcore.KeyInfo{} // what must arrive
	var fixed hsmcore.KeyInfo
	for _, k := range srcKeys {
		if !k.Extractable {
			if fixed.Handle != 0 {
				t.Fatalf("two non-extractable keys at the source: %+v, %+v", fixed, k)
			}
			fixed = k
			continue
		}
		want[keyOf(k)] = k
	}
	if fixed.Label != "fixed" || len(want) != extractable {
		t.Fatalf("the source holds %d distinct extractable keys and non-extractable %+v; want %d and the key labelled fixed", len(want), fixed, extractable)
	}
	lap(fmt.Sprintf("alice on both clusters; %d keys generated at the source", n))

	// The first run is killed with SIGKILL right after a few bundles,
	// the second halfway through a bundle: as the destination commits it
	// or replicates it to its other members. The third, of one batch's
	// keys only (--label, so that keys are left for the fourth), loses
	// the source member exporting a bundle halfway through one; the
	// fourth, the destination member committing them. Keys migrate must
	// then exit on its own, having carried on with the other members (a
	// source member lost is skipped; so is a destination member, but only
	// until it holds the bundle's transport key) or failed, saying which
	// side. Each bundle commits as it comes: what they moved stays. A
	// daemon killed is started again and must open with its state just
	// before the kill or one whole bundle more, never a mix: the source's
	// unchanged (an export changes nothing but its audit log); each key of
	// the destination member's one of the source's, once.
	const after = 3      // bundles; minKeys leaves more for the last run
	const batch = "k-01" // the third run's: keys no run moved before
	labelled := 0
	for _, k := range want {
		if k.Label == batch {
			labelled++
		}
	}
	var runs []killed
	leftApart := false  // a kill left the destination's members in different states
	left := extractable // keys no run has logged as moved
	var cliKills, dstKills, srcKills int
	var reopenedBefore, reopenedAfter int // daemons killed that opened again with the state before the bundle, after it
	for i, r := range []struct {
		midBundle bool
		target    func(*testing.T) killTarget
		label     string
	}{
		{false, func(*testing.T) killTarget { return keysMigrate }, ""},
		{true, func(*testing.T) killTarget { return keysMigrate }, ""},
		{true, m.exporter, batch},
		{true, m.committer, ""},
	} {
		v := r.target(t)
		var extra []string
		bound := left
		if r.label != "" {
			extra, bound = []string{"--label", r.label}, min(left, labelled)
		}
		k := m.interrupted(t, after, r.midBundle, v, extra...)
		runs = append(runs, k)
		if k.done != min(k.lines*hsmcore.MaxBundleKeys, k.total) || k.total > bound || k.total <= 0 || i == 0 && k.total != bound {
			t.Fatalf("run %d logged %d bundles, the last done=%d of=%d; want done=%d of at most %d",
				i+1, k.lines, k.done, k.total, min(k.lines*hsmcore.MaxBundleKeys, k.total), bound)
		}
		left -= k.done // or fewer: the bundle it was in may have committed
		how := "killed"
		if k.daemon == "" {
			cliKills++
		} else {
			src := slices.Contains(srcCfg.Members, k.daemon)
			cfg, side := dstCfg, "destination"
			if src {
				cfg, side, srcKills = srcCfg, "source", srcKills+1
			} else {
				dstKills++
			}
			RestartDaemon(t, k.daemon)
			h, err := memberHealth(cfg, k.daemon)
			if err != nil {
				t.Fatalf("%s (%s), killed and started again: %v", v.what, k.daemon, err)
			}
			if tmp := temps(t, lookup(t, k.daemon).dir); len(tmp) > 0 {
				t.Errorf("%s (%s), started again: temporary files of a write left in its directory: %v", v.what, k.daemon, tmp)
			}
			// One bundle more: a full bundle's keys, or the last of all.
			grown := h.KeyCount - k.state.KeyCount
			switch {
			case h.StateDigest == k.state.StateDigest && h.KeyCount == k.state.KeyCount:
				reopenedBefore++
			case !src && (grown == hsmcore.MaxBundleKeys || grown > 0 && grown < hsmcore.MaxBundleKeys && h.KeyCount == extractable):
				reopenedAfter++
			default:
				t.Errorf("%s (%s), killed and started again, holds %d keys (state %.12s, version %v); just before the kill it held %d (state %.12s, version %v): neither that state nor one whole bundle more",
					v.what, k.daemon, h.KeyCount, h.StateDigest, h.StateVersion, k.state.KeyCount, k.state.StateDigest, k.state.StateVersion)
			}
			if !src {
				got := m.keys(t, testDRCluster, k.daemon)
				seen := map[labelKCV]bool{}
				for _, key := range got {
					s, ok := want[keyOf(key)]
					if !ok || seen[keyOf(key)] || key.Origin != hsmcore.KeyOrigin(testCluster, s.Handle) {
						t.Errorf("%s, killed and started again: key %d (%s %s, origin %s) twice or no extractable key of the source", k.daemon, key.Handle, key.Label, key.KCV, key.Origin)
					}
					seen[keyOf(key)] = true
				}
				if len(got) != h.KeyCount {
					t.Errorf("%s, killed and started again: alice's keys are %d of its %d", k.daemon, len(got), h.KeyCount)
				}
			}
			if t.Failed() {
				t.FailNow()
			}
			// Keys migrate said what happened: it stopped at once, naming the
			// side that failed, or carried on to the end without the daemon,
			// which its warnings name.
			if k.done == k.total && !regexp.MustCompile(`(?m)^time=\S+ level=WARN .* addr=`+regexp.QuoteMeta(k.daemon)+` `).MatchString(k.res.Stderr) {
				t.Errorf("keys migrate carried on to the end after %s (%s) was killed, and no warning names it:\n%s", v.what, k.daemon, k.res.Stderr)
			}
			switch d := digests(t, dstCfg); {
			case k.done < k.total:
				wantFailure(t, k.res, testCluster+" to "+testDRCluster+": "+side+": ", " (what moved stays: run it again to finish)")
				if k.afterKill > RunTimeout {
					t.Errorf("keys migrate stopped %s after %s was killed: it waited on the dead daemon", k.afterKill.Round(time.Second), v.what)
				}
			case !inSync(d):
				wantFailure(t, k.res, testDRCluster+": destination members ", " are down or out of sync")
			case r.label == "":
				wantFailure(t, k.res, fmt.Sprintf("1 of %d keys refused", n), "permission denied")
			case k.res.Code != 0:
				t.Fatalf("keys migrate --label %s, carried on to the end with the destination in sync: %s", r.label, k.res)
			}
			how = fmt.Sprintf("lost %s %s (exit %d %s after the kill)", v.what, k.daemon, k.res.Code, k.afterKill.Round(time.Millisecond))
		}
		where := "the destination's members in one state"
		switch d := digests(t, dstCfg); {
		case inSync(d):
		case leftApart:
			where = "the destination's members still in different states"
		default:
			where, leftApart = "while a bundle replicated: the destination's members in different states", true
		}
		lap(fmt.Sprintf("run %d, %s after %d bundles of %d keys (%s)", i+1, how, k.lines, k.total, where))
	}
	doneLogged := 0
	for _, k := range runs {
		doneLogged += k.done
	}
	last := runs[len(runs)-1]
	finished := last.done == last.total // the fourth run carried on to the end

	// The fifth run finishes it.
	reportFile := filepath.Join(m.dir, "report.json")
	res := m.run(t, migrateRunTimeout, m.migrateArgs("--report", reportFile)...)
	if leftApart {
		// It says so, and what to do, rather than exit as if all were done.
		wantFailure(t, res, testDRCluster+": destination members ", " are down or out of sync, so what moved is not on them yet: have the officer of "+testDRCluster+" open the cluster")
	} else {
		wantFailure(t, res, fmt.Sprintf("1 of %d keys refused", n), "permission denied")
	}
	var warnings []string
	for _, l := range strings.Split(res.Stderr, "\n") {
		if strings.Contains(l, " level=WARN ") {
			warnings = append(warnings, l)
		}
	}
	b, err := os.ReadFile(reportFile)
	if err != nil {
		t.Fatal(err)
	}
	var rep migrationReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("%s: %v", reportFile, err)
	}
	wantLines(t, res.Stdout[strings.LastIndexByte(strings.TrimSuffix(res.Stdout, "\n"), '\n')+1:],
		fmt.Sprintf("%s to %s: %d moved, %d skipped (present), 1 refused", testCluster, testDRCluster, rep.Moved, rep.Skipped))
	if rep.From != testCluster || rep.To != testDRCluster || rep.DryRun || len(rep.Keys) != n ||
		rep.Moved+rep.Skipped != extractable || rep.Refused != 1 {
		t.Fatalf("report: from %s to %s, dry run %t, %d keys: %d moved, %d skipped, %d refused; want %s to %s, %d keys: %d moved or skipped, 1 refused",
			rep.From, rep.To, rep.DryRun, len(rep.Keys), rep.Moved, rep.Skipped, rep.Refused, testCluster, testDRCluster, n, extractable)
	}
	// What the interrupted runs moved is skipped: at least the bundles
	// they logged, and perhaps the ones they were in, committed at the
	// destination before they could say so. The rest moved: something,
	// unless the fourth run carried on to the end.
	if rep.Skipped < doneLogged || (rep.Moved == 0) != finished || rep.Moved != extractable-rep.Skipped {
		t.Fatalf("report: %d moved, %d skipped; the interrupted runs had logged %d keys done of %d (the last carried on to the end: %t)",
			rep.Moved, rep.Skipped, doneLogged, extractable, finished)
	}
	t.Logf("the fifth run: %d moved, %d skipped (the interrupted runs logged %d), 1 refused", rep.Moved, rep.Skipped, doneLogged)
	reported := map[labelKCV]uint64{} // destination handles
	var counts = map[string]int{}
	for _, k := range rep.Keys {
		counts[k.Result]++
		if k.Source == fixed.Handle {
			if k.Result != hsmcore.Refused || k.Reason != "not extractable" || k.Handle != 0 || k.Label != fixed.Label || k.KCV != fixed.KCV {
				t.Errorf("report of the non-extractable key %d: %+v; want refused, not extractable", fixed.Handle, k)
			}
			continue
		}
		src, ok := want[labelKCV{k.Label, k.KCV}]
		switch {
		case !ok || src.Handle != k.Source:
			t.Errorf("report: %+v is no extractable key of the source", k)
		case k.Result == hsmcore.Moved && k.Handle != 0 && k.Reason == "":
		case k.Result == hsmcore.Skipped && k.Handle != 0 && k.Reason == "present: moved before (same origin and check value)":
		default:
			t.Errorf("report: %+v; want moved (a handle, no reason) or skipped (a handle, present)", k)
		}
		if _, dup := reported[labelKCV{k.Label, k.KCV}]; dup {
			t.Errorf("report: key %s %s twice", k.Label, k.KCV)
		}
		reported[labelKCV{k.Label, k.KCV}] = k.Handle
	}
	if counts[hsmcore.Moved] != rep.Moved || counts[hsmcore.Skipped] != rep.Skipped || counts[hsmcore.Refused] != rep.Refused {
		t.Errorf("report: the keys listed are %v, the totals %d moved, %d skipped, %d refused", counts, rep.Moved, rep.Skipped, rep.Refused)
	}
	if t.Failed() {
		t.FailNow()
	}
	lap(fmt.Sprintf("run 5 to the end: %d moved, %d skipped", rep.Moved, rep.Skipped))

	// A member a kill left behind is out of use to a crypto user's
	// session, which cannot re-sync it: the run went on without it, and
	// it catches up at the officer's next open (docs/MIGRATION.md), here
	// `users list` as the config's officer.
	if d := digests(t, dstCfg); !inSync(d) {
		if !leftApart {
			t.Fatalf("keys migrate left the destination's members in different states, no kill had: %v\n%s", d, strings.Join(warnings, "\n"))
		}
		t.Logf("the run left the members a kill had left behind out of use:\n%s", strings.Join(warnings, "\n"))
		res := m.run(t, RunTimeout, "users", "list", "--cluster", testDRCluster)
		if res.Code != 0 || !strings.Contains(res.Stderr, `msg="member re-synced"`) {
			t.Fatalf("users list as the officer of %s, to re-sync its members: %s", testDRCluster, res)
		}
		lap("the officer's open re-synced the destination")
	} else if len(warnings) > 0 {
		t.Errorf("keys migrate warned, with the destination in sync:\n%s", strings.Join(warnings, "\n"))
	}

	// Every member of the destination holds each key once, as the
	// source holds it, at the handle the report gives.
	wantInSync(t, dstCfg)
	atEnd := extractable // keys on each destination member, the fewest
	for _, addr := range dstCfg.Members {
		got := m.keys(t, testDRCluster, addr)
		seen := map[labelKCV]bool{}
		for _, k := range got {
			src, ok := want[keyOf(k)]
			switch {
			case seen[keyOf(k)]:
				t.Errorf("%s: key %s %s twice (handle %d)", addr, k.Label, k.KCV, k.Handle)
			case !ok:
				t.Errorf("%s: key %d (%s %s) is no extractable key of the source", addr, k.Handle, k.Label, k.KCV)
			case k.Handle != reported[keyOf(k)]:
				t.Errorf("%s: key %s %s has handle %d, the report says %d", addr, k.Label, k.KCV, k.Handle, reported[keyOf(k)])
			case k.Owner != "alice" || !k.Token || k.Local || k.Type != src.Type || k.Bits != src.Bits ||
				k.Encrypt != src.Encrypt || k.Decrypt != src.Decrypt || k.Extractable != src.Extractable || k.Sign || k.Wrap || k.Unwrap:
				t.Errorf("%s: key %d %+v; the source's %+v (not local)", addr, k.Handle, k, src)
			}
			seen[keyOf(k)] = true
		}
		if len(got) != extractable || len(seen) != extractable {
			t.Errorf("%s holds %d keys of alice's (%d distinct), want %d", addr, len(got), len(seen), extractable)
		}
		atEnd = min(atEnd, len(seen))
		if t.Failed() {
			t.FailNow()
		}
	}
	lap("every destination member checked")

	// Once more: it moves nothing and changes nothing.
	before := digests(t, dstCfg)
	res = m.run(t, migrateRunTimeout, m.migrateArgs("--json")...)
	wantFailure(t, res, fmt.Sprintf("1 of %d keys refused", n), "permission denied")
	lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	var again migrationReport
	if err := json.Unmarshal([]byte(lines[0]), &again); err != nil {
		t.Fatalf("keys migrate --json: %v\n%.2000s", err, res.Stdout)
	}
	if again.Moved != 0 || again.Skipped != extractable || again.Refused != 1 || len(again.Keys) != n {
		t.Fatalf("the last run: %d keys: %d moved, %d skipped, %d refused; want %d: 0 moved, %d skipped, 1 refused",
			len(again.Keys), again.Moved, again.Skipped, again.Refused, n, extractable)
	}
	if after := digests(t, dstCfg); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("the last run changed the destination: state digests %v, were %v", after, before)
	}
	wantInSync(t, srcCfg)
	lap("run 6: nothing to move")
	t.Logf("%d keys in %s", n, time.Since(start).Round(time.Second))
	daemonKills := dstKills + srcKills
	toFinish := 1 // the fifth run
	if finished {
		toFinish = 0
	}
	t.Logf("RELIABILITY kill-mid-migration: %d SIGKILLs (CLI %d, destination daemon %d, source daemon %d); daemons reopened with whole bundles %d of %d (the state just before the kill %d, one bundle more %d), with a mix %d; keys at the end %d of %d on each of %d members, none twice; runs to finish after the kills %d",
		cliKills+daemonKills, cliKills, dstKills, srcKills, reopenedBefore+reopenedAfter, daemonKills,
		reopenedBefore, reopenedAfter, daemonKills-reopenedBefore-reopenedAfter, atEnd, extractable, len(dstCfg.Members), toFinish)
}
