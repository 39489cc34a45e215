package server_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
)

// lockoutEnv is an initialized HSM with crypto user alice, served by
// daemon h, and an officer's client.
type lockoutEnv struct {
	*env
	h  *hsmtest.Daemon
	co *client.Client
}

func newLockoutEnv(t *testing.T) *lockoutEnv {
	t.Helper()
	e := newEnv(t)
	h := e.Serve(t, nil)
	cfg := e.InitCluster(t, h, "cluster-1", "admin", password)
	co := e.memberClient(t, h.Addr, cfg.Certificate)
	ctx := context.Background()
	if _, err := co.Login(ctx, "admin", password); err != nil {
		t.Fatal(err)
	}
	if err := co.CreateUser(ctx, "alice", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	return &lockoutEnv{env: e, h: h, co: co}
}

// login tries user's password from a new connection.
func (l *lockoutEnv) login(t *testing.T, user, pw string) error {
	t.Helper()
	cert := l.CA.Client(t, "guesser")
	c := l.memberClient(t, l.h.Addr, &cert)
	_, err := c.Login(context.Background(), user, pw)
	return err
}

// guess makes n wrong guesses at user's password, each refused with
// ErrAuth.
func (l *lockoutEnv) guess(t *testing.T, user string, n int) {
	t.Helper()
	for i := range n {
		if err := l.login(t, user, fmt.Sprintf("wrong guess %d", i)); !errors.Is(err, hsmcore.ErrAuth) {
			t.Fatalf("wrong guess %d: got %v, want ErrAuth", i, err)
		}
	}
}

func auditLen(t *testing.T, d *device.Device) int {
	t.Helper()
	entries, _, err := d.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// The attack: guessing a user's password online, as fast as the HSM
// answers. After DefaultMaxLoginFailures wrong passwords in a row the
// right one is refused too, with the same error as a wrong one, and stays
// refused across a restart of the HSM; the HSM's contents do not change,
// and further guesses add no more than the bound of unauthenticated
// entries to the audit log (the rest are counted in its summary).
func TestLoginLockoutOverTheWire(t *testing.T) {
	l := newLockoutEnv(t)
	d := l.h.Dev
	digest := d.StateDigest()

	l.guess(t, "alice", device.DefaultMaxLoginFailures)
	if err := l.login(t, "alice", password); !errors.Is(err, hsmcore.ErrAuth) {
		t.Fatalf("right password after %d wrong ones: got %v, want ErrAuth", device.DefaultMaxLoginFailures, err)
	}
	n := auditLen(t, d)
	l.guess(t, "alice", 20)
	if err := l.login(t, "alice", password); !errors.Is(err, hsmcore.ErrAuth) {
		t.Fatalf("right password, locked: got %v, want ErrAuth", err)
	}
	if got := auditLen(t, d); got-n > device.UnauthAuditBurst {
		t.Fatalf("21 attempts on a locked user added %d audit entries, want at most %d", got-n, device.UnauthAuditBurst)
	}
	if d.StateDigest() != digest {
		t.Fatal("failed logins changed the HSM's contents")
	}
	auditVerifies(t, d)

	l.h.Stop()
	l.h.Start()
	if err := l.login(t, "alice", password); !errors.Is(err, hsmcore.ErrAuth) {
		t.Fatalf("right password after a restart: got %v, want ErrAuth", err)
	}
	if l.h.Dev.StateDigest() != digest {
		t.Fatal("failed logins changed the HSM's contents")
	}
	auditVerifies(t, l.h.Dev)
}

// Fewer wrong passwords in a row than the limit lock nothing, and a
// successful login starts the count again.
func TestLoginSuccessResetsFailures(t *testing.T) {
	l := newLockoutEnv(t)
	for range 3 {
		l.guess(t, "alice", device.DefaultMaxLoginFailures-1)
		if err := l.login(t, "alice", password); err != nil {
			t.Fatalf("right password after %d wrong ones: %v", device.DefaultMaxLoginFailures-1, err)
		}
	}
}

// A crypto officer lifts the lock; the right password works again, and
// the lock and the unlock are in the audit log, each with its actor.
func TestOfficerUnlocksUserOverTheWire(t *testing.T) {
	l := newLockoutEnv(t)
	ctx := context.Background()
	d := l.h.Dev
	l.guess(t, "alice", device.DefaultMaxLoginFailures)

	// Neither a crypto user nor an unknown name unlocks anything.
	cert := l.CA.Client(t, "bob")
	if err := l.co.CreateUser(ctx, "bob", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	digest := d.StateDigest()
	bob := l.memberClient(t, l.h.Addr, &cert)
	if _, err := bob.Login(ctx, "bob", password); err != nil {
		t.Fatal(err)
	}
	if err := bob.UnlockUser(ctx, "alice"); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("crypto user unlocks: got %v, want ErrPermission", err)
	}
	if err := l.co.UnlockUser(ctx, "nobody"); !errors.Is(err, hsmcore.ErrNotFound) {
		t.Fatalf("unlock of an unknown user: got %v, want ErrNotFound", err)
	}
	if err := l.login(t, "alice", password); !errors.Is(err, hsmcore.ErrAuth) {
		t.Fatalf("still locked: got %v, want ErrAuth", err)
	}

	if err := l.co.UnlockUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := l.login(t, "alice", password); err != nil {
		t.Fatalf("right password after the unlock: %v", err)
	}
	if d.StateDigest() != digest {
		t.Fatal("lock and unlock changed the HSM's contents")
	}
	auditVerifies(t, d)
	entries, _, err := d.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	var lock, unlock int
	for _, e := range entries {
		switch {
		case e.Op == "user.lock" && e.Object == "alice" && e.Actor == "":
			lock++
		case e.Op == "user.unlock" && e.Object == "alice" && e.Actor == "admin" && e.Result != "denied":
			unlock++
		}
	}
	if lock != 1 || unlock != 1 {
		t.Fatalf("audit log has %d lock and %d unlock entries for alice, want 1 and 1", lock, unlock)
	}
}

// Unknown user names are refused as wrong passwords are, and leave no
// count behind that could lock a user of that name created later.
func TestUnknownUserNamesLeaveNoCount(t *testing.T) {
	l := newLockoutEnv(t)
	ctx := context.Background()
	l.guess(t, "carol", 2*device.DefaultMaxLoginFailures)
	if err := l.co.CreateUser(ctx, "carol", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	if err := l.login(t, "carol", password); err != nil {
		t.Fatalf("a user created after guesses at its name: %v", err)
	}
	// Deleted and created again, a locked user starts afresh.
	l.guess(t, "carol", device.DefaultMaxLoginFailures)
	if err := l.co.DeleteUser(ctx, "carol"); err != nil {
		t.Fatal(err)
	}
	if err := l.co.CreateUser(ctx, "carol", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	if err := l.login(t, "carol", password); err != nil {
		t.Fatalf("a user created again after a lock: %v", err)
	}
}
