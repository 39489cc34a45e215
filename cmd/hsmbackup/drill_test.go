package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// cancelOnLog is a log writer that cancels a context once a line
// containing msg is written: an interruption at a known point of a run.
type cancelOnLog struct {
	mu     sync.Mutex
	msg    string
	cancel context.CancelFunc
	buf    strings.Builder
}

func (w *cancelOnLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(string(p), w.msg) {
		w.cancel()
	}
	return len(p), nil
}

// TestDrillCancelledStillZeroizes: a drill interrupted once the backup is
// restored into the scratch HSM (before its check) still zeroizes the
// scratch HSM, under a deadline of its own, and says so.
func TestDrillCancelledStillZeroizes(t *testing.T) {
	env := hsmtest.NewEnv(t)
	member, scratch := env.Serve(t, nil), env.Serve(t, nil)
	const clusterID, officer, password = "cluster-d", "admin", "correct horse battery staple"
	env.InitCluster(t, member, clusterID, officer, password)

	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	cert := env.CA.Client(t, "officer")
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p("mfr.pem"), "CERTIFICATE", env.Mfr.Certificate().Raw, 0o644)
	writePEM(t, p("op.pem"), "CERTIFICATE", env.Op.Certificate().Raw, 0o644)
	writePEM(t, p("ca.pem"), "CERTIFICATE", env.CA.Cert.Raw, 0o644)
	writePEM(t, p("officer.crt"), "CERTIFICATE", cert.Certificate[0], 0o644)
	writePEM(t, p("officer.key"), "PRIVATE KEY", keyDER, 0o600)
	if err := os.WriteFile(p("password"), []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := wrap.GenerateMasterKey(p("keyring"), "mk"); err != nil {
		t.Fatal(err)
	}
	if _, err := backup.GenerateSigningKey(p("signing.key"), p("signing.pub")); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`store: file://store
keyring: keyring
signing_key: signing.key
manufacturer_root: mfr.pem
operator_root: op.pem
clusters:
  %s:
    members: [%q]
    customer_ca: ca.pem
    cert: officer.crt
    key: officer.key
    user: %s
    password_file: password
    drill: {hsm: %q, claim: scratch.claim}
`, clusterID, member.Addr, officer, scratch.Addr)
	if err := os.WriteFile(p("scratch.claim"), scratch.Claim.Marshal(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("config.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "--config", p("config.yaml"), "backup", "create", "--cluster", clusterID)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &cancelOnLog{msg: "drill restored", cancel: cancel}
	var out strings.Builder
	err = newApp(&out, logs).RunContext(ctx, []string{"hsmbackup", "--config", p("config.yaml"), "scheduler", "drill", "--cluster", clusterID})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted drill: %v\n%s%s", err, out.String(), logs.buf.String())
	}
	if !strings.Contains(logs.buf.String(), "drill scratch HSM zeroized") || !strings.HasSuffix(out.String(), "; scratch HSM zeroized\n") {
		t.Fatalf("the interrupted drill did not say it zeroized the scratch HSM:\n%s%s", out.String(), logs.buf.String())
	}
	if scratch.Dev.Initialized() || scratch.Dev.ClusterID() != "" {
		t.Fatal("the scratch HSM holds the restored cluster after an interrupted drill")
	}
	if !member.Dev.Initialized() || member.Dev.ClusterID() != clusterID {
		t.Fatal("the production member changed")
	}
}
