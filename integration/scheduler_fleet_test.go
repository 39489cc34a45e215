package integration

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
	"github.com/hsmbackup/hsmbackup/internal/miniotest"
	"github.com/hsmbackup/hsmbackup/internal/testpki"
	"github.com/hsmbackup/hsmbackup/scheduler"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// fleetEnv is a fleet of clusters, one HSM daemon process each, sharing
// one manufacturer, operator and customer CA, backed up to a MinIO
// bucket, with the config file the scheduler's replicas share.
type fleetEnv struct {
	dir    string
	config string
	ids    []string
	srv    *miniotest.Server
	bucket string
	env    []string // S3 credentials
	cfg    map[string]any
	// mfr and op are the authorities every HSM of the fleet is
	// manufactured by (newHSM makes more).
	mfr, op *device.Authority
}

const fleetPassword = "fleet officer password 7f3a"

// newFleetEnv serves n clusters (fleet-00, fleet-01…) on schedule, each
// HSM an `hsm serve` process.
func newFleetEnv(t testing.TB, n int, schedule string) *fleetEnv {
	t.Helper()
	return newFleetEnvServed(t, n, schedule, StartDaemon)
}

// newFleetEnvServed is newFleetEnv with each HSM's device directory served
// by serve, which returns its address.
func newFleetEnvServed(t testing.TB, n int, schedule string, serve func(tb testing.TB, deviceDir string) string) *fleetEnv {
	t.Helper()
	dir := t.TempDir()
	mfr, err := device.NewAuthority(device.Manufacturer, "acme")
	if err != nil {
		t.Fatal(err)
	}
	op, err := device.NewAuthority(device.Operator, "cloud")
	if err != nil {
		t.Fatal(err)
	}
	mfrRoots, opRoots := x509.NewCertPool(), x509.NewCertPool()
	mfrRoots.AddCert(mfr.Certificate())
	opRoots.AddCert(op.Certificate())
	ca := testpki.NewCA(t, "fleet customer CA")
	client := ca.Client(t, "fleet-scheduler")
	keyDER, err := x509.MarshalPKCS8PrivateKey(client.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte, perm os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, perm); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pemOf := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	write("customer-ca.pem", pemOf("CERTIFICATE", ca.Cert.Raw), 0o644)
	write("client.pem", pemOf("CERTIFICATE", client.Certificate[0]), 0o644)
	write("client.key", pemOf("PRIVATE KEY", keyDER), 0o600)
	write("password", []byte(fleetPassword+"\n"), 0o600)
	write("mfr-root.pem", pemOf("CERTIFICATE", mfr.Certificate().Raw), 0o644)
	write("op-root.pem", pemOf("CERTIFICATE", op.Certificate().Raw), 0o644)
	if _, err := wrap.GenerateMasterKey(filepath.Join(dir, "keyring"), "fleet"); err != nil {
		t.Fatal(err)
	}
	if _, err := backup.GenerateSigningKey(filepath.Join(dir, "signing.key"), filepath.Join(dir, "signing.pub")); err != nil {
		t.Fatal(err)
	}

	f := &fleetEnv{dir: dir, srv: miniotest.Shared(t), mfr: mfr, op: op}
	f.bucket = f.srv.NewBucket(t, miniotest.BucketOptions{})
	f.env = []string{"AWS_ACCESS_KEY_ID=" + f.srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + f.srv.SecretKey}
	clusters := map[string]any{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8) // a thousand at once would outrun the bootstrap's timeouts
	for i := range n {
		id := fmt.Sprintf("fleet-%02d", i)
		f.ids = append(f.ids, id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			devDir := filepath.Join(dir, "hsm-"+id)
			d, claim, err := device.Manufacture(devDir, device.ManufactureConfig{Manufacturer: mfr, Operator: op, Class: testClass, Firmware: testFirmware},
				device.Options{PasswordIterations: TestPasswordIterations})
			if err != nil {
				t.Error(err)
				return
			}
			d.Close()
			addr := serve(t, devDir)
			hsmtest.InitCluster(t, addr, claim, mfrRoots, opRoots, ca, id, testOfficer, fleetPassword)
			mu.Lock()
			clusters[id] = map[string]any{
				"members": []string{addr}, "customer_ca": "customer-ca.pem", "cert": "client.pem", "key": "client.key",
				"user": testOfficer, "password_file": "password", "schedule": schedule,
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	f.cfg = map[string]any{
		"store":             fmt.Sprintf("s3://%s/fleet?endpoint=%s&region=us-east-1", f.bucket, f.srv.URL()),
		"keyring":           "keyring",
		"signing_key":       "signing.key",
		"public_key":        "signing.pub",
		"manufacturer_root": "mfr-root.pem",
		"operator_root":     "op-root.pem",
		"retention":         map[string]any{"keep_last": 50},
		"scheduler":         map[string]any{"concurrency": 4, "jitter": "0s", "lease_duration": "3s", "drain_timeout": "20s"},
		"clusters":          clusters,
	}
	f.writeConfig(t)
	return f
}

// newHSM manufactures a new HSM of the fleet's authorities in the fleet's
// directory, named name, has serve serve it and returns its address and
// the claim file written for it (relative to the config's directory).
func (f *fleetEnv) newHSM(t testing.TB, name string, serve func(tb testing.TB, deviceDir string) string) (addr, claimFile string) {
	t.Helper()
	dir := filepath.Join(f.dir, name)
	d, claim, err := device.Manufacture(dir, device.ManufactureConfig{Manufacturer: f.mfr, Operator: f.op, Class: testClass, Firmware: testFirmware},
		device.Options{PasswordIterations: TestPasswordIterations})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if err := os.WriteFile(dir+".claim", claim.Marshal(), 0o600); err != nil {
		t.Fatal(err)
	}
	return serve(t, dir), name + ".claim"
}

func (f *fleetEnv) writeConfig(t testing.TB) {
	t.Helper()
	b, err := yaml.Marshal(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.config = filepath.Join(f.dir, "config.yaml")
	if err := os.WriteFile(f.config, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// cli runs hsmbackup --config with the fleet's environment; it must
// succeed.
func (f *fleetEnv) cli(t testing.TB, args ...string) string {
	t.Helper()
	res := RunWith(t, RunOptions{Env: f.env}, append([]string{"--config", f.config}, args...)...)
	if res.Code != 0 {
		t.Fatalf("hsmbackup %s: %s", strings.Join(args, " "), res)
	}
	return res.Stdout
}

// backups lists the READY backups per cluster, by `backup list --json`.
func (f *fleetEnv) backups(t *testing.T) map[string][]summary {
	t.Helper()
	out := map[string][]summary{}
	for _, line := range strings.Split(strings.TrimSpace(f.cli(t, "backup", "list", "--json", "--state", "READY")), "\n") {
		var s summary
		var typ struct {
			MessageType string `json:"message_type"`
		}
		if json.Unmarshal([]byte(line), &typ) != nil || typ.MessageType != "result" || json.Unmarshal([]byte(line), &s) != nil {
			continue
		}
		out[s.ClusterID] = append(out[s.ClusterID], s)
	}
	return out
}

// replica is one `scheduler run` process.
type replica struct {
	name, listen string
	cmd          *exec.Cmd
	logs         *syncBuffer
	exited       chan struct{}
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startReplica starts a `scheduler run` process, killed when the test
// ends if still running.
func (f *fleetEnv) startReplica(t testing.TB, name string) *replica {
	t.Helper()
	return f.startReplicaOf(t, name, Binary(t))
}

// startReplicaOf is startReplica running bin (RaceBinary, say).
func (f *fleetEnv) startReplicaOf(t testing.TB, name, bin string) *replica {
	t.Helper()
	r := &replica{name: name, listen: freeAddr(t), logs: new(syncBuffer), exited: make(chan struct{})}
	r.cmd = exec.Command(bin, "--config", f.config, "scheduler", "run", "--listen", r.listen, "--replica", name)
	r.cmd.Env = append(os.Environ(), f.env...)
	r.cmd.Stdout, r.cmd.Stderr = r.logs, r.logs
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.cmd.Wait(); close(r.exited) }() //nolint:errcheck // the exit code is read from ProcessState
	t.Cleanup(func() {
		r.cmd.Process.Kill() //nolint:errcheck // gone already if it exited
		<-r.exited
		if t.Failed() {
			t.Logf("replica %s log:\n%s", name, r.logs)
		}
	})
	return r
}

// stop sends sig and waits for the exit; it returns the exit code.
func (r *replica) stop(t testing.TB, sig syscall.Signal, within time.Duration) int {
	t.Helper()
	r.cmd.Process.Signal(sig) //nolint:errcheck
	select {
	case <-r.exited:
	case <-time.After(within):
		t.Fatalf("replica %s: no exit within %s of %s", r.name, within, sig)
	}
	return r.cmd.ProcessState.ExitCode()
}

func (r *replica) get(t testing.TB, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + r.listen + path)
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

// TestSchedulerReplicas: three `scheduler run` processes share twenty
// clusters of HSM daemon processes on a four-second schedule, against a
// real MinIO. Every slot of every cluster from the first to the last is
// backed up exactly once; SIGTERM drains each replica to exit 0; any
// replica's status page, /metrics and `scheduler status` report every
// cluster.
func TestSchedulerReplicas(t *testing.T) {
	const spec = "*/4 * * * * *"
	f := newFleetEnv(t, 20, spec)
	var rs []*replica
	for i := range 3 {
		rs = append(rs, f.startReplica(t, fmt.Sprintf("r%d", i+1)))
	}
	time.Sleep(17 * time.Second)

	// Before the stop: the page and the metrics of one replica.
	page := rs[0].get(t, "/")
	var p = expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(rs[1].get(t, "/metrics")))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	for _, r := range rs {
		if code := r.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
			t.Errorf("replica %s: exit %d after SIGTERM, want 0", r.name, code)
		}
	}

	sched, err := scheduler.ParseSchedule(spec)
	if err != nil {
		t.Fatal(err)
	}
	all := f.backups(t)
	ran := map[string]int{} // backups per replica, from the logs
	for _, r := range rs {
		ran[r.name] = strings.Count(r.logs.String(), `"msg":"backup done"`)
	}
	total := 0
	for _, id := range f.ids {
		slots := map[time.Time]int{}
		var first, last time.Time
		for _, b := range all[id] {
			s := scheduler.Last(sched, b.Created).UTC()
			slots[s]++
			if first.IsZero() || s.Before(first) {
				first = s
			}
			if s.After(last) {
				last = s
			}
		}
		total += len(all[id])
		if len(slots) < 3 {
			t.Errorf("%s: %d slots backed up in 17 s of a 4 s schedule", id, len(slots))
			continue
		}
		for s := first; !s.After(last); s = s.Add(4 * time.Second) {
			if slots[s] != 1 {
				t.Errorf("%s: slot %s backed up %d times, want once", id, s.Format(time.TimeOnly), slots[s])
			}
		}
		if !strings.Contains(page, `id="cluster-`+id+`"`) {
			t.Errorf("the status page has no row for %s", id)
		}
	}
	if sum := ran["r1"] + ran["r2"] + ran["r3"]; sum != total {
		t.Errorf("the replicas logged %d backups, %d are listed", sum, total)
	}
	for name, n := range ran {
		if n == 0 {
			t.Errorf("replica %s took no slot: the fleet was not shared", name)
		}
	}
	got := map[string]bool{}
	for _, m := range fams["hsmbackup_last_success_timestamp_seconds"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "cluster" {
				got[l.GetValue()] = m.GetGauge().GetValue() > 0
			}
		}
	}
	for _, id := range f.ids {
		if !got[id] {
			t.Errorf("/metrics has no last success for %s", id)
		}
	}

	status := f.cli(t, "scheduler", "status", "--json")
	if n := strings.Count(status, `"message_type":"result"`); n != 20 {
		t.Errorf("scheduler status reports %d clusters, want 20:\n%s", n, status)
	}
	if strings.Contains(status, `"colour":"red"`) {
		t.Errorf("a cluster is red after a clean run:\n%s", status)
	}
	for _, r := range rs {
		if strings.Contains(r.logs.String(), fleetPassword) || strings.Contains(r.logs.String(), f.srv.SecretKey) {
			t.Errorf("replica %s logged a secret", r.name)
		}
	}
	t.Logf("backups per replica: %v; %d in all", ran, total)
}

// TestSchedulerKilledHolder: the replica that holds a cluster's lease is
// killed (SIGKILL) in the middle of the backup: nothing partial is
// listed, and another replica completes the slot once the lease expires.
func TestSchedulerKilledHolder(t *testing.T) {
	const spec = "0 0 1 1 *" // yearly: the slot of the start, no other during the test
	f := newFleetEnv(t, 1, spec)
	id := f.ids[0]
	// A slow upload: each image PUT waits 4 s before it reaches MinIO (the
	// leases' writes do not), so the kill lands mid-backup.
	proxy := newDelayProxy(t, f.srv.Endpoint, func(r *http.Request) bool {
		return r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/image")
	}, 4*time.Second)
	f.cfg["store"] = fmt.Sprintf("s3://%s/fleet?endpoint=%s&region=us-east-1", f.bucket, proxy)
	f.writeConfig(t)

	a := f.startReplica(t, "a")
	waitFor(t, "a's backup to start", a.exited, a.logs, func() bool { return strings.Contains(a.logs.String(), `"msg":"backup started"`) })
	b := f.startReplica(t, "b")
	time.Sleep(time.Second) // mid-backup
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-a.exited
	if strings.Contains(a.logs.String(), `"msg":"backup done"`) {
		t.Fatal("the backup finished before the kill: the test needs a slower store")
	}
	if n := len(f.backups(t)[id]); n != 0 {
		t.Fatalf("%d backups listed after the holder was killed mid-backup", n)
	}
	waitFor(t, "b to complete the slot", b.exited, b.logs, func() bool { return strings.Contains(b.logs.String(), `"msg":"backup done"`) })
	if code := b.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Errorf("b: exit %d", code)
	}
	bs := f.backups(t)[id]
	if len(bs) != 1 {
		t.Fatalf("%d backups after the takeover, want 1", len(bs))
	}
	if !strings.Contains(b.logs.String(), `"generation":2`) {
		t.Error("b did not take the lease over (generation 2)")
	}
	// The killed replica's image object is a stray, not a backup.
	var strays []string
	for oi := range f.srv.Client(t).ListObjects(context.Background(), f.bucket, minio.ListObjectsOptions{Prefix: "fleet/clusters/", Recursive: true}) {
		if strings.HasSuffix(oi.Key, "/image") && !strings.Contains(oi.Key, bs[0].ID) {
			strays = append(strays, oi.Key)
		}
	}
	t.Logf("stray objects of the killed replica: %v", strays)
}

// newDelayProxy is a reverse proxy to the S3 endpoint that holds the
// requests slow selects for d before forwarding them; it returns its URL.
func newDelayProxy(t *testing.T, endpoint string, slow func(*http.Request) bool, d time.Duration) string {
	t.Helper()
	target, err := url.Parse("http://" + endpoint)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target) // keeps the signed Host
	rp.ErrorLog = log.New(io.Discard, "", 0)         // a killed client is expected
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slow(r) {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestSchedulerDrainCancels: SIGTERM while a backup is under way, with a
// drain timeout shorter than the backup: the replica cancels it and exits
// 130 (interrupted), nothing is listed, the lease is released as failed
// (free for another replica at once) and no upload is left behind.
func TestSchedulerDrainCancels(t *testing.T) {
	f := newFleetEnv(t, 1, "0 0 1 1 *")
	id := f.ids[0]
	proxy := newDelayProxy(t, f.srv.Endpoint, func(r *http.Request) bool {
		return r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/image")
	}, 10*time.Second)
	f.cfg["store"] = fmt.Sprintf("s3://%s/fleet?endpoint=%s&region=us-east-1", f.bucket, proxy)
	f.cfg["scheduler"].(map[string]any)["drain_timeout"] = "1s"
	f.writeConfig(t)

	r := f.startReplica(t, "a")
	waitFor(t, "the backup to start", r.exited, r.logs, func() bool { return strings.Contains(r.logs.String(), `"msg":"backup started"`) })
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	if code := r.stop(t, syscall.SIGTERM, 20*time.Second); code != 130 {
		t.Errorf("exit %d after a drain that cancelled a backup, want 130", code)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("the drain took %s with a 1 s drain timeout", d)
	}
	if n := len(f.backups(t)[id]); n != 0 {
		t.Fatalf("%d backups listed after a cancelled run", n)
	}
	cl := f.srv.Client(t)
	obj, err := cl.GetObject(context.Background(), f.bucket, "fleet/scheduler/leases/backup/"+id+".json", minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var lease struct {
		State  string `json:"state"`
		Holder string `json:"holder"`
	}
	if err := json.NewDecoder(obj).Decode(&lease); err != nil {
		t.Fatal(err)
	}
	if lease.State != "failed" || lease.Holder != "a" {
		t.Errorf("lease after the drain: %+v, want released as failed by a", lease)
	}
	if up := incompleteUploads(t, f.srv, f.bucket); len(up) > 0 {
		t.Errorf("incomplete uploads left: %q", up)
	}
	for oi := range cl.ListObjects(context.Background(), f.bucket, minio.ListObjectsOptions{Prefix: "fleet/clusters/", Recursive: true}) {
		t.Errorf("object left by the cancelled backup: %s", oi.Key)
	}
}

// TestSchedulerCatchUpAfterDowntime: a replica that was down over
// several slots takes one catch-up backup when it starts again, for the
// latest slot, not one per missed slot.
func TestSchedulerCatchUpAfterDowntime(t *testing.T) {
	const spec = "*/3 * * * * *"
	sched, err := scheduler.ParseSchedule(spec)
	if err != nil {
		t.Fatal(err)
	}
	f := newFleetEnv(t, 1, spec)
	id := f.ids[0]
	r := f.startReplica(t, "a")
	waitFor(t, "the first backup", r.exited, r.logs, func() bool { return strings.Contains(r.logs.String(), `"msg":"backup done"`) })
	if code := r.stop(t, syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	stopped := time.Now()
	time.Sleep(8 * time.Second) // two or three slots go by
	restart := time.Now()
	r = f.startReplica(t, "a")
	waitFor(t, "the catch-up", r.exited, r.logs, func() bool { return strings.Contains(r.logs.String(), `"msg":"backup done"`) })
	if code := r.stop(t, syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	// The slot a backup ran for is in the log: a backup's creation time
	// may fall in the next slot when it starts just before the boundary.
	catchUp := scheduler.Last(sched, restart).UTC()
	for _, b := range f.backups(t)[id] {
		if b.Created.After(stopped) && b.Created.Before(restart) {
			t.Errorf("backup %s made while the replica was down", b.ID)
		}
	}
	logs := r.logs.String()
	first := regexp.MustCompile(`"msg":"backup started"[^\n]*"slot":"([^"]+)"`).FindStringSubmatch(logs)
	if first == nil || first[1] != catchUp.Format(time.RFC3339) {
		t.Errorf("first backup after the restart: %v, want one for the catch-up slot %s", first, catchUp.Format(time.RFC3339))
	}
	n := strings.Count(logs, `"msg":"backup done","replica":"a","cluster":"`+id+`","job":"backup","slot":"`+catchUp.Format(time.RFC3339)+`"`)
	if n != 1 {
		t.Errorf("%d backups for the catch-up slot %s, want 1", n, catchUp.Format(time.TimeOnly))
	}
}
