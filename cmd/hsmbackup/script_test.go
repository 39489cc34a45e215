package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/storeurl"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// TestMain lets the test binary stand in for the hsmbackup command in the
// scripts: run as "hsmbackup", it is main, which exits.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"hsmbackup": main})
}

// The scripts' environment, set up for each script in its $WORK by
// (*scriptPKI).setup:
//
//	config.yaml        store, keys, roots and two clusters, by relative paths
//	store/             the file store (store: file://store)
//	keyring            master keyring, key "mk" v1 (0600)
//	signing.key        manifest signing key (0600); signing.pub its public key
//	mfr-root.pem       the manufacturer root
//	op-root.pem        the operator root
//	other-op-root.pem  the root of $OTHER_ADDR's operator, not trusted
//	customer-ca.pem    the customer CA of $CLUSTER
//	officer.crt        client certificate from it; officer.key its key (0600)
//	password           the crypto officer's password (0600)
//	keyuser.pw         the password (0600) of crypto user "keyuser" of
//	                   $CLUSTER, which may own keys
//
// and variables:
//
//	CLUSTER     the id of the cluster (configured, initialized, one member)
//	HSM_ADDR    its member
//	            (member.claim: its claim file)
//	FRESH_ADDR  a new, uninitialized HSM of the same class, manufacturer
//	            and operator: a restore target (claim file fresh.claim)
//	SPARE_ADDR  another such HSM (spare.claim)
//	OTHER_ADDR  a new HSM of another operator: a restore into it is refused
//	            (other.claim)
//	FROZEN_ADDR an address that accepts connections and never answers
//
// The config also names cluster "cluster-down", whose one member does not
// answer. Every script gets HSMs of its own, served in-process until the
// test ends, so that scripts may change them and run in parallel.
const (
	scriptCluster  = "cluster-a1"
	scriptOfficer  = "admin"
	scriptPassword = "correct horse battery staple"
	scriptKeyUser  = "keyuser"
	scriptKeyPass  = "keys are for crypto users"
)

const scriptConfig = `# written by (*scriptPKI).setup
store: file://store
keyring: keyring
signing_key: signing.key
public_key: signing.pub
manufacturer_root: mfr-root.pem
operator_root: op-root.pem
retention:
  days: 90
clusters:
  %[1]s:
    members: [%[2]q]
    customer_ca: customer-ca.pem
    cert: officer.crt
    key: officer.key
    user: %[3]s
    password_file: password
    tags:
      team: crypto
  cluster-down:
    members: ["127.0.0.1:1"]
    customer_ca: customer-ca.pem
    cert: officer.crt
    key: officer.key
    user: %[3]s
    password_file: password
`

// scriptPKI is what every script's HSMs share: the authorities, the
// customer CA and the officer's client certificate; and the HSMs, a set
// for each script.
type scriptPKI struct {
	env    *hsmtest.Env
	other  *device.Authority // an operator other than env.Op
	cert   tls.Certificate
	hsms   chan scriptHSMs
	frozen string // $FROZEN_ADDR: accepts connections and never answers
}

// scriptHSMs are the HSMs of one script.
type scriptHSMs struct {
	member, fresh, spare, other *hsmtest.Daemon
}

// TestScripts runs the CLI scripts in testdata/script against HSMs served
// in-process over TLS.
func TestScripts(t *testing.T) {
	dir := filepath.Join("testdata", "script")
	scripts, err := filepath.Glob(filepath.Join(dir, "*.txt*"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := device.NewAuthority(device.Operator, "othercloud")
	if err != nil {
		t.Fatal(err)
	}
	env := hsmtest.NewEnv(t)
	p := &scriptPKI{env: env, other: other, cert: env.CA.Client(t, "backup-officer"), hsms: make(chan scriptHSMs, len(scripts)), frozen: frozenHSM(t)}
	// The HSMs are all served before the first script starts: a device is
	// locked with flock(2), and a device closed and opened again (as
	// hsmtest.Serve does) while another goroutine forks a command can find
	// its lock still held by the child, until the child execs.
	for range scripts {
		h := scriptHSMs{member: env.Serve(t, nil), fresh: env.Serve(t, nil), spare: env.Serve(t, nil), other: env.Serve(t, other)}
		env.InitCluster(t, h.member, scriptCluster, scriptOfficer, scriptPassword)
		p.createKeyUser(t, h.member.Addr)
		p.hsms <- h
	}
	testscript.Run(t, testscript.Params{
		Dir:                 dir,
		Setup:               p.setup,
		RequireExplicitExec: true,
		RequireUniqueNames:  true,
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"capture":     cmdCapture,
			"jsonpath":    cmdJSONPath,
			"jsonline":    cmdJSONLine,
			"backdate":    cmdBackdate,
			"noinventory": cmdNoInventory,
			"lockrecord":  cmdLockRecord,
		},
	})
}

// setup gives the script its HSMs and writes its files.
func (p *scriptPKI) setup(e *testscript.Env) error {
	var h scriptHSMs
	select {
	case h = <-p.hsms:
	default:
		return errors.New("more scripts than sets of HSMs")
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(p.cert.PrivateKey)
	if err != nil {
		return err
	}
	path := func(name string) string { return filepath.Join(e.WorkDir, name) }
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{"mfr-root.pem", pemBytes("CERTIFICATE", p.env.Mfr.Certificate().Raw), 0o644},
		{"op-root.pem", pemBytes("CERTIFICATE", p.env.Op.Certificate().Raw), 0o644},
		{"other-op-root.pem", pemBytes("CERTIFICATE", p.other.Certificate().Raw), 0o644},
		{"customer-ca.pem", pemBytes("CERTIFICATE", p.env.CA.Cert.Raw), 0o644},
		{"officer.crt", pemBytes("CERTIFICATE", p.cert.Certificate[0]), 0o644},
		{"officer.key", pemBytes("PRIVATE KEY", keyDER), 0o600},
		{"password", []byte(scriptPassword + "\n"), 0o600},
		{"keyuser.pw", []byte(scriptKeyPass + "\n"), 0o600},
		{"config.yaml", fmt.Appendf(nil, scriptConfig, scriptCluster, h.member.Addr, scriptOfficer), 0o644},
		{"member.claim", h.member.Claim.Marshal(), 0o600},
		{"fresh.claim", h.fresh.Claim.Marshal(), 0o600},
		{"spare.claim", h.spare.Claim.Marshal(), 0o600},
		{"other.claim", h.other.Claim.Marshal(), 0o600},
	} {
		if err := os.WriteFile(path(f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	if _, err := wrap.GenerateMasterKey(path("keyring"), "mk"); err != nil {
		return err
	}
	if _, err := backup.GenerateSigningKey(path("signing.key"), path("signing.pub")); err != nil {
		return err
	}
	if err := os.Mkdir(path("store"), 0o700); err != nil {
		return err
	}
	// Under the race detector, each hsmbackup process would otherwise
	// sleep a second as it exits.
	e.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	e.Setenv("CLUSTER", scriptCluster)
	e.Setenv("HSM_ADDR", h.member.Addr)
	e.Setenv("FRESH_ADDR", h.fresh.Addr)
	e.Setenv("SPARE_ADDR", h.spare.Addr)
	e.Setenv("OTHER_ADDR", h.other.Addr)
	e.Setenv("FROZEN_ADDR", p.frozen)
	return nil
}

// frozenHSM listens for an HSM that accepts connections and never
// answers, not even the TLS handshake: a frozen daemon.
func frozenHSM(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	return ln.Addr().String()
}

// createKeyUser adds crypto user scriptKeyUser to the cluster whose member
// is at addr, as its officer would.
func (p *scriptPKI) createKeyUser(tb testing.TB, addr string) {
	tb.Helper()
	cl, err := client.New(client.Config{Addr: addr, ClusterID: scriptCluster, CustomerCA: p.env.CA.Cert, Certificate: &p.cert})
	if err != nil {
		tb.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	if _, err := cl.Login(ctx, scriptOfficer, scriptPassword); err != nil {
		tb.Fatal(err)
	}
	if err := cl.CreateUser(ctx, scriptKeyUser, hsmcore.CryptoUser, scriptKeyPass); err != nil {
		tb.Fatal(err)
	}
	if err := cl.Logout(ctx); err != nil {
		tb.Fatal(err)
	}
}

func pemBytes(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// cmdCapture sets a variable from the last command's standard output:
//
//	capture VAR REGEXP
//
// VAR is set to the first submatch of REGEXP (or the whole match if it has
// no group); it is an error if REGEXP does not match.
func cmdCapture(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: capture VAR REGEXP")
	}
	re, err := regexp.Compile(`(?m)` + args[1])
	ts.Check(err)
	out := ts.ReadFile("stdout")
	m := re.FindStringSubmatch(out)
	if m == nil {
		ts.Fatalf("capture %s: no match for %#q in stdout:\n%s", args[0], args[1], out)
	}
	if len(m) > 1 {
		m = m[1:]
	}
	ts.Setenv(args[0], m[0])
}

// cmdJSONPath checks a value in a JSON file (or stdout, stderr):
//
//	jsonpath FILE PATH [WANT]
//
// FILE must hold exactly one JSON value. PATH is dot-separated object
// members and array indexes ("." alone is the whole value); an element "#"
// stands for the length of the array or object (quote it: # starts a
// comment). Without WANT the path must exist (with !, not exist); with WANT
// it must exist and its value, as JSON but strings unquoted, must equal
// WANT (with !, differ).
func cmdJSONPath(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 && len(args) != 3 {
		ts.Fatalf("usage: jsonpath FILE PATH [WANT]")
	}
	data := ts.ReadFile(args[0])
	var v any
	d := json.NewDecoder(strings.NewReader(data))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		ts.Fatalf("%s is not JSON: %v\n%s", args[0], err, data)
	}
	if d.More() {
		ts.Fatalf("%s holds more than one JSON value", args[0])
	}
	got, found := jsonLookup(v, args[1])
	switch {
	case len(args) == 2 && found == neg:
		ts.Fatalf("%s: path %s found: %t, want %t", args[0], args[1], found, !neg)
	case len(args) == 3 && !found:
		ts.Fatalf("%s: no path %s", args[0], args[1])
	case len(args) == 3 && (got == args[2]) == neg:
		ts.Fatalf("%s: %s is %q, want %s%q", args[0], args[1], got, map[bool]string{true: "not ", false: ""}[neg], args[2])
	}
}

// cmdJSONLine checks the JSON lines of a file (or stdout, stderr), as
// --json writes them:
//
//	jsonline FILE N PATH [WANT]
//	jsonline FILE '#' WANT
//
// Every line of FILE must be one JSON object with a string message_type.
// N picks line N (from 0; negative counts from the end: -1 is the last),
// on which PATH and WANT are as jsonpath's; '#' checks the number of
// lines.
func cmdJSONLine(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 3 || len(args) > 4 || (args[1] == "#" && len(args) != 3) {
		ts.Fatalf("usage: jsonline FILE N PATH [WANT] | jsonline FILE '#' WANT")
	}
	data := ts.ReadFile(args[0])
	var lines []any
	for i, l := range strings.Split(strings.TrimSuffix(data, "\n"), "\n") {
		if l == "" && data == "" {
			break
		}
		var v any
		d := json.NewDecoder(strings.NewReader(l))
		d.UseNumber()
		if err := d.Decode(&v); err != nil || d.More() {
			ts.Fatalf("%s: line %d is not one JSON value (%v): %s", args[0], i+1, err, l)
		}
		if o, ok := v.(map[string]any); !ok {
			ts.Fatalf("%s: line %d is not an object: %s", args[0], i+1, l)
		} else if _, ok := o["message_type"].(string); !ok {
			ts.Fatalf("%s: line %d has no message_type: %s", args[0], i+1, l)
		}
		lines = append(lines, v)
	}
	if args[1] == "#" {
		if got := strconv.Itoa(len(lines)); (got == args[2]) == neg {
			ts.Fatalf("%s: %s lines, want %s%s", args[0], got, map[bool]string{true: "not ", false: ""}[neg], args[2])
		}
		return
	}
	n, err := strconv.Atoi(args[1])
	ts.Check(err)
	if n < 0 {
		n += len(lines)
	}
	if n < 0 || n >= len(lines) {
		ts.Fatalf("%s: no line %s of %d", args[0], args[1], len(lines))
	}
	got, found := jsonLookup(lines[n], args[2])
	switch {
	case len(args) == 3 && found == neg:
		ts.Fatalf("%s: line %s: path %s found: %t, want %t", args[0], args[1], args[2], found, !neg)
	case len(args) == 4 && !found:
		ts.Fatalf("%s: line %s: no path %s", args[0], args[1], args[2])
	case len(args) == 4 && (got == args[3]) == neg:
		ts.Fatalf("%s: line %s: %s is %q, want %s%q", args[0], args[1], args[2], got, map[bool]string{true: "not ", false: ""}[neg], args[3])
	}
}

// jsonLookup follows path in v and returns the value found there as text.
func jsonLookup(v any, path string) (string, bool) {
	if path != "." {
		for _, k := range strings.Split(path, ".") {
			switch x := v.(type) {
			case map[string]any:
				if k == "#" {
					v = json.Number(strconv.Itoa(len(x)))
					continue
				}
				var ok bool
				if v, ok = x[k]; !ok {
					return "", false
				}
			case []any:
				if k == "#" {
					v = json.Number(strconv.Itoa(len(x)))
					continue
				}
				i, err := strconv.Atoi(k)
				if err != nil || i < 0 || i >= len(x) {
					return "", false
				}
				v = x[i]
			default:
				return "", false
			}
		}
	}
	if s, ok := v.(string); ok {
		return s, true
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "", false
	}
	return string(b), true
}

// cmdBackdate moves a backup of the store in store/ into the past, as if it
// had been created (and, if deleted, deleted) DAYS days earlier, and
// re-signs its manifest with signing.key: what retention needs to act on in
// a test.
//
//	backdate BACKUP-ID DAYS
func cmdBackdate(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: backdate BACKUP-ID DAYS")
	}
	days, err := strconv.Atoi(args[1])
	ts.Check(err)
	resign(ts, args[0], func(m *backup.Manifest) {
		shift := -time.Duration(days) * 24 * time.Hour
		m.Created = m.Created.Add(shift)
		if !m.DeletionRequested.IsZero() {
			m.DeletionRequested = m.DeletionRequested.Add(shift)
		}
	})
}

// cmdNoInventory makes a backup's manifest as written before manifests
// recorded their source's inventory: without it, re-signed.
//
//	noinventory BACKUP-ID
func cmdNoInventory(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: noinventory BACKUP-ID")
	}
	resign(ts, args[0], func(m *backup.Manifest) {
		if m.Inventory == nil {
			ts.Fatalf("backup %s has no inventory", m.ID)
		}
		m.Inventory = nil
	})
}

// cmdLockRecord makes a backup's manifest record an object lock in MODE
// until DAYS days from now, re-signed: the manifest of a backup made in a
// bucket with object lock, in a file store that cannot lock, so that
// prune's handling of locked backups shows in a script.
//
//	lockrecord BACKUP-ID MODE DAYS
func cmdLockRecord(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: lockrecord BACKUP-ID MODE DAYS")
	}
	days, err := strconv.Atoi(args[2])
	ts.Check(err)
	resign(ts, args[0], func(m *backup.Manifest) {
		until := time.Now().UTC().Add(time.Duration(days) * 24 * time.Hour).Truncate(time.Second)
		m.Lock = &backup.Lock{Mode: store.RetentionMode(args[1]), Until: until}
	})
}

// resign changes backup id's manifest in the store in store/ and signs it
// again with signing.key, as only the backup service could.
func resign(ts *testscript.TestScript, id string, change func(*backup.Manifest)) {
	key, err := backup.LoadSigningKey(ts.MkAbs("signing.key"))
	ts.Check(err)
	st, err := storeurl.Open("file://"+ts.MkAbs("store"), storeurl.Options{})
	ts.Check(err)
	ctx := context.Background()
	repo := backup.Repo{Store: st}
	cluster, err := backup.Find(ctx, repo, id)
	ts.Check(err)
	m, err := backup.Describe(ctx, repo, cluster, id)
	ts.Check(err)
	ts.Check(m.Verify(key.Public().(ed25519.PublicKey)))
	change(m)
	ts.Check(m.Sign(key))
	b, err := m.Marshal()
	ts.Check(err)
	ts.Check(st.Put(ctx, repo.ObjectKey(cluster, id, backup.ManifestObject), bytes.NewReader(b), store.PutOptions{}))
}
