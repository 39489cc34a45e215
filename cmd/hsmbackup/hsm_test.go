package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
	"github.com/hsmbackup/hsmbackup/internal/testpki"
)

// run runs the app in-process with args and returns its output.
func run(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	var out, errOut bytes.Buffer
	err = newApp(&out, &errOut).RunContext(ctx, append([]string{"hsmbackup"}, args...))
	return out.String(), errOut.String(), err
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, _, err := run(context.Background(), args...)
	if err != nil {
		t.Fatalf("hsmbackup %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// syncWriter lets a serving app write while the test reads.
type syncWriter struct{ w *io.PipeWriter }

func (s syncWriter) Write(p []byte) (int, error) { return s.w.Write(p) }

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// serveInProcess runs `hsm serve` on device in a goroutine and returns its
// address; the test's end stops it and checks it returned nil.
func serveInProcess(t *testing.T, device string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	logs := new(lockedBuffer) // connection goroutines may log after Serve returns
	done := make(chan error, 1)
	go func() {
		err := newApp(syncWriter{pw}, logs).RunContext(ctx, []string{"hsmbackup", "hsm", "serve", "--device", device,
			"--listen", "127.0.0.1:0", "--password-iterations", "1000", "--log-format", "json"})
		pw.CloseWithError(errors.New("serve returned"))
		done <- err
	}()
	sc := bufio.NewScanner(pr)
	if !sc.Scan() {
		cancel()
		t.Fatalf("hsm serve: %v", <-done)
	}
	addr, ok := strings.CutPrefix(sc.Text(), "listening on ")
	if !ok {
		t.Fatalf("hsm serve printed %q", sc.Text())
	}
	go io.Copy(io.Discard, pr)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("hsm serve after cancel: %v", err)
		}
		// Every log line is JSON.
		for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			if !json.Valid([]byte(line)) {
				t.Errorf("log line is not JSON: %q", line)
			}
		}
	})
	return addr
}

func writePEM(t *testing.T, path, typ string, der []byte, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), perm); err != nil {
		t.Fatal(err)
	}
}

// TestClusterCommands runs the cluster commands in-process against a
// daemon served by the app itself, with a Go customer CA (the integration
// tests use OpenSSL's).
func TestClusterCommands(t *testing.T) {
	// Segments of 2 entries: hsm audit verify checks the chain across them.
	defer func(n int) { audit.MaxEntries = n }(audit.MaxEntries)
	audit.MaxEntries = 2
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	mustRun(t, "hsm", "authority", "create", "--kind", "manufacturer", "--name", "acme", "--out", p("mfr"))
	mustRun(t, "hsm", "authority", "create", "--kind", "operator", "--name", "cloud", "--out", p("op"))
	if _, _, err := run(context.Background(), "hsm", "authority", "create", "--kind", "operator", "--name", "cloud", "--out", p("op")); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second authority in the same directory: %v", err)
	}
	out := mustRun(t, "--json", "hsm", "manufacture", "--class", "hsm2m.medium", "--firmware", "2.1.0", "--fips", "--serial", "HSM-TEST-1",
		"--capacity", "100", "--manufacturer", p("mfr"), "--operator", p("op"), "--out", p("hsm"))
	var made struct {
		Serial, Class  string
		FIPS           bool
		Capacity       int
		PBKFingerprint string `json:"pbk_fingerprint"`
	}
	if err := json.Unmarshal([]byte(out), &made); err != nil || made.Serial != "HSM-TEST-1" || !made.FIPS || made.Capacity != 100 || len(made.PBKFingerprint) != 16 {
		t.Fatalf("manufacture --json: %v\n%s", err, out)
	}
	addr := serveInProcess(t, p("hsm"))

	out = mustRun(t, "hsm", "status", "--addr", addr, "--manufacturer-root", p("mfr/root.crt"))
	if !strings.Contains(out, "cluster initialized  no") || !strings.Contains(out, "firmware             2.1.0 (FIPS mode)") {
		t.Fatalf("status:\n%s", out)
	}
	out = mustRun(t, "cluster", "init", "--addr", addr, "--claim", p("hsm.claim"), "--manufacturer-root", p("mfr/root.crt"), "--operator-root", p("op/root.crt"),
		"--cluster-id", "c1", "--csr-out", p("c1.csr"), "--expect-serial", "HSM-TEST-1", "--min-firmware", "2.0.0")
	if !strings.Contains(out, "attestation verified: serial HSM-TEST-1, class hsm2m.medium, manufacturer acme, operator cloud, firmware 2.1.0, FIPS mode\n") {
		t.Fatalf("init step 1:\n%s", out)
	}
	data, err := os.ReadFile(p("c1.csr"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	ca := testpki.NewCA(t, "customer CA")
	writePEM(t, p("c1.crt"), "CERTIFICATE", ca.SignCSR(t, b.Bytes), 0o644)
	writePEM(t, p("ca.crt"), "CERTIFICATE", ca.Cert.Raw, 0o644)

	// A certificate for another cluster id is refused before anything is sent.
	if _, _, err := run(context.Background(), "cluster", "init", "--addr", addr, "--claim", p("hsm.claim"), "--manufacturer-root", p("mfr/root.crt"),
		"--cert", p("c1.crt"), "--customer-ca", p("ca.crt"), "--cluster-id", "c2"); err == nil || !strings.Contains(err.Error(), `names "c1", not cluster "c2"`) {
		t.Fatalf("step 2 with another cluster id: %v", err)
	}
	out = mustRun(t, "cluster", "init", "--addr", addr, "--claim", p("hsm.claim"), "--manufacturer-root", p("mfr/root.crt"), "--operator-root", p("op/root.crt"),
		"--cert", p("c1.crt"), "--customer-ca", p("ca.crt"))
	if !strings.Contains(out, "cluster c1 initialized on HSM HSM-TEST-1\n") {
		t.Fatalf("init step 2:\n%s", out)
	}

	cert := ca.Client(t, "officer")
	writePEM(t, p("client.crt"), "CERTIFICATE", cert.Certificate[0], 0o644)
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p("client.key"), "PRIVATE KEY", keyDER, 0o600)
	if err := os.WriteFile(p("pw"), []byte("correct horse battery\r\nsecond line ignored\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	member := []string{"--addr", addr, "--customer-ca", p("ca.crt"), "--cert", p("client.crt"), "--key", p("client.key"), "--cluster-id", "c1"}
	out = mustRun(t, append(append([]string{"cluster", "activate"}, member...), "--user", "admin", "--password-file", p("pw"))...)
	if out != "cluster c1 activated on HSM HSM-TEST-1: crypto officer admin can log in\n" {
		t.Fatalf("activate: %q", out)
	}
	out = mustRun(t, append(append([]string{"hsm", "status"}, member...), "--json")...)
	var st struct {
		Initialized bool   `json:"initialized"`
		StateDigest string `json:"state_digest"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || !st.Initialized || len(st.StateDigest) != 64 {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	t.Setenv(passwordEnv, "correct horse battery")
	out = mustRun(t, append(append([]string{"hsm", "audit", "verify"}, member...), "--user", "admin",
		"--manufacturer-root", p("mfr/root.crt"), "--operator-root", p("op/root.crt"))...)
	m := regexp.MustCompile(`(?m)^audit log of HSM-TEST-1: (\d+) entries, chain intact, head signed: entry (\d+), hash [0-9a-f]{64}$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("audit verify:\n%s", out)
	}
	if m[1] != m[2] {
		t.Fatalf("audit verify: %s entries to a head at entry %s, want the whole log", m[1], m[2])
	}
	if n, _ := strconv.Atoi(m[1]); n <= 2*audit.MaxEntries {
		t.Fatalf("audit verify checked %d entries, want the whole log, more than 2 segments of %d", n, audit.MaxEntries)
	}
	if _, err := os.Stat(p("hsm/audit.log.000002")); err != nil {
		t.Fatalf("the log did not rotate: %v", err)
	}
	// A password never reaches the output.
	if strings.Contains(out, "correct horse") {
		t.Fatal("password printed")
	}
}

func TestReadPassword(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string, perm os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(data), perm); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, perm)
		return path
	}
	read := func(args ...string) (string, error) {
		var got string
		app := &cli.App{
			Flags:  []cli.Flag{passwordFileFlag()},
			Action: func(c *cli.Context) (err error) { got, err = passwordOf(c, &clusterConfig{})(); return err },
		}
		err := app.Run(append([]string{"x"}, args...))
		return got, err
	}
	for _, tc := range []struct {
		name    string
		env     *string
		args    []string
		want    string
		wantErr string
	}{
		{"file", nil, []string{"--password-file", write("ok", "s3cret pass\nmore\n", 0o600)}, "s3cret pass", ""},
		{"file with CRLF, no final newline", nil, []string{"--password-file", write("crlf", "s3cret pass\r\n", 0o600)}, "s3cret pass", ""},
		{"file beats env", ptr("from env"), []string{"--password-file", write("ok2", "from file", 0o400)}, "from file", ""},
		{"env", ptr("from env"), nil, "from env", ""},
		{"file readable by others", nil, []string{"--password-file", write("loose", "x", 0o644)}, "", "must be 0600"},
		{"empty first line", nil, []string{"--password-file", write("empty", "\nsecond", 0o600)}, "", "first line is empty"},
		{"empty env", ptr(""), nil, "", "is empty"},
		{"neither", nil, nil, "", "no password: give --password-file, or set $HSMBACKUP_PASSWORD_FILE or $HSMBACKUP_PASSWORD"},
		{"missing file", nil, []string{"--password-file", filepath.Join(dir, "nope")}, "", "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != nil {
				t.Setenv(passwordEnv, *tc.env)
			} else {
				t.Setenv(passwordEnv, "")
				os.Unsetenv(passwordEnv)
			}
			got, err := read(tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %q, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestCommandErrors: bad invocations fail with one clear error and print
// nothing.
func TestCommandErrors(t *testing.T) {
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose.key")
	if err := os.WriteFile(loose, []byte("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(loose, 0o644)
	ca := testpki.NewCA(t, "ca")
	writePEM(t, filepath.Join(dir, "ca.crt"), "CERTIFICATE", ca.Cert.Raw, 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"hsm", "nosuch"}, `unknown command "nosuch"`},
		{[]string{"hsm", "authority", "create", "--kind", "manufacturer", "--name", "x"}, "--out is required"},
		{[]string{"hsm", "authority", "create", "--kind", "customer", "--name", "x", "--out", dir}, `--kind "customer": want manufacturer or operator`},
		{[]string{"hsm", "authority", "create", "--kind", "operator", "--name", "no spaces", "--out", filepath.Join(dir, "a")}, "must be 1-64 letters"},
		{[]string{"hsm", "manufacture", "--class", "c"}, "--manufacturer is required"},
		{[]string{"hsm", "manufacture", "--class", "c", "--manufacturer", dir, "--operator", dir, "--firmware", "1.0.0", "--out", filepath.Join(dir, "d")}, "hsm manufacture: manufacturer: load authority"},
		{[]string{"hsm", "serve", "--device", dir, "--log-format", "xml"}, `--log-format "xml"`},
		{[]string{"hsm", "serve", "--device", dir, "--password-iterations", "10"}, "--password-iterations 10: want 0 or 1000"},
		{[]string{"hsm", "serve", "--device", filepath.Join(dir, "missing")}, "hsm serve: open device"},
		{[]string{"hsm", "serve", "extra"}, `unexpected argument "extra"`},
		{[]string{"hsm", "status", "--addr", "127.0.0.1:1"}, "--customer-ca (an initialized cluster) or --manufacturer-root"},
		{[]string{"hsm", "status", "--addr", "127.0.0.1:1", "--customer-ca", filepath.Join(dir, "ca.crt"), "--cert", "x"}, "--cert and --key go together"},
		{[]string{"hsm", "status", "--addr", "127.0.0.1:1", "--customer-ca", filepath.Join(dir, "ca.crt"), "--cert", filepath.Join(dir, "ca.crt"), "--key", loose}, "loose.key has mode 0644; a secret file must be 0600"},
		{[]string{"hsm", "status", "--addr", "127.0.0.1:1", "--customer-ca", filepath.Join(dir, "ca.crt")}, "connection refused"},
		{[]string{"hsm", "audit", "verify", "--addr", "a"}, "--customer-ca is required"},
		{[]string{"cluster", "init", "--addr", "a"}, "give --csr-out (step 1) or --cert and --customer-ca (step 2)"},
		{[]string{"cluster", "init", "--csr-out", "x", "--cert", "y"}, "not both"},
		{[]string{"cluster", "init", "--csr-out", "x", "--addr", "a", "--manufacturer-root", "m"}, "--operator-root is required"},
		{[]string{"cluster", "activate", "--addr", "a", "--customer-ca", "b", "--cert", "c", "--key", "d", "--cluster-id", "e"}, "--user is required"},
		{[]string{"cluster", "nosuch"}, `unknown command "nosuch"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Setenv(passwordEnv, "")
			os.Unsetenv(passwordEnv)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			out, errOut, err := run(ctx, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v; want an error containing %q", err, tc.want)
			}
			if out != "" || errOut != "" {
				t.Errorf("printed stdout %q, stderr %q; want nothing", out, errOut)
			}
		})
	}
}

func TestHelpHidesTestFlags(t *testing.T) {
	out := mustRun(t, "hsm", "serve", "--help")
	if strings.Contains(out, "password-iterations") {
		t.Errorf("hsm serve --help shows the test-only flag:\n%s", out)
	}
	for _, want := range []string{"--device DIR", "--listen ADDR", "--log-format FORMAT", "listening on HOST:PORT"} {
		if !strings.Contains(out, want) {
			t.Errorf("hsm serve --help lacks %q:\n%s", want, out)
		}
	}
	out = mustRun(t, "--help")
	for _, want := range []string{"hsm", "cluster", "demo"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}
