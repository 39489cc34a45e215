package integration

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
)

// service is the backup service's side of a test, set up with the CLI as
// an operator would: a master keyring, a manifest signing key, and a YAML
// config naming them, the store and the cluster.
type service struct {
	c          *cluster
	dir        string
	keyring    string
	signingKey string
	publicKey  string
	config     string   // the YAML config file
	store      string   // the store URL
	storeDir   string   // the file store's directory; "" for S3
	env        []string // added to every command's environment (S3 credentials)
	source     string   // serial of the HSM backup create must pick
}

// newService makes the keys with the CLI and writes the config for the
// store at storeURL (a file store if it is file://).
func newService(t testing.TB, c *cluster, storeURL string, env ...string) *service {
	t.Helper()
	dir, err := os.MkdirTemp(c.dir, "service-")
	if err != nil {
		t.Fatal(err)
	}
	s := &service{c: c, dir: dir, store: storeURL, env: env, source: c.serial,
		keyring:    filepath.Join(dir, "master.keyring"),
		signingKey: filepath.Join(dir, "signing.key"),
		publicKey:  filepath.Join(dir, "signing.pub"),
	}
	s.storeDir, _ = strings.CutPrefix(storeURL, "file://")
	out := s.ok(t, "masterkey", "generate", "--keyring", s.keyring, "--id", "backups")
	wantLines(t, out, "generated master key backups v1")
	out = s.ok(t, "signing-key", "generate", "--key", s.signingKey, "--pub", s.publicKey)
	wantLines(t, out, "generated manifest signing key "+s.signingKey+" (public key "+s.publicKey)
	s.config = s.writeConfig(t, "config.yaml", storeURL, c.addr)
	return s
}

// writeConfig writes a config for store and the cluster of members,
// named name, in the service's directory and returns its path. Paths in
// it are relative to it, as an operator would write them, but for the
// cluster's files.
func (s *service) writeConfig(t testing.TB, name, store string, members ...string) string {
	t.Helper()
	cfg := map[string]any{
		"store":             store,
		"keyring":           filepath.Base(s.keyring),
		"signing_key":       filepath.Base(s.signingKey),
		"public_key":        filepath.Base(s.publicKey),
		"manufacturer_root": s.c.mfrRoot,
		"operator_root":     s.c.opRoot,
		"retention":         map[string]int{"days": 30, "keep_last": 1},
		"clusters": map[string]any{
			testCluster: map[string]any{
				"members":       members,
				"customer_ca":   s.c.ca.Cert,
				"cert":          s.c.cert,
				"key":           s.c.key,
				"user":          testOfficer,
				"password_file": s.c.passwordFile,
				"tags":          map[string]string{"owner": "payments"},
			},
		},
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(s.dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// run runs hsmbackup with the service's environment and records the
// output, to be searched for the officer's password.
func (s *service) run(t testing.TB, args ...string) Result {
	t.Helper()
	res := RunWith(t, RunOptions{Env: s.env}, args...)
	s.c.outputs = append(s.c.outputs, res.Stdout, res.Stderr)
	return res
}

// ok is run, failing t unless the command succeeds. It returns stdout.
func (s *service) ok(t testing.TB, args ...string) string {
	t.Helper()
	res := s.run(t, args...)
	if res.Code != 0 {
		t.Fatalf("hsmbackup %s: %s", strings.Join(args, " "), res)
	}
	return res.Stdout
}

// cli runs hsmbackup --config CONFIG args..., which must succeed.
func (s *service) cli(t testing.TB, args ...string) string {
	t.Helper()
	return s.ok(t, append([]string{"--config", s.config}, args...)...)
}

// cliRes runs hsmbackup --config CONFIG args... and returns the result.
func (s *service) cliRes(t testing.TB, args ...string) Result {
	t.Helper()
	return s.run(t, append([]string{"--config", s.config}, args...)...)
}

var createdLine = regexp.MustCompile(`(?m)^created (backup-\d{8}T\d{6}Z-[a-z2-7]{10}): cluster (\S+), from HSM (\S+), \d+(\.\d)? (B|[KMG]iB) stored, sha256 ([0-9a-f]{64})$`)

// create runs backup create for the cluster and returns the new backup's
// id, checking the line it prints.
func (s *service) create(t testing.TB, extra ...string) string {
	t.Helper()
	out := s.cli(t, append([]string{"backup", "create", "--cluster", testCluster}, extra...)...)
	m := createdLine.FindStringSubmatch(out)
	if m == nil || m[2] != testCluster || m[3] != s.source {
		t.Fatalf("backup create printed no line \"created ID: cluster %s, from HSM %s, SIZE stored, sha256 HEX\":\n%s", testCluster, s.source, out)
	}
	return m[1]
}

// summary is an entry of `backup list --json`.
type summary struct {
	ID        string    `json:"backup_id"`
	ClusterID string    `json:"cluster_id"`
	State     string    `json:"state"`
	Created   time.Time `json:"created"`
	Source    struct {
		Serial string `json:"serial"`
	} `json:"source"`
	ObjectSize   int64             `json:"object_size"`
	ObjectSHA256 string            `json:"object_sha256"`
	NeverExpires bool              `json:"never_expires"`
	Tags         map[string]string `json:"tags"`
	SourceBackup string            `json:"source_backup_id"`
}

// list runs backup list --json with args and parses it.
func (s *service) list(t testing.TB, args ...string) []summary {
	t.Helper()
	out := s.cli(t, append([]string{"backup", "list", "--json"}, args...)...)
	got := []summary{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") { // JSON lines: a result per backup, then a summary
		var typ struct {
			MessageType string `json:"message_type"`
		}
		var s summary
		if err := json.Unmarshal([]byte(line), &typ); err != nil {
			t.Fatalf("backup list --json: %v\n%s", err, out)
		}
		if typ.MessageType != "result" {
			continue
		}
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("backup list --json: %v\n%s", err, out)
		}
		got = append(got, s)
	}
	return got
}

// object returns the path of a backup's object in the file store.
func (s *service) object(id, name string) string {
	if s.storeDir == "" {
		panic("integration: object of an S3 store")
	}
	return filepath.Join(s.storeDir, "clusters", testCluster, "backups", id, name)
}

// newHSM manufactures a new HSM of the cluster's class and manufacturer
// with the CLI, for the operator authority in opDir, at firmware, serves
// it and returns its address. Its claim file (DIR.claim, as hsm
// manufacture wrote it) is c.claims[addr].
func (c *cluster) newHSM(t testing.TB, name, opDir, firmware string, manufacture ...string) string {
	t.Helper()
	dir := filepath.Join(c.dir, name)
	c.run(t, append([]string{"hsm", "manufacture", "--class", testClass, "--firmware", firmware,
		"--manufacturer", filepath.Join(c.dir, "mfr"), "--operator", opDir, "--out", dir}, manufacture...)...)
	addr := StartDaemon(t, dir)
	if c.claims == nil {
		c.claims = map[string]string{}
	}
	c.claims[addr] = dir + ".claim"
	t.Cleanup(func() { // before the daemon's cleanup, which forgets its log
		if log := DaemonLogIfRunning(addr); strings.Contains(log, c.password) {
			t.Errorf("the officer's password appears in the log of the HSM on %s:\n%s", addr, log)
		}
	})
	return addr
}

// claimArgs are the --claim flags an operator gives to set up the new
// HSMs on addrs, those newHSM made; the others need none.
func (c *cluster) claimArgs(addrs ...string) []string {
	var args []string
	for _, a := range addrs {
		if f, ok := c.claims[a]; ok {
			args = append(args, "--claim", f)
		}
	}
	return args
}

// health returns what the HSM on addr reports of itself, trusting it as a
// new device or as a member of the cluster.
func (c *cluster) health(t testing.TB, addr string) api.Health {
	t.Helper()
	cl := c.memberClient(t, addr)
	h, err := cl.Health(context.Background())
	if err != nil {
		t.Fatalf("health of %s: %v", addr, err)
	}
	return h
}

// memberClient returns a client of the HSM on addr with the officer's
// client certificate, trusting it as a member of the cluster or, before
// it is one, as a device of the manufacturer.
func (c *cluster) memberClient(t testing.TB, addr string) *client.Client {
	t.Helper()
	return c.clientIn(t, addr, testCluster)
}

// clientIn is memberClient for an HSM of cluster.
func (c *cluster) clientIn(t testing.TB, addr, cluster string) *client.Client {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(c.cert, c.key)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(loadCert(t, c.mfrRoot))
	cl, err := client.New(client.Config{Addr: addr, Certificate: &pair, CustomerCA: loadCert(t, c.ca.Cert),
		ClusterID: cluster, ManufacturerRoots: roots, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// wantUnchanged fails t unless the HSM on addr reports the state before.
func (c *cluster) wantUnchanged(t *testing.T, addr string, before api.Health) {
	t.Helper()
	h := c.health(t, addr)
	if h.StateDigest != before.StateDigest || h.Initialized != before.Initialized || h.ClusterInitialized != before.ClusterInitialized {
		t.Fatalf("HSM %s changed: state digest %s (initialized %t, in cluster %t), was %s (%t, %t)", addr,
			h.StateDigest, h.Initialized, h.ClusterInitialized, before.StateDigest, before.Initialized, before.ClusterInitialized)
	}
}

// appKeys are a crypto user's keys on the cluster and what was done with
// them, to prove a restored HSM holds them.
type appKeys struct {
	user, password string
	aes, ec        uint64
	plain, ct, aad []byte
	sig            []byte
}

// addAppKeys has the officer create a crypto user, who makes an AES key
// and an EC key, encrypts with one and signs with the other.
func (c *cluster) addAppKeys(t *testing.T) *appKeys {
	t.Helper()
	ctx := context.Background()
	k := &appKeys{user: "app", password: c.password + "-app", plain: []byte("payroll batch " + rand.Text()), aad: []byte("march")}
	co := c.client(t, c.cert, c.key)
	if _, err := co.Login(ctx, testOfficer, c.password); err != nil {
		t.Fatal(err)
	}
	if err := co.CreateUser(ctx, k.user, hsmcore.CryptoUser, k.password); err != nil {
		t.Fatal(err)
	}
	cu := c.client(t, c.cert, c.key)
	if _, err := cu.Login(ctx, k.user, k.password); err != nil {
		t.Fatal(err)
	}
	keys, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{
		{Type: hsmcore.AES, Bits: 256, Label: "payroll", Encrypt: true, Decrypt: true},
		{Type: hsmcore.EC, Curve: "P-256", Label: "signer", Sign: true, Verify: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	k.aes, k.ec = keys[0].Handle, keys[1].Handle
	if k.ct, err = cu.Encrypt(ctx, k.aes, k.plain, k.aad); err != nil {
		t.Fatal(err)
	}
	if k.sig, err = cu.Sign(ctx, k.ec, k.plain); err != nil {
		t.Fatal(err)
	}
	return k
}

// check logs in to the HSM on addr as the crypto user, over mutual TLS
// with a client certificate of the cluster's customer CA, and proves the
// keys are there: the ciphertext decrypts, the signature verifies (and a
// forged one does not), and both keys still do new work.
func (k *appKeys) check(t *testing.T, c *cluster, addr string) {
	t.Helper()
	ctx := context.Background()
	pair, err := tls.LoadX509KeyPair(c.cert, c.key)
	if err != nil {
		t.Fatal(err)
	}
	// Only the cluster's certificate is trusted: the HSM must present it.
	cu, err := client.New(client.Config{Addr: addr, Certificate: &pair, CustomerCA: loadCert(t, c.ca.Cert), ClusterID: testCluster, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cu.Close()
	if role, err := cu.Login(ctx, k.user, k.password); err != nil || role != hsmcore.CryptoUser {
		t.Fatalf("%s: log in as %s: %v, %v", addr, k.user, role, err)
	}
	if pt, err := cu.Decrypt(ctx, k.aes, k.ct, k.aad); err != nil || string(pt) != string(k.plain) {
		t.Fatalf("%s: decrypt the ciphertext made before the backup: %q, %v", addr, pt, err)
	}
	if err := cu.Verify(ctx, k.ec, k.plain, k.sig); err != nil {
		t.Fatalf("%s: verify the signature made before the backup: %v", addr, err)
	}
	forged := append([]byte(nil), k.sig...)
	forged[len(forged)/2] ^= 1
	if err := cu.Verify(ctx, k.ec, k.plain, forged); err == nil {
		t.Fatalf("%s: a forged signature verifies", addr)
	}
	msg := []byte("after the restore")
	ct, err := cu.Encrypt(ctx, k.aes, msg, nil)
	if err == nil {
		var pt []byte
		pt, err = cu.Decrypt(ctx, k.aes, ct, nil)
		if err == nil && string(pt) != string(msg) {
			err = fmt.Errorf("round trip gave %q", pt)
		}
	}
	if err != nil {
		t.Fatalf("%s: encrypt and decrypt with the restored AES key: %v", addr, err)
	}
	sig, err := cu.Sign(ctx, k.ec, msg)
	if err == nil {
		err = cu.Verify(ctx, k.ec, msg, sig)
	}
	if err != nil {
		t.Fatalf("%s: sign and verify with the restored EC key: %v", addr, err)
	}
}

// s3Watch is an HTTP proxy in front of MinIO that records the requests it
// forwards and reports the progress of image uploads, so that a test can
// act at a known point of one.
type s3Watch struct {
	URL string // the proxy's http://host:port

	mu       sync.Mutex
	requests []string // "METHOD /bucket/key?query"
	// partStarted receives the object key and upload id of every part 1
	// of an image upload when its request arrives; the request waits
	// until release is closed, then goes to MinIO, and partDone receives
	// them again once MinIO's answer has been sent back.
	partStarted, partDone chan [2]string
	release               chan struct{}
}

func newS3Watch(t *testing.T, endpoint string) *s3Watch {
	t.Helper()
	target, err := url.Parse("http://" + endpoint)
	if err != nil {
		t.Fatal(err)
	}
	w := &s3Watch{partStarted: make(chan [2]string, 4), partDone: make(chan [2]string, 4), release: make(chan struct{})}
	rp := httputil.NewSingleHostReverseProxy(target)
	// The client signed the request for the proxy's Host, which is kept;
	// a client killed mid-request is expected, not worth a log line.
	rp.ErrorLog = log.New(io.Discard, "", 0)
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		w.mu.Lock()
		w.requests = append(w.requests, r.Method+" "+r.URL.RequestURI())
		w.mu.Unlock()
		part1 := r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/image") && q.Get("partNumber") == "1"
		if part1 {
			w.partStarted <- [2]string{r.URL.Path, q.Get("uploadId")}
			select {
			case <-w.release:
			case <-r.Context().Done():
				return
			}
		}
		rp.ServeHTTP(rw, r)
		if part1 {
			w.partDone <- [2]string{r.URL.Path, q.Get("uploadId")}
		}
	}))
	t.Cleanup(srv.Close)
	w.URL = srv.URL
	return w
}

// seen returns the requests forwarded so far.
func (w *s3Watch) seen() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.requests...)
}

var logLine = regexp.MustCompile(`^time=\S+ level=(INFO|WARN) msg=`)

// wantFailure fails t now unless res is a failure reported as one line
// "hsmbackup: ..." on stderr, last, containing every one of wants; the
// lines before it may only be the command's log lines (docs/CLI.md: logs
// go to stderr).
func wantFailure(t testing.TB, res Result, wants ...string) {
	t.Helper()
	if !cleanFailure(t, "the command", res, wants...) {
		t.FailNow()
	}
}

// cleanFailure reports whether res is a failure reported as one line
// "hsmbackup: ..." last on stderr, after log lines only, that mentions
// every one of wants; it reports what is wrong.
func cleanFailure(t testing.TB, what string, res Result, wants ...string) bool {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(res.Stderr, "\n"), "\n")
	last := lines[len(lines)-1]
	ok := res.Code >= 1 && res.Code <= 6 && strings.HasPrefix(last, "hsmbackup: ") && strings.HasSuffix(res.Stderr, "\n")
	for _, l := range lines[:len(lines)-1] {
		ok = ok && logLine.MatchString(l)
	}
	if !ok {
		t.Errorf("%s: want a failure exit status (1-6) and one line \"hsmbackup: ...\" last on stderr, after log lines only; got %s", what, res)
		return false
	}
	for _, w := range wants {
		if !strings.Contains(last, w) {
			t.Errorf("%s: error %q does not mention %q", what, last, w)
			ok = false
		}
	}
	t.Logf("%s: %s", what, last)
	return ok
}

// fillKeys has a new crypto user of c make n 512-byte secret keys in
// batches, for a large image of mostly incompressible key material.
func fillKeys(t testing.TB, c *cluster, n int) {
	t.Helper()
	fillKeysOf(t, c, n, hsmcore.KeySpec{Type: hsmcore.GenericSecret, Bits: 4096})
}

// fillKeysOf gives the cluster a crypto user "app" with n keys of spec.
func fillKeysOf(t testing.TB, c *cluster, n int, spec hsmcore.KeySpec) {
	t.Helper()
	ctx := context.Background()
	co := c.client(t, c.cert, c.key)
	if _, err := co.Login(ctx, testOfficer, c.password); err != nil {
		t.Fatal(err)
	}
	if err := co.CreateUser(ctx, "app", hsmcore.CryptoUser, c.password+"-app"); err != nil {
		t.Fatal(err)
	}
	cu := c.client(t, c.cert, c.key)
	if _, err := cu.Login(ctx, "app", c.password+"-app"); err != nil {
		t.Fatal(err)
	}
	for done := 0; done < n; {
		specs := make([]hsmcore.KeySpec, min(8000, n-done))
		for i := range specs {
			specs[i] = spec
		}
		if _, err := cu.GenerateKeys(ctx, specs); err != nil {
			t.Fatal(err)
		}
		done += len(specs)
	}
}
