package device_test

// Attacks on the audit log over the wire: each test drives real daemons
// (hsmtest, TLS 1.3 on loopback) through their HTTP interface, then checks
// that the device's state is as before and that the whole audit chain
// still verifies against the head the device signs, after a restart too.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
)

const wirePassword = "correct horse battery"

// wireHSM is one initialized HSM served over the wire, with a logged-in
// crypto officer's client.
type wireHSM struct {
	env *hsmtest.Env
	h   *hsmtest.Daemon
	cfg client.Config
	co  *client.Client
}

func serveInitialized(t *testing.T) *wireHSM {
	t.Helper()
	env := hsmtest.NewEnv(t)
	h := env.Serve(t, nil)
	cfg := env.InitCluster(t, h, "cluster-1", "admin", wirePassword)
	w := &wireHSM{env: env, h: h, cfg: cfg}
	w.co = w.client(t)
	if _, err := w.co.Login(context.Background(), "admin", wirePassword); err != nil {
		t.Fatal(err)
	}
	return w
}

// client returns a new client of the cluster with the member certificate.
func (w *wireHSM) client(t *testing.T) *client.Client {
	t.Helper()
	c, err := client.New(w.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// restart reboots the daemon and logs the officer in again.
func (w *wireHSM) restart(t *testing.T) {
	t.Helper()
	w.h.Stop()
	w.h.Start()
	w.co = w.client(t)
	if _, err := w.co.Login(context.Background(), "admin", wirePassword); err != nil {
		t.Fatal(err)
	}
}

// auditLog fetches the audit log over GET /v1/audit and checks the whole
// chain, from its first entry, against the head signed by the device.
func (w *wireHSM) auditLog(t *testing.T) ([]audit.Entry, audit.Head) {
	t.Helper()
	var entries []audit.Entry
	head, err := w.co.AuditLog(context.Background(), func(page []audit.Entry) error { entries = append(entries, page...); return nil })
	if err != nil {
		t.Fatalf("audit log: %v", err)
	}
	mc, _ := w.h.Dev.Certificates()
	if err := hsmcore.VerifyAuditLog(entries, head, mc); err != nil {
		t.Fatalf("audit log does not verify: %v", err)
	}
	if len(entries) == 0 || entries[0].Seq != 1 || uint64(len(entries)) != head.Head.Seq {
		t.Fatalf("audit log is not the whole chain: %d entries, head seq %d", len(entries), head.Head.Seq)
	}
	return entries, head.Head
}

// refusals counts the entries of op with result since start, and the
// refusals recorded as suppressed ("audit.suppressed", "<op> <result> xN").
func refusals(entries []audit.Entry, op, result string) (recorded, suppressed int) {
	for _, e := range entries {
		switch {
		case e.Op == op && e.Result == result:
			recorded++
		case e.Op == "audit.suppressed" && strings.HasPrefix(e.Object, op+" "+result+" x"):
			var n int
			fmt.Sscanf(strings.TrimPrefix(e.Object, op+" "+result+" x"), "%d", &n)
			suppressed += n
		}
	}
	return recorded, suppressed
}

// (a) Hammering POST /v1/login with wrong passwords and POST
// /v1/initialize on an initialized HSM, with nothing but a member
// certificate, grows the audit log by at most the bound for unauthenticated
// calls, not by one entry per call; every refusal is still counted.
func TestWireUnauthenticatedRefusalsDoNotGrowAuditLog(t *testing.T) {
	ctx := context.Background()
	w := serveInitialized(t)
	before, _ := w.auditLog(t)
	digest := w.h.Dev.StateDigest()

	const logins, inits = 200, 60
	c := w.client(t)
	for i := range logins {
		user := "admin"
		if i%2 == 1 {
			user = "nobody"
		}
		if _, err := c.Login(ctx, user, "wrong password"); !errors.Is(err, hsmcore.ErrAuth) {
			t.Fatalf("login %d with a wrong password: %v, want ErrAuth", i, err)
		}
	}
	for i := range inits {
		if err := c.Initialize(ctx, fmt.Sprintf("mallory%d", i), wirePassword); !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("initialize %d: %v, want ErrPermission", i, err)
		}
	}

	after, _ := w.auditLog(t)
	grown := len(after) - len(before)
	// Per operation the burst and a summary per result; for logins, admin's
	// lockout (DefaultMaxLoginFailures guesses) adds a user.lock entry and
	// a summary of the guesses refused as locked.
	bound := 2*(device.UnauthAuditBurst+1) + 2
	if grown > bound {
		t.Fatalf("%d unauthenticated refusals grew the audit log by %d entries, want at most %d", logins+inits, grown, bound)
	}
	newEntries := after[len(before):]
	r, s := refusals(newEntries, "login", "denied")
	lr, ls := refusals(newEntries, "login", "locked")
	if r+s+lr+ls != logins {
		t.Errorf("login refusals accounted for: %d+%d denied, %d+%d locked (recorded+suppressed), want %d in all", r, s, lr, ls, logins)
	}
	if r, s := refusals(newEntries, "device.initialize", "denied"); r+s != inits {
		t.Errorf("initialize refusals accounted for: %d recorded + %d suppressed, want %d", r, s, inits)
	}
	if w.h.Dev.StateDigest() != digest {
		t.Fatal("refused calls changed the device's state")
	}
	if err := w.co.UnlockUser(ctx, "admin"); err != nil {
		t.Fatal(err)
	}
	w.restart(t)
	w.auditLog(t)
	if w.h.Dev.StateDigest() != digest {
		t.Fatal("state changed across the restart")
	}
}

// The hard limit of one audit file (audit.MaxEntries, lowered here) can no
// longer be reached by unauthenticated callers: after hammering POST
// /v1/login with wrong passwords far past it, the daemon stops and starts
// again (the device opens) and the whole log verifies.
func TestWireAuditHardLimitUnreachableByFailedLogins(t *testing.T) {
	defer setMaxEntries(64)()
	ctx := context.Background()
	w := serveInitialized(t)
	digest := w.h.Dev.StateDigest()
	c := w.client(t)
	for i := range 5 * audit.MaxEntries {
		if _, err := c.Login(ctx, "admin", "wrong password"); !errors.Is(err, hsmcore.ErrAuth) {
			t.Fatalf("login %d: %v, want ErrAuth", i, err)
		}
	}
	if err := w.co.UnlockUser(ctx, "admin"); err != nil {
		t.Fatal(err)
	}
	w.restart(t) // fails the test if the device does not open
	entries, _ := w.auditLog(t)
	r, s := refusals(entries, "login", "denied")
	lr, ls := refusals(entries, "login", "locked")
	if r+s+lr+ls != 5*audit.MaxEntries {
		t.Errorf("login refusals accounted for: %d+%d denied, %d+%d locked (recorded+suppressed), want %d in all", r, s, lr, ls, 5*audit.MaxEntries)
	}
	checkAuditFiles(t, w.h.Dir)
	if w.h.Dev.StateDigest() != digest {
		t.Fatal("refused logins changed the device's state")
	}
}

// (b) A log longer than one segment rotates into closed, signed segments;
// the daemon restarts and the whole chain, across segments, verifies over
// GET /v1/audit.
func TestWireAuditRotatesAndVerifiesAcrossSegments(t *testing.T) {
	defer setMaxEntries(16)()
	ctx := context.Background()
	w := serveInitialized(t)
	for i := range 30 { // 60 entries: login and logout
		c := w.client(t)
		if _, err := c.Login(ctx, "admin", wirePassword); err != nil {
			t.Fatalf("login %d: %v", i, err)
		}
		if err := c.Logout(ctx); err != nil {
			t.Fatalf("logout %d: %v", i, err)
		}
	}
	running, head := w.auditLog(t)
	if head.Seq <= 3*uint64(audit.MaxEntries) {
		t.Fatalf("head seq %d: not enough entries for three segments", head.Seq)
	}
	if n := checkAuditFiles(t, w.h.Dir); n < 3 {
		t.Fatalf("%d closed segments, want at least 3", n)
	}
	w.restart(t)
	restarted, _ := w.auditLog(t)
	if len(restarted) <= len(running) {
		t.Fatalf("after the restart the log has %d entries, before %d", len(restarted), len(running))
	}
	for i := range running {
		if restarted[i] != running[i] {
			t.Fatalf("entry %d changed across the restart", running[i].Seq)
		}
	}
}

// (c) A torn last entry (a write cut short: a crash or a full disk) is
// truncated away when the device opens, and the truncation is recorded as
// "audit.recovered" with its byte count; the log verifies. An edited entry
// in the middle is still refused as tampered.
func TestWireTornAuditTailRecoveredEditedEntryRefused(t *testing.T) {
	w := serveInitialized(t)
	before, _ := w.auditLog(t)
	digest := w.h.Dev.StateDigest()
	w.h.Stop()
	torn := `{"seq":` + fmt.Sprint(len(before)+1) + `,"time":"2026-01-02T03:04:05Z","actor":"adm`
	appendFile(t, filepath.Join(w.h.Dir, "audit.log"), torn)
	w.h.Start()
	if _, err := w.co.Login(context.Background(), "admin", wirePassword); err != nil {
		t.Fatal(err)
	}
	after, _ := w.auditLog(t)
	var rec *audit.Entry
	for i := len(before); i < len(after); i++ {
		if after[i].Op == "audit.recovered" {
			rec = &after[i]
		}
	}
	want := fmt.Sprintf("%d bytes", len(torn))
	if rec == nil || rec.Seq != uint64(len(before))+1 || !strings.Contains(rec.Object, want) {
		t.Fatalf("no audit.recovered entry right after the last good one naming %q: %+v", want, rec)
	}
	if w.h.Dev.StateDigest() != digest {
		t.Fatal("recovery changed the device's state")
	}

	// An edited entry in the middle of the log is not a torn tail.
	w.h.Stop()
	path := filepath.Join(w.h.Dir, "audit.log")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	lines[2] = strings.Replace(lines[2], `"result":"ok"`, `"result":"OK"`, 1)
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if d, err := device.Open(w.h.Dir, device.TestOptions()); !errors.Is(err, hsmcore.ErrTampered) {
		if d != nil {
			d.Close()
		}
		t.Fatalf("open with an edited middle entry: %v, want ErrTampered", err)
	}
}

// (d) An audit append that fails (a full disk: half the line written,
// then ENOSPC) fails its operation, consumes no sequence number and
// leaves no partial line: the next operation succeeds, and the log
// verifies while running and after a restart.
func TestWireFailedAuditAppendLeavesNoGap(t *testing.T) {
	ctx := context.Background()
	w := serveInitialized(t)
	_, head := w.auditLog(t)
	digest := w.h.Dev.StateDigest()
	device.FailAuditWrites(w.h.Dev, 1)
	c := w.client(t)
	if _, err := c.Login(ctx, "admin", wirePassword); err == nil {
		t.Fatal("login succeeded although its audit entry could not be written")
	}
	if w.h.Dev.StateDigest() != digest {
		t.Fatal("the failed call changed the device's state")
	}
	if _, err := c.Login(ctx, "admin", wirePassword); err != nil {
		t.Fatalf("login after the failed append: %v", err)
	}
	entries, now := w.auditLog(t)
	// The failed login took no number: the next entries are the retried
	// login and this read's login, nothing in between.
	last := entries[head.Seq] // the entry right after the old head
	if last.Op != "login" || last.Actor != "admin" || last.Result != "ok" || now.Seq != head.Seq+1 {
		t.Fatalf("after the failed append: entry %d is %s %s %s, head %d; want the retried login at %d", last.Seq, last.Actor, last.Op, last.Result, now.Seq, head.Seq+1)
	}
	w.restart(t)
	w.auditLog(t)
}

// (e) The actor of an unauthenticated call's entry is never a name the
// caller chose: a failed login and a refused initialize name the claimed
// user only as the object; the cluster set-up calls name the holder of the
// claim secret that proved them.
func TestWireUnauthenticatedActorIsNotClaimedName(t *testing.T) {
	ctx := context.Background()
	w := serveInitialized(t)
	c := w.client(t)
	if _, err := c.Login(ctx, "admin", "wrong password"); !errors.Is(err, hsmcore.ErrAuth) {
		t.Fatalf("login: %v, want ErrAuth", err)
	}
	if err := c.Initialize(ctx, "mallory", wirePassword); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("initialize: %v, want ErrPermission", err)
	}
	entries, _ := w.auditLog(t)
	seen := map[string]bool{}
	for _, e := range entries {
		switch {
		case e.Op == "login" && e.Result == "denied", e.Op == "device.initialize":
			seen[e.Op+" "+e.Result] = true
			if e.Actor != device.Unauthenticated {
				t.Errorf("entry %d (%s %s): actor %q, want %q", e.Seq, e.Op, e.Result, e.Actor, device.Unauthenticated)
			}
		case e.Op == "cluster.csr", e.Op == "cluster.init":
			seen[e.Op+" "+e.Result] = true
			if e.Actor != hsmcore.ClaimHolder {
				t.Errorf("entry %d (%s %s): actor %q, want %q", e.Seq, e.Op, e.Result, e.Actor, hsmcore.ClaimHolder)
			}
		case e.Op == "login" && e.Result == "ok" && e.Actor != "admin":
			t.Errorf("entry %d: successful login by %q, want admin", e.Seq, e.Actor)
		}
	}
	for _, want := range []string{"login denied", "device.initialize denied", "device.initialize ok", "cluster.csr ok", "cluster.init ok"} {
		if !seen[want] {
			t.Errorf("no %s entry in the log", want)
		}
	}
	last := func(op, result string) audit.Entry {
		for i := len(entries) - 1; i >= 0; i-- {
			if entries[i].Op == op && entries[i].Result == result {
				return entries[i]
			}
		}
		return audit.Entry{}
	}
	if e := last("login", "denied"); e.Object != "admin" {
		t.Errorf("failed login: object %q, want the claimed name admin", e.Object)
	}
	if e := last("device.initialize", "denied"); e.Object != "mallory" {
		t.Errorf("refused initialize: object %q, want the claimed name mallory", e.Object)
	}
}

// setMaxEntries lowers audit.MaxEntries and returns what restores it.
func setMaxEntries(n int) func() {
	old := audit.MaxEntries
	audit.MaxEntries = n
	return func() { audit.MaxEntries = old }
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

// checkAuditFiles checks that no audit file in dir holds more than
// audit.MaxEntries entries and returns how many closed segments there are.
func checkAuditFiles(t *testing.T, dir string) (closed int) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "audit.log*"))
	for _, f := range files {
		if strings.HasSuffix(f, ".head") {
			closed++
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(b), "\n"); n > audit.MaxEntries {
			t.Errorf("%s holds %d entries, over the limit %d", filepath.Base(f), n, audit.MaxEntries)
		}
	}
	return closed
}

// GET /v1/audit answers a page at a time: an officer's client reads a log
// of many segments whole, page by page, to the head of the first page,
// though entries are appended while it reads, and the log verifies
// against the head the device signed.
func TestWireAuditLogPaged(t *testing.T) {
	old := audit.MaxEntries
	audit.MaxEntries = 8 // segments of 8 entries: a page each at most
	t.Cleanup(func() { audit.MaxEntries = old })
	w := serveInitialized(t)
	ctx := context.Background()
	other := w.client(t)
	for range 30 {
		if _, err := other.Login(ctx, "admin", wirePassword); err != nil {
			t.Fatal(err)
		}
		other.Logout(ctx)
	}
	var got []audit.Entry
	pages := 0
	head, err := w.co.AuditLog(ctx, func(p []audit.Entry) error {
		pages++
		got = append(got, p...)
		_, err := other.Login(ctx, "admin", wirePassword) // the log grows meanwhile
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	mc, _ := w.h.Dev.Certificates()
	if err := hsmcore.VerifyAuditLog(got, head, mc); err != nil {
		t.Fatalf("the paged log does not verify: %v", err)
	}
	if pages < int(head.Head.Seq)/8 || uint64(len(got)) != head.Head.Seq {
		t.Fatalf("%d entries in %d pages, head %d: want every entry to the head, in pages of a segment at most", len(got), pages, head.Head.Seq)
	}
	now, _, err := w.h.Dev.AuditLog()
	if err != nil || uint64(len(now)) <= head.Head.Seq {
		t.Fatalf("the log grew to %d entries while read (%v), want more than %d", len(now), err, head.Head.Seq)
	}
	t.Logf("%d entries in %d pages; %d by the end", len(got), pages, len(now))
}
