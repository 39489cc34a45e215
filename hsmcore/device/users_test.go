package device

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// addCU has co create the crypto user name with testPassword and returns
// its session.
func addCU(t testing.TB, co *Session, name string) *Session {
	t.Helper()
	if err := co.CreateUser(name, hsmcore.CryptoUser, testPassword); err != nil {
		t.Fatal(err)
	}
	return login(t, co.Device(), name)
}

// snapshot returns the sealed state and the serialized contents of d, for
// assertUnchanged.
func snapshot(t testing.TB, d *Device) (sealed, contents []byte) {
	t.Helper()
	return stateBytes(t, d), contentsBytes(t, d)
}

// noPanic runs f and turns a panic into a test failure, so that one bug
// does not take the whole test binary down.
func noPanic(t testing.TB, what string, f func()) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("%s panicked: %v", what, r)
		}
	}()
	f()
}

func TestInitializeOnlyOnce(t *testing.T) {
	d := newDevice(t, stdHW)
	if d.Initialized() {
		t.Fatal("new device reports Initialized")
	}
	if err := d.Initialize("admin", testPassword); err != nil {
		t.Fatal(err)
	}
	if !d.Initialized() {
		t.Fatal("Initialized false after Initialize")
	}
	sealed, contents := snapshot(t, d)
	for _, name := range []string{"admin", "second-admin"} {
		if err := d.Initialize(name, testPassword); !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("second Initialize(%q) = %v, want ErrPermission", name, err)
		}
		assertUnchanged(t, d, sealed, contents)
	}
	if _, err := d.Login("second-admin", testPassword); !errors.Is(err, hsmcore.ErrAuth) {
		t.Fatalf("login as refused second officer = %v, want ErrAuth", err)
	}
}

// A second Initialize must be refused whatever name it gives; the name is
// untrusted input and must not reach the audit log unchecked.
func TestInitializeAgainWithUnloggableNameIsRefused(t *testing.T) {
	d := newDevice(t, stdHW)
	if err := d.Initialize("admin", testPassword); err != nil {
		t.Fatal(err)
	}
	sealed, contents := snapshot(t, d)
	for _, tt := range []struct{ desc, name string }{
		{"2000 bytes", strings.Repeat("a", 2000)},
		{"invalid utf-8", "bad\xffname"},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			var err error
			noPanic(t, "second Initialize with an invalid name (users.go Initialize audits the raw name; audit.Log.Append panics on over-long or non-UTF-8 fields)", func() {
				err = d.Initialize(tt.name, testPassword)
			})
			if !errors.Is(err, hsmcore.ErrPermission) && !errors.Is(err, hsmcore.ErrInvalid) {
				t.Fatalf("second Initialize(%.20q…) = %v, want ErrPermission or ErrInvalid", tt.name, err)
			}
			assertUnchanged(t, d, sealed, contents)
		})
	}
}

func TestPasswordLengthLimits(t *testing.T) {
	tests := []struct {
		name string
		n    int
		ok   bool
	}{
		{"empty", 0, false},
		{"min-1", minPassword - 1, false},
		{"min", minPassword, true},
		{"max", maxPassword, true},
		{"max+1", maxPassword + 1, false},
		{"huge", 10_000, false},
	}

	// Initialize: a refused password leaves the device uninitialized.
	d := newDevice(t, stdHW)
	for _, tt := range tests {
		if tt.ok {
			continue
		}
		sealed, contents := snapshot(t, d)
		if err := d.Initialize("admin", strings.Repeat("p", tt.n)); !errors.Is(err, hsmcore.ErrInvalid) {
			t.Fatalf("%s: Initialize with a %d-byte password = %v, want ErrInvalid", tt.name, tt.n, err)
		}
		assertUnchanged(t, d, sealed, contents)
		if d.Initialized() {
			t.Fatalf("%s: device initialized by a refused password", tt.name)
		}
	}

	co, cu := initDevice(t, d)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pw := strings.Repeat("p", tt.n)
			user := "user-" + strings.ReplaceAll(tt.name, "+", "plus")
			sealed, contents := snapshot(t, d)
			err := co.CreateUser(user, hsmcore.CryptoUser, pw)
			if !tt.ok {
				if !errors.Is(err, hsmcore.ErrInvalid) {
					t.Fatalf("CreateUser with a %d-byte password = %v, want ErrInvalid", tt.n, err)
				}
				assertUnchanged(t, d, sealed, contents)
				if err := cu.ChangePassword(pw); !errors.Is(err, hsmcore.ErrInvalid) {
					t.Fatalf("ChangePassword to a %d-byte password = %v, want ErrInvalid", tt.n, err)
				}
				assertUnchanged(t, d, sealed, contents)
				return
			}
			if err != nil {
				t.Fatalf("CreateUser with a %d-byte password: %v", tt.n, err)
			}
			if _, err := d.Login(user, pw); err != nil {
				t.Fatalf("login with a %d-byte password: %v", tt.n, err)
			}
		})
	}
}

func TestInvalidUserNames(t *testing.T) {
	bad := []struct{ desc, name string }{
		{"empty", ""},
		{"65 bytes", strings.Repeat("a", 65)},
		{"space", "bob smith"},
		{"slash", "bob/evil"},
		{"newline", "bob\nadmin"},
		{"nul", "bob\x00"},
		{"non-ascii", "bøb"},
		{"invalid utf-8", "bob\xff"},
		{"colon", "bob:x"},
	}
	d := newDevice(t, stdHW)
	for _, tt := range bad {
		sealed, contents := snapshot(t, d)
		if err := d.Initialize(tt.name, testPassword); !errors.Is(err, hsmcore.ErrInvalid) {
			t.Fatalf("%s: Initialize(%q) = %v, want ErrInvalid", tt.desc, tt.name, err)
		}
		assertUnchanged(t, d, sealed, contents)
	}
	co, _ := initDevice(t, d)
	for _, tt := range bad {
		t.Run(tt.desc, func(t *testing.T) {
			sealed, contents := snapshot(t, d)
			if err := co.CreateUser(tt.name, hsmcore.CryptoUser, testPassword); !errors.Is(err, hsmcore.ErrInvalid) {
				t.Fatalf("CreateUser(%q) = %v, want ErrInvalid", tt.name, err)
			}
			assertUnchanged(t, d, sealed, contents)
		})
	}
	t.Run("bad role", func(t *testing.T) {
		sealed, contents := snapshot(t, d)
		if err := co.CreateUser("bob", hsmcore.Role("admin"), testPassword); !errors.Is(err, hsmcore.ErrInvalid) {
			t.Fatalf("CreateUser with role %q = %v, want ErrInvalid", "admin", err)
		}
		assertUnchanged(t, d, sealed, contents)
	})
	// The limits themselves are valid.
	for _, name := range []string{strings.Repeat("a", 64), "a", "A.b_c-9"} {
		if err := co.CreateUser(name, hsmcore.CryptoUser, testPassword); err != nil {
			t.Fatalf("CreateUser(%q): %v", name, err)
		}
	}
}

func TestLogin(t *testing.T) {
	d := newDevice(t, stdHW)
	initDevice(t, d)

	s, err := d.Login("alice", testPassword)
	if err != nil {
		t.Fatalf("login with the right password: %v", err)
	}
	if got := s.User(); got != (hsmcore.UserInfo{Name: "alice", Role: hsmcore.CryptoUser}) {
		t.Fatalf("session user = %+v", got)
	}
	if s.Device() != d {
		t.Fatal("session on another device")
	}

	_, errWrong := d.Login("alice", testPassword+"!")
	_, errUnknown := d.Login("nobody", testPassword)
	_, errInvalid := d.Login("bad name", testPassword)
	for _, err := range []error{errWrong, errUnknown, errInvalid} {
		if !errors.Is(err, hsmcore.ErrAuth) {
			t.Fatalf("failed login = %v, want ErrAuth", err)
		}
	}
	// One opaque message: apart from the name, nothing tells an unknown
	// user from a wrong password.
	if a, b := errWrong.Error(), strings.Replace(errUnknown.Error(), "nobody", "alice", 1); a != b {
		t.Fatalf("wrong password and unknown user differ:\n%q\n%q", a, b)
	}
	if strings.Contains(errInvalid.Error(), "bad name") {
		t.Fatalf("error repeats an invalid user name: %q", errInvalid)
	}
	// Case matters.
	if _, err := d.Login("Alice", testPassword); !errors.Is(err, hsmcore.ErrAuth) {
		t.Fatalf("login as Alice = %v, want ErrAuth", err)
	}
}

func TestLoginIsAudited(t *testing.T) {
	d := newDevice(t, stdHW)
	initDevice(t, d)
	entries, _, err := d.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	start := len(entries)

	// A failed login is unauthenticated: its actor is never the claimed
	// name, which is only its object, sanitized.
	attempts := []struct {
		name, password      string
		wantActor, wantRslt string
	}{
		{"alice", testPassword, "alice/", "ok"},
		{"alice", "wrong password", Unauthenticated + "/alice", "denied"},
		{"nobody", testPassword, Unauthenticated + "/nobody", "denied"},
		{"bad\nname", testPassword, Unauthenticated + "/(invalid name)", "denied"},
		{"admin", testPassword, "admin/", "ok"},
	}
	for _, a := range attempts {
		d.Login(a.name, a.password)
	}
	entries, _, err = d.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	var logins []string
	for _, e := range entries[start:] {
		if e.Op == "login" {
			logins = append(logins, e.Actor+"/"+e.Object+" "+e.Result)
		}
	}
	var want []string
	for _, a := range attempts {
		want = append(want, a.wantActor+" "+a.wantRslt)
	}
	if !slices.Equal(logins, want) {
		t.Fatalf("login audit entries = %q, want %q", logins, want)
	}
}

func TestCryptoUserCannotManage(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	k, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Wrap: true, Unwrap: true})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		op string
		do func() error
	}{
		{"CreateUser", func() error { return cu.CreateUser("mallory", hsmcore.CryptoOfficer, testPassword) }},
		{"CreateUser CU", func() error { return cu.CreateUser("mallory", hsmcore.CryptoUser, testPassword) }},
		{"DeleteUser", func() error { return cu.DeleteUser("admin") }},
		{"SetTrusted", func() error { return cu.SetTrusted(k.Handle, true) }},
		{"ExportImage", func() error {
			_, r, err := cu.ExportImage(context.Background())
			if r != nil {
				r.Close()
			}
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			sealed, contents := snapshot(t, d)
			if err := tt.do(); !errors.Is(err, hsmcore.ErrPermission) {
				t.Fatalf("crypto user %s = %v, want ErrPermission", tt.op, err)
			}
			assertUnchanged(t, d, sealed, contents)
		})
	}
}

func TestCryptoOfficerCannotUseKeys(t *testing.T) {
	d := newDevice(t, stdHW)
	co, cu := initDevice(t, d)
	aesKey, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-256", Sign: true, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		op string
		do func() error
	}{
		{"GenerateKey", func() error {
			_, err := co.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true})
			return err
		}},
		{"Encrypt", func() error {
			_, err := co.Encrypt(aesKey.Handle, []byte("hello"), nil)
			return err
		}},
		{"Sign", func() error {
			_, err := co.Sign(ecKey.Handle, []byte("hello"))
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			sealed, contents := snapshot(t, d)
			if err := tt.do(); !errors.Is(err, hsmcore.ErrPermission) {
				t.Fatalf("crypto officer %s = %v, want ErrPermission", tt.op, err)
			}
			assertUnchanged(t, d, sealed, contents)
		})
	}
}

func TestOfficerCannotDeleteItself(t *testing.T) {
	d := newDevice(t, stdHW)
	co, _ := initDevice(t, d)
	sealed, contents := snapshot(t, d)
	if err := co.DeleteUser("admin"); !errors.Is(err, hsmcore.ErrInvalid) {
		t.Fatalf("officer deleting itself = %v, want ErrInvalid", err)
	}
	assertUnchanged(t, d, sealed, contents)
	login(t, d, "admin")
}

func TestDeleteUserOwningKeysRefused(t *testing.T) {
	d := newDevice(t, stdHW)
	co, cu := initDevice(t, d)
	k, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.GenericSecret, Bits: 256})
	if err != nil {
		t.Fatal(err)
	}
	sealed, contents := snapshot(t, d)
	if err := co.DeleteUser("alice"); !errors.Is(err, hsmcore.ErrInvalid) {
		t.Fatalf("deleting a user who owns a key = %v, want ErrInvalid", err)
	}
	assertUnchanged(t, d, sealed, contents)

	if err := cu.DeleteKey(k.Handle); err != nil {
		t.Fatal(err)
	}
	if err := co.DeleteUser("alice"); err != nil {
		t.Fatalf("deleting a user who owns no key: %v", err)
	}
	if err := co.DeleteUser("alice"); !errors.Is(err, hsmcore.ErrNotFound) {
		t.Fatalf("deleting a deleted user = %v, want ErrNotFound", err)
	}
}

func TestDeleteUserRemovesShares(t *testing.T) {
	d := newDevice(t, stdHW)
	co, alice := initDevice(t, d)
	addCU(t, co, "bob")
	addCU(t, co, "carol")
	k, err := alice.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true, Decrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"bob", "carol"} {
		if err := alice.ShareKey(k.Handle, u, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := co.DeleteUser("bob"); err != nil {
		t.Fatalf("deleting a user a key is shared with: %v", err)
	}
	for _, s := range []*Session{alice, co} {
		info, err := s.Key(k.Handle)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(info.SharedWith, []string{"carol"}) {
			t.Fatalf("%s sees SharedWith = %q after deleting bob, want [carol]", s.User().Name, info.SharedWith)
		}
	}
	// A new user of the same name does not inherit the share.
	bob := addCU(t, co, "bob")
	if _, err := bob.Key(k.Handle); !errors.Is(err, hsmcore.ErrNotFound) {
		t.Fatalf("recreated bob sees the key: %v, want ErrNotFound", err)
	}
}

func TestDeletedUserSessionRefused(t *testing.T) {
	d := newDevice(t, stdHW)
	co, _ := initDevice(t, d)
	bob := addCU(t, co, "bob")
	officer2 := login(t, d, "admin")
	if err := co.CreateUser("admin2", hsmcore.CryptoOfficer, testPassword); err != nil {
		t.Fatal(err)
	}
	admin2 := login(t, d, "admin2")

	if err := co.DeleteUser("bob"); err != nil {
		t.Fatal(err)
	}
	if err := officer2.DeleteUser("admin2"); err != nil {
		t.Fatal(err)
	}
	calls := []struct {
		who string
		op  string
		do  func() error
	}{
		{"bob", "Keys", func() error { _, err := bob.Keys(); return err }},
		{"bob", "GenerateKey", func() error {
			_, err := bob.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true})
			return err
		}},
		{"bob", "ChangePassword", func() error { return bob.ChangePassword("another password") }},
		{"bob", "Users", func() error { _, err := bob.Users(); return err }},
		{"admin2", "CreateUser", func() error { return admin2.CreateUser("eve", hsmcore.CryptoOfficer, testPassword) }},
		{"admin2", "DeleteUser", func() error { return admin2.DeleteUser("admin") }},
	}
	for _, c := range calls {
		t.Run(c.who+"/"+c.op, func(t *testing.T) {
			sealed, contents := snapshot(t, d)
			if err := c.do(); !errors.Is(err, hsmcore.ErrPermission) {
				t.Fatalf("deleted user %s: %s = %v, want ErrPermission", c.who, c.op, err)
			}
			assertUnchanged(t, d, sealed, contents)
		})
	}
	if _, err := d.Login("bob", testPassword); !errors.Is(err, hsmcore.ErrAuth) {
		t.Fatalf("login as deleted user = %v, want ErrAuth", err)
	}
}

func TestChangePassword(t *testing.T) {
	d := newDevice(t, stdHW)
	co, cu := initDevice(t, d)
	for _, s := range []*Session{cu, co} {
		name := s.User().Name
		const newPassword = "a brand new passphrase"
		if err := s.ChangePassword(newPassword); err != nil {
			t.Fatalf("%s: ChangePassword: %v", name, err)
		}
		if _, err := d.Login(name, testPassword); !errors.Is(err, hsmcore.ErrAuth) {
			t.Fatalf("%s: login with the old password = %v, want ErrAuth", name, err)
		}
		s2, err := d.Login(name, newPassword)
		if err != nil {
			t.Fatalf("%s: login with the new password: %v", name, err)
		}
		if s2.User().Role != s.User().Role {
			t.Fatalf("%s: role changed with the password", name)
		}
		// The session that changed it stays valid.
		if _, err := s.Users(); err != nil {
			t.Fatalf("%s: session after ChangePassword: %v", name, err)
		}
	}
}

func TestCreateUserDuplicate(t *testing.T) {
	d := newDevice(t, stdHW)
	co, _ := initDevice(t, d)
	for _, u := range []struct {
		name string
		role hsmcore.Role
	}{
		{"alice", hsmcore.CryptoUser},
		{"alice", hsmcore.CryptoOfficer},
		{"admin", hsmcore.CryptoUser},
	} {
		sealed, contents := snapshot(t, d)
		if err := co.CreateUser(u.name, u.role, "some other password"); !errors.Is(err, hsmcore.ErrExists) {
			t.Fatalf("CreateUser(%s, %s) again = %v, want ErrExists", u.name, u.role, err)
		}
		assertUnchanged(t, d, sealed, contents)
	}
	// The original password still works.
	login(t, d, "alice")
}

func TestUsersListedSorted(t *testing.T) {
	d := newDevice(t, stdHW)
	co, cu := initDevice(t, d)
	for _, u := range []struct {
		name string
		role hsmcore.Role
	}{
		{"zed", hsmcore.CryptoUser}, {"bob", hsmcore.CryptoOfficer}, {"Carol", hsmcore.CryptoUser}, {"m.x", hsmcore.CryptoUser}, {"_under", hsmcore.CryptoUser}, {"0zero", hsmcore.CryptoOfficer},
	} {
		if err := co.CreateUser(u.name, u.role, testPassword); err != nil {
			t.Fatal(err)
		}
	}
	want := []hsmcore.UserInfo{
		{Name: "0zero", Role: hsmcore.CryptoOfficer}, {Name: "Carol", Role: hsmcore.CryptoUser}, {Name: "_under", Role: hsmcore.CryptoUser}, {Name: "admin", Role: hsmcore.CryptoOfficer},
		{Name: "alice", Role: hsmcore.CryptoUser}, {Name: "bob", Role: hsmcore.CryptoOfficer}, {Name: "m.x", Role: hsmcore.CryptoUser}, {Name: "zed", Role: hsmcore.CryptoUser},
	}
	for _, s := range []*Session{co, cu} {
		got, err := s.Users()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: Users() = %v, want %v", s.User().Name, got, want)
		}
	}
}

func TestUsersSurviveRestart(t *testing.T) {
	d := newDevice(t, stdHW)
	co, cu := initDevice(t, d)
	if err := co.CreateUser("bob", hsmcore.CryptoOfficer, "bob's own password"); err != nil {
		t.Fatal(err)
	}
	if err := cu.ChangePassword("alice's new password"); err != nil {
		t.Fatal(err)
	}
	before, err := co.Users()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	d2, err := Open(d.dir, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.Close() })
	for _, u := range []struct {
		name, password string
		role           hsmcore.Role
	}{
		{"admin", testPassword, hsmcore.CryptoOfficer},
		{"bob", "bob's own password", hsmcore.CryptoOfficer},
		{"alice", "alice's new password", hsmcore.CryptoUser},
	} {
		s, err := d2.Login(u.name, u.password)
		if err != nil {
			t.Fatalf("login %s after restart: %v", u.name, err)
		}
		if s.User().Role != u.role {
			t.Fatalf("%s is %s after restart, want %s", u.name, s.User().Role, u.role)
		}
		if _, err := d2.Login(u.name, u.password+"x"); !errors.Is(err, hsmcore.ErrAuth) {
			t.Fatalf("wrong password for %s after restart = %v, want ErrAuth", u.name, err)
		}
	}
	if _, err := d2.Login("alice", testPassword); !errors.Is(err, hsmcore.ErrAuth) {
		t.Fatalf("alice's old password after restart = %v, want ErrAuth", err)
	}
	after, err := login(t, d2, "admin").Users()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(after, before) {
		t.Fatalf("users after restart = %v, want %v", after, before)
	}
	if err := d2.Initialize("admin", testPassword); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("Initialize after restart = %v, want ErrPermission", err)
	}
}

// Logout ends the session: the logged-out session may not go on working,
// nor create session keys that nothing would ever destroy.
func TestLogoutEndsSession(t *testing.T) {
	d := newDevice(t, stdHW)
	co, cu := initDevice(t, d)
	cu.Logout()
	co.Logout()
	calls := []struct {
		who string
		do  func() error
	}{
		{"alice Keys", func() error { _, err := cu.Keys(); return err }},
		{"alice GenerateKey", func() error {
			_, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true, Session: true})
			return err
		}},
		{"admin CreateUser", func() error { return co.CreateUser("bob", hsmcore.CryptoUser, testPassword) }},
	}
	for _, c := range calls {
		if err := c.do(); !errors.Is(err, hsmcore.ErrPermission) {
			t.Errorf("%s after Logout = %v, want ErrPermission (users.go Logout does not invalidate the Session; check only looks at the user record)", c.who, err)
		}
	}
}

// TestInventory: an officer lists every user and token key by handle and
// check value, as Keys and Users give them; session keys are left out; a
// crypto user may not.
func TestInventory(t *testing.T) {
	d := newDevice(t, stdHW)
	co, cu := initDevice(t, d)
	fillKeys(t, cu, 45)
	if _, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Session: true}); err != nil {
		t.Fatal(err)
	}
	inv, err := co.Inventory(45)
	if err != nil {
		t.Fatal(err)
	}
	if counted, err := co.Inventory(44); err != nil || counted.KeyCount != 45 || counted.Keys != nil || len(counted.Users) != 2 {
		t.Fatalf("an inventory of more keys than asked: %+v, %v", counted, err)
	}
	keys, _ := co.Keys()
	users, _ := co.Users()
	if inv.KeyCount != 45 || len(inv.Keys) != 45 || len(keys) != 45 || !slices.Equal(inv.Users, users) {
		t.Fatalf("inventory of %d keys and %v; Keys gives %d, Users %v", len(inv.Keys), inv.Users, len(keys), users)
	}
	for i, k := range keys {
		if inv.Keys[i] != (hsmcore.KeyRef{Handle: k.Handle, KCV: k.KCV}) {
			t.Fatalf("inventory key %d: %+v, Keys gives %d:%s", i, inv.Keys[i], k.Handle, k.KCV)
		}
	}
	if _, err := cu.Inventory(100); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("a crypto user's inventory: %v", err)
	}
}
