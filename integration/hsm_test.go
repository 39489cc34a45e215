package integration

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
)

const (
	testClass    = "hsm2m.medium"
	testFirmware = "2.1.0"
	testMfr      = "acme-hsm"
	testOperator = "example-cloud"
	testCluster  = "cluster-1"
	testOfficer  = "admin"
)

// cluster is a one-HSM cluster set up with the CLI as an operator would:
// authorities, a manufactured HSM served by a daemon process, the cluster
// initialized with an OpenSSL customer CA, and its first crypto officer.
type cluster struct {
	dir              string
	mfrRoot, opRoot  string // root.crt files
	device           string // device directory
	claim            string // its claim file, as hsm manufacture wrote it
	addr             string
	serial           string
	ca               *opensslCA
	cert, key        string // the officer's client certificate, made with openssl
	password         string // the officer's; never printed
	passwordFile     string
	outputs          []string // every output of the set-up, to search for secrets
	csrFile, certPEM string
	// claims are the claim files of the new HSMs newHSM made, by address.
	claims map[string]string
}

// member returns the flags of a cluster client with the officer's
// certificate.
func (c *cluster) member() []string {
	return []string{"--addr", c.addr, "--customer-ca", c.ca.Cert, "--cert", c.cert, "--key", c.key, "--cluster-id", testCluster}
}

// run runs hsmbackup, records its output, and fails t unless it succeeds
// with nothing on stderr.
func (c *cluster) run(t testing.TB, args ...string) string {
	t.Helper()
	res := Run(t, args...)
	c.outputs = append(c.outputs, res.Stdout, res.Stderr)
	if res.Code != 0 || res.Stderr != "" {
		t.Fatalf("hsmbackup %s: %s", strings.Join(args, " "), res)
	}
	return res.Stdout
}

// newCluster sets up a cluster with the CLI, checking each step's output.
// manufacture are more flags of its HSM's `hsm manufacture`.
func newCluster(t testing.TB, manufacture ...string) *cluster {
	t.Helper()
	dir := t.TempDir()
	c := &cluster{dir: dir, device: filepath.Join(dir, "hsm-a"), password: rand.Text()}
	c.mfrRoot, c.opRoot = filepath.Join(dir, "mfr", "root.crt"), filepath.Join(dir, "op", "root.crt")

	out := c.run(t, "hsm", "authority", "create", "--kind", "manufacturer", "--name", testMfr, "--out", filepath.Join(dir, "mfr"))
	wantLines(t, out, "created manufacturer authority "+testMfr)
	out = c.run(t, "hsm", "authority", "create", "--kind", "operator", "--name", testOperator, "--out", filepath.Join(dir, "op"))
	wantLines(t, out, "created operator authority "+testOperator)

	out = c.run(t, append([]string{"hsm", "manufacture", "--class", testClass, "--firmware", testFirmware,
		"--manufacturer", filepath.Join(dir, "mfr"), "--operator", filepath.Join(dir, "op"), "--out", c.device}, manufacture...)...)
	c.serial = field(t, out, "serial")
	if !regexp.MustCompile(`(?m)^PBK fingerprint\s+[0-9a-f]{16}$`).MatchString(out) || field(t, out, "class") != testClass {
		t.Fatalf("manufacture output lacks class or a 16-digit PBK fingerprint:\n%s", out)
	}
	// The claim secret, shown once and written beside the device
	// directory, for its owner's eyes only.
	c.claim = c.device + ".claim"
	if !regexp.MustCompile(`(?m)^claim secret\s+[0-9a-f]{32,}$`).MatchString(out) {
		t.Fatalf("manufacture output lacks the claim secret:\n%s", out)
	}
	wantLines(t, out, "the claim secret is shown only now and written to "+c.claim+" (mode 0600)")
	fi, err := os.Stat(c.claim)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Fatalf("claim file %s has mode %04o, want 0600", c.claim, m)
	}

	c.addr = StartDaemon(t, c.device)

	// Without the claim file, nobody sets the new HSM up, and the refused
	// call leaves it as it was.
	c.csrFile = filepath.Join(dir, "cluster.csr")
	initCSR := []string{"cluster", "init", "--addr", c.addr, "--manufacturer-root", c.mfrRoot, "--operator-root", c.opRoot,
		"--cluster-id", testCluster, "--csr-out", c.csrFile}
	fresh := c.newStatus(t, c.addr)
	res := Run(t, initCSR...)
	c.outputs = append(c.outputs, res.Stdout, res.Stderr)
	wantRefusal(t, res, "hsmbackup: cluster init: cluster csr: HSM "+c.serial+" is not claimed yet: a claim proof is required (the claim file hsm manufacture wrote for it): permission denied")
	if st := c.newStatus(t, c.addr); st.ClusterID != "" || st.ClusterInitialized || st.Initialized || st.StateDigest != fresh.StateDigest {
		t.Fatalf("hsm status after cluster init without --claim: %+v, was %+v", st, fresh)
	}
	if _, err := os.Stat(c.csrFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cluster init without --claim left %s: %v", c.csrFile, err)
	}

	// Step 1: attest, then the CSR.
	out = c.run(t, append(initCSR, "--claim", c.claim)...)
	wantLines(t, out,
		fmt.Sprintf("attestation verified: serial %s, class %s, manufacturer %s, operator %s, firmware %s", c.serial, testClass, testMfr, testOperator, testFirmware),
		"cluster CSR for "+testCluster+" from HSM "+c.serial+" written to "+c.csrFile)
	data, err := os.ReadFile(c.csrFile)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(data); b == nil || b.Type != "CERTIFICATE REQUEST" {
		t.Fatalf("%s is not a PEM CERTIFICATE REQUEST:\n%s", c.csrFile, data)
	}

	// The customer's CA signs it, with OpenSSL.
	c.ca = newOpenSSLCA(t, dir, "customer root CA")
	c.certPEM = filepath.Join(dir, "cluster.crt")
	c.ca.Sign(t, c.csrFile, c.certPEM)

	// Step 2: install it.
	out = c.run(t, "cluster", "init", "--addr", c.addr, "--claim", c.claim, "--manufacturer-root", c.mfrRoot,
		"--cert", c.certPEM, "--customer-ca", c.ca.Cert)
	wantLines(t, out, "cluster "+testCluster+" initialized on HSM "+c.serial)

	// Activate: the first crypto officer.
	c.cert, c.key = c.ca.Client(t, "officer-client")
	c.passwordFile = filepath.Join(dir, "password")
	if err := os.WriteFile(c.passwordFile, []byte(c.password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out = c.run(t, append(append([]string{"cluster", "activate"}, c.member()...), "--user", testOfficer, "--password-file", c.passwordFile)...)
	wantLines(t, out, fmt.Sprintf("cluster %s activated on HSM %s: crypto officer %s can log in", testCluster, c.serial, testOfficer))

	t.Cleanup(func() {
		for _, s := range append(c.outputs, DaemonLogIfRunning(c.addr)) {
			if strings.Contains(s, c.password) {
				t.Errorf("the officer's password appears in output or logs:\n%s", s)
			}
		}
	})
	return c
}

// DaemonLogIfRunning returns the log of the daemon on addr, or "" if it is
// gone.
func DaemonLogIfRunning(addr string) string {
	daemons.Lock()
	defer daemons.Unlock()
	if d := daemons.byAddr[addr]; d != nil {
		return d.logs.String()
	}
	return ""
}

// status is `hsm status --json` of the cluster's HSM.
type status struct {
	Serial             string            `json:"serial"`
	ClusterID          string            `json:"cluster_id"`
	ClusterInitialized bool              `json:"cluster_initialized"`
	Initialized        bool              `json:"initialized"`
	StateDigest        string            `json:"state_digest"`
	PBKFingerprint     string            `json:"pbk_fingerprint"`
	KeyCount           int               `json:"key_count"`
	UserCount          int               `json:"user_count"`
	StateVersion       map[string]uint64 `json:"state_version"`
}

func (c *cluster) status(t testing.TB) status {
	t.Helper()
	out := c.run(t, append([]string{"--json", "hsm", "status"}, c.member()...)...)
	var s status
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("hsm status --json: %v\n%s", err, out)
	}
	if s.StateDigest == "" || s.Serial != c.serial {
		t.Fatalf("hsm status --json: %+v", s)
	}
	return s
}

// newStatus is `hsm status --json` of the new HSM on addr, trusted as a
// device of the manufacturer.
func (c *cluster) newStatus(t testing.TB, addr string) status {
	t.Helper()
	out := c.run(t, "--json", "hsm", "status", "--addr", addr, "--manufacturer-root", c.mfrRoot)
	var s status
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("hsm status --json: %v\n%s", err, out)
	}
	if s.StateDigest == "" || s.Serial == "" {
		t.Fatalf("hsm status --json: %+v", s)
	}
	return s
}

// client returns an hsmcore client presenting the certificate in
// certFile and keyFile (none if empty) and trusting the customer CA.
func (c *cluster) client(t testing.TB, certFile, keyFile string) *client.Client {
	t.Helper()
	cfg := client.Config{Addr: c.addr, CustomerCA: loadCert(t, c.ca.Cert), ClusterID: testCluster, Timeout: 10 * time.Second}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificate = &pair
	}
	cl, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func loadCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s: no PEM", path)
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// wantLines fails t unless out has a line starting with each of wants.
func wantLines(t testing.TB, out string, wants ...string) {
	t.Helper()
	lines := strings.Split(out, "\n")
	for _, w := range wants {
		found := false
		for _, l := range lines {
			found = found || strings.HasPrefix(l, w)
		}
		if !found {
			t.Errorf("output lacks the line %q:\n%s", w, out)
		}
	}
}

// field returns the value on the line "name   value" of out.
func field(t testing.TB, out, name string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\s+(\S.*)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("output lacks %q:\n%s", name, out)
	}
	return m[1]
}

// wantRefusal fails t unless res is a failure reported as one line on
// stderr, "hsmbackup: ...", containing every one of wants.
func wantRefusal(t testing.TB, res Result, wants ...string) {
	t.Helper()
	if res.Code < 1 || res.Code > 6 || !strings.HasPrefix(res.Stderr, "hsmbackup: ") || strings.Count(res.Stderr, "\n") != 1 {
		t.Fatalf("want a failure exit status (1-6) and one line \"hsmbackup: ...\" on stderr, got %s", res)
	}
	for _, w := range wants {
		if !strings.Contains(res.Stderr, w) {
			t.Errorf("error %q does not mention %q", strings.TrimSpace(res.Stderr), w)
		}
	}
}

// TestClusterLifecycle is the whole CLI flow: authorities, manufacture,
// serve, cluster init (attested CSR, OpenSSL signs it, install), activate;
// then a client with an OpenSSL-issued certificate logs in, creates a
// crypto user, and that user makes and uses a key; the daemon crashes and
// comes back on the same device with everything in place.
func TestClusterLifecycle(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	ctx := context.Background()

	st := c.status(t)
	if !st.ClusterInitialized || !st.Initialized || st.ClusterID != testCluster {
		t.Fatalf("status after activate: %+v", st)
	}
	text := c.run(t, append([]string{"hsm", "status"}, c.member()...)...)
	if field(t, text, "cluster initialized") != "yes" || field(t, text, "state digest") != st.StateDigest {
		t.Fatalf("hsm status:\n%s", text)
	}

	co := c.client(t, c.cert, c.key)
	if role, err := co.Login(ctx, testOfficer, c.password); err != nil || role != hsmcore.CryptoOfficer {
		t.Fatalf("officer login: %v, %v", role, err)
	}
	if err := co.CreateUser(ctx, "app", hsmcore.CryptoUser, c.password+"-app"); err != nil {
		t.Fatal(err)
	}
	appCert, appKey := c.ca.Client(t, "app-client")
	cu := c.client(t, appCert, appKey)
	if _, err := cu.Login(ctx, "app", c.password+"-app"); err != nil {
		t.Fatal(err)
	}
	keys, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Label: "payroll", Encrypt: true, Decrypt: true}})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := cu.Encrypt(ctx, keys[0].Handle, []byte("payroll batch"), nil)
	if err != nil {
		t.Fatal(err)
	}
	after := c.status(t).StateDigest
	if after == st.StateDigest {
		t.Fatal("creating a user and a key left the state digest unchanged")
	}

	// A crash, and the daemon back on the same device: same state, the key
	// still decrypts, the audit log still verifies.
	Kill(t, c.addr)
	c.addr = StartDaemon(t, c.device)
	if got := c.status(t).StateDigest; got != after {
		t.Fatalf("state digest after restart %s, want %s", got, after)
	}
	cu = c.client(t, appCert, appKey)
	if _, err := cu.Login(ctx, "app", c.password+"-app"); err != nil {
		t.Fatalf("login after restart: %v", err)
	}
	if pt, err := cu.Decrypt(ctx, keys[0].Handle, ct, nil); err != nil || string(pt) != "payroll batch" {
		t.Fatalf("decrypt after restart: %q, %v", pt, err)
	}
	out := c.run(t, append(append([]string{"hsm", "audit", "verify"}, c.member()...),
		"--user", testOfficer, "--password-file", c.passwordFile, "--manufacturer-root", c.mfrRoot, "--operator-root", c.opRoot)...)
	if !regexp.MustCompile(`(?m)^audit log of ` + c.serial + `: \d+ entries, chain intact, head signed: entry \d+, hash [0-9a-f]{64}$`).MatchString(out) {
		t.Fatalf("hsm audit verify:\n%s", out)
	}
}

// TestRefusals: clients the cluster must not serve are refused with a
// clear error, and the HSM is unchanged.
func TestRefusals(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	ctx := context.Background()
	co := c.client(t, c.cert, c.key)
	if _, err := co.Login(ctx, testOfficer, c.password); err != nil {
		t.Fatal(err)
	}
	if err := co.CreateUser(ctx, "app", hsmcore.CryptoUser, c.password+"-app"); err != nil {
		t.Fatal(err)
	}
	before := c.status(t).StateDigest
	other := newOpenSSLCA(t, c.dir, "mallory CA")
	auditVerify := func(cert, key string) []string {
		return []string{"hsm", "audit", "verify", "--addr", c.addr, "--customer-ca", c.ca.Cert, "--cert", cert, "--key", key,
			"--user", testOfficer, "--password-file", c.passwordFile, "--manufacturer-root", c.mfrRoot, "--operator-root", c.opRoot}
	}

	t.Run("no client certificate", func(t *testing.T) {
		wantRefusal(t, Run(t, "hsm", "status", "--addr", c.addr, "--customer-ca", c.ca.Cert),
			"hsm status: "+c.addr+": health: ", "no client certificate was given")
		if _, err := c.client(t, "", "").Login(ctx, testOfficer, c.password); err == nil {
			t.Fatal("login without a client certificate succeeded")
		}
		wantAlert(t, c, nil, "certificate required")
	})
	t.Run("certificate from another CA", func(t *testing.T) {
		cert, key := other.Client(t, "mallory")
		// The CLI checks the chain first and says what is wrong.
		wantRefusal(t, Run(t, auditVerify(cert, key)...), "not usable with customer CA \"customer root CA\"")
		// A client that sends it anyway is refused in the handshake.
		wantAlert(t, c, loadPair(t, cert, key), "unknown certificate authority")
	})
	t.Run("expired certificate", func(t *testing.T) {
		cert, key := c.ca.ExpiredClient(t, "old-client")
		wantRefusal(t, Run(t, auditVerify(cert, key)...), "is not valid now", "2020-01-02T00:00:00Z")
		// hsmcore/client sends it, as it is from the right CA; the daemon
		// refuses it.
		if _, err := c.client(t, cert, key).Login(ctx, testOfficer, c.password); err == nil {
			t.Fatal("login with an expired certificate succeeded")
		}
		wantAlert(t, c, loadPair(t, cert, key), "expired certificate")
	})
	t.Run("wrong password", func(t *testing.T) {
		res := RunWith(t, RunOptions{Env: []string{"HSMBACKUP_PASSWORD=not the password"}}, append(append([]string{"hsm", "audit", "verify"}, c.member()...),
			"--user", testOfficer, "--manufacturer-root", c.mfrRoot, "--operator-root", c.opRoot)...)
		wantRefusal(t, res, "login "+testOfficer+": login failed")
	})
	t.Run("crypto user doing officer work", func(t *testing.T) {
		cert, key := c.ca.Client(t, "app-client")
		cu := c.client(t, cert, key)
		if _, err := cu.Login(ctx, "app", c.password+"-app"); err != nil {
			t.Fatal(err)
		}
		err := cu.CreateUser(ctx, "mallory", hsmcore.CryptoOfficer, c.password)
		if !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("crypto user creating an officer: %v, want ErrPermission", err)
		}
		// A crypto user cannot read the audit log either.
		wantRefusal(t, RunWith(t, RunOptions{Env: []string{"HSMBACKUP_PASSWORD=" + c.password + "-app"}},
			"hsm", "audit", "verify", "--addr", c.addr, "--customer-ca", c.ca.Cert, "--cert", cert, "--key", key,
			"--user", "app", "--manufacturer-root", c.mfrRoot, "--operator-root", c.opRoot), "fetch audit log", "permission denied")
	})
	t.Run("cluster init again", func(t *testing.T) {
		// Not even with its claim file: the claim sets up a new HSM only.
		wantRefusal(t, Run(t, "cluster", "init", "--addr", c.addr, "--claim", c.claim, "--manufacturer-root", c.mfrRoot, "--operator-root", c.opRoot,
			"--cluster-id", "cluster-2", "--csr-out", filepath.Join(c.dir, "again.csr")), "hsm certificate not trusted")
		wantRefusal(t, Run(t, append(append([]string{"cluster", "activate"}, c.member()...), "--user", "mallory", "--password-file", c.passwordFile)...),
			"device already has users", "permission denied")
	})
	if got := c.status(t).StateDigest; got != before {
		t.Fatalf("state digest %s after refusals, want %s: a refused call changed the HSM", got, before)
	}
}

// clientTLS is a TLS client configuration that presents pair (none if
// nil) whatever CAs the server asks for, as hsmcore/client would not, and
// trusts the cluster certificate from the customer CA.
func clientTLS(t *testing.T, c *cluster, pair *tls.Certificate) *tls.Config {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(loadCert(t, c.ca.Cert))
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2"},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if pair == nil {
				return &tls.Certificate{}, nil
			}
			return pair, nil
		},
		// The cluster certificate names the cluster, not a host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			return err
		},
	}
}

func loadPair(t *testing.T, certFile, keyFile string) *tls.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return &pair
}

// wantAlert connects to the daemon presenting pair and fails t unless the
// daemon ends the connection with the TLS alert named alert. In TLS 1.3 the
// client's handshake completes before the server has checked the client
// certificate, so the alert is what the first read returns.
func wantAlert(t *testing.T, c *cluster, pair *tls.Certificate, alert string) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", c.addr, clientTLS(t, c, pair))
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	if err == nil || !strings.Contains(err.Error(), "remote error: tls: "+alert) {
		t.Fatalf("first read: %v; want the daemon's TLS alert %q", err, alert)
	}
}

// forcedClient is an HTTP/2 client presenting the certificate in certFile
// and keyFile.
func forcedClient(t *testing.T, c *cluster, certFile, keyFile string) *http.Client {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS(t, c, loadPair(t, certFile, keyFile)), ForceAttemptHTTP2: true}, Timeout: 10 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

// TestBadRequests: oversized and malformed requests to the daemon process
// are refused, and it keeps serving, unchanged.
func TestBadRequests(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	before := c.status(t).StateDigest
	hc := forcedClient(t, c, c.cert, c.key)
	for _, tc := range []struct {
		name, method, path, body string
		header                   http.Header
		status                   []int
	}{
		{"oversized JSON", "POST", "/v1/login", `{"user":"` + strings.Repeat("a", 2<<20) + `","password":"x"}`, nil, []int{413}},
		{"not JSON", "POST", "/v1/login", `{"user": admin`, nil, []int{400}},
		{"unknown field", "POST", "/v1/login", `{"user":"admin","password":"x","role":"CO"}`, nil, []int{400}},
		{"two objects", "POST", "/v1/login", `{"user":"admin","password":"x"}{}`, nil, []int{400}},
		{"unknown call", "POST", "/v1/format-everything", "{}", nil, []int{404}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, "https://"+c.addr+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.header {
				req.Header[k] = v
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			ok := false
			for _, s := range tc.status {
				ok = ok || resp.StatusCode == s
			}
			if !ok {
				t.Fatalf("status %d, want one of %v", resp.StatusCode, tc.status)
			}
		})
	}
	t.Run("plain HTTP on the TLS port", func(t *testing.T) {
		conn, err := net.DialTimeout("tcp", c.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
		got, _ := io.ReadAll(conn)
		if !strings.HasPrefix(string(got), "HTTP/1.0 400") {
			t.Fatalf("plain HTTP got %q, want a 400 answer", got)
		}
	})
	// Still serving, unchanged.
	if got := c.status(t).StateDigest; got != before {
		t.Fatalf("state digest %s after bad requests, want %s", got, before)
	}
}

// TestAuditVerify: the audit log of an intact HSM verifies; secret files
// another user could read, and a missing password, are refused.
func TestAuditVerify(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	args := func(key string, extra ...string) []string {
		return append([]string{"hsm", "audit", "verify", "--addr", c.addr, "--customer-ca", c.ca.Cert, "--cert", c.cert, "--key", key,
			"--cluster-id", testCluster, "--user", testOfficer, "--manufacturer-root", c.mfrRoot, "--operator-root", c.opRoot}, extra...)
	}
	out := c.run(t, args(c.key, "--password-file", c.passwordFile)...)
	wantLines(t, out, fmt.Sprintf("attestation verified: serial %s, class %s, manufacturer %s, operator %s, firmware %s", c.serial, testClass, testMfr, testOperator, testFirmware))
	if !regexp.MustCompile(`(?m)^audit log of ` + c.serial + `: [1-9]\d* entries, chain intact, head signed: entry [1-9]\d*, hash [0-9a-f]{64}$`).MatchString(out) {
		t.Fatalf("hsm audit verify:\n%s", out)
	}
	res := RunWith(t, RunOptions{Env: []string{"HSMBACKUP_PASSWORD=" + c.password}}, args(c.key)...)
	if res.Code != 0 {
		t.Fatalf("password from the environment: %s", res)
	}

	before := c.status(t).StateDigest
	t.Run("key file 0644", func(t *testing.T) {
		loose := filepath.Join(c.dir, "loose.key")
		copyFile(t, c.key, loose, 0o644)
		wantRefusal(t, Run(t, args(loose, "--password-file", c.passwordFile)...), "loose.key has mode 0644", "must be 0600")
	})
	t.Run("password file 0644", func(t *testing.T) {
		loose := filepath.Join(c.dir, "loose-password")
		copyFile(t, c.passwordFile, loose, 0o644)
		wantRefusal(t, Run(t, args(c.key, "--password-file", loose)...), "password file", "must be 0600")
	})
	t.Run("no password", func(t *testing.T) {
		wantRefusal(t, RunWith(t, RunOptions{Env: []string{"HSMBACKUP_PASSWORD"}}, args(c.key)...), "no password", "--password-file", "HSMBACKUP_PASSWORD")
	})
	t.Run("untrusted operator root", func(t *testing.T) {
		res := Run(t, "hsm", "audit", "verify", "--addr", c.addr, "--customer-ca", c.ca.Cert, "--cert", c.cert, "--key", c.key,
			"--user", testOfficer, "--password-file", c.passwordFile, "--manufacturer-root", c.mfrRoot, "--operator-root", c.mfrRoot)
		wantRefusal(t, res, "operator chain", "attestation rejected")
	})
	t.Run("wrong expected class", func(t *testing.T) {
		wantRefusal(t, Run(t, args(c.key, "--password-file", c.passwordFile, "--expect-class", "hsm1.small")...),
			`class "hsm2m.medium", want "hsm1.small"`, "attestation rejected")
	})
	if got := c.status(t).StateDigest; got != before {
		t.Fatalf("state digest changed: %s, want %s", got, before)
	}
}

func copyFile(t *testing.T, from, to string, perm os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(to, perm); err != nil { // whatever the umask
		t.Fatal(err)
	}
}

// TestServeSignals: SIGTERM stops `hsm serve` gracefully with exit 0, and
// a device that cannot be opened fails it with one clear line.
func TestServeSignals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, kind := range []string{"manufacturer", "operator"} {
		if res := Run(t, "hsm", "authority", "create", "--kind", kind, "--name", kind+"-1", "--out", filepath.Join(dir, kind)); res.Code != 0 {
			t.Fatalf("authority create: %s", res)
		}
	}
	device := filepath.Join(dir, "hsm")
	if res := Run(t, "hsm", "manufacture", "--class", testClass, "--firmware", testFirmware,
		"--manufacturer", filepath.Join(dir, "manufacturer"), "--operator", filepath.Join(dir, "operator"), "--out", device); res.Code != 0 {
		t.Fatalf("manufacture: %s", res)
	}
	addr := StartDaemon(t, device)
	res := Run(t, "hsm", "status", "--addr", addr, "--manufacturer-root", filepath.Join(dir, "manufacturer", "root.crt"))
	if res.Code != 0 || !strings.Contains(res.Stdout, "cluster initialized  no") {
		t.Fatalf("status of an uninitialized HSM: %s", res)
	}
	// A client holding an idle connection does not hold up the shutdown.
	roots := x509.NewCertPool()
	roots.AddCert(loadCert(t, filepath.Join(dir, "manufacturer", "root.crt")))
	cl, err := client.New(client.Config{Addr: addr, ManufacturerRoots: roots})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if code := Stop(t, addr); code != 0 {
		t.Fatalf("hsm serve exited %d after SIGTERM, want 0; log:\n%s", code, DaemonLog(t, addr))
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("hsm serve took %s to stop when idle", d)
	}
	if log := DaemonLog(t, addr); !strings.Contains(log, "msg=serving") || !strings.Contains(log, `msg="shutting down"`) || !strings.Contains(log, "msg=stopped") {
		t.Errorf("daemon log lacks serving, shutting down and stopped lines:\n%s", log)
	}

	// It starts again on the same device.
	addr = StartDaemon(t, device)
	if code := Stop(t, addr); code != 0 {
		t.Fatalf("second run: exit %d", code)
	}

	wantRefusal(t, Run(t, "hsm", "serve", "--device", filepath.Join(dir, "missing"), "--listen", "127.0.0.1:0"), "hsm serve: open device")
}
