package restore

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// TestLost counts what the target holds that the backup's inventory
// lacks: users by name and role, keys by handle and check value; without
// an inventory (or a key list), everything of that kind.
func TestLost(t *testing.T) {
	admin := hsmcore.UserInfo{Name: "admin", Role: hsmcore.CryptoOfficer}
	alice := hsmcore.UserInfo{Name: "alice", Role: hsmcore.CryptoUser}
	k1 := hsmcore.KeyInfo{Handle: 1, KCV: "aaaaaa", Token: true, Label: "one"}
	k2 := hsmcore.KeyInfo{Handle: 2, KCV: "bbbbbb", Token: true, Label: "two"}
	k1other := hsmcore.KeyInfo{Handle: 1, KCV: "cccccc", Token: true}
	inv := backup.NewInventory([]hsmcore.UserInfo{admin}, []hsmcore.KeyInfo{k1})

	if l := lost(inv, nil); l != nil {
		t.Fatalf("new target: %+v", l)
	}
	if l := lost(nil, &Holdings{}); l != nil {
		t.Fatalf("empty target: %+v", l)
	}
	if l := lost(inv, &Holdings{Users: []hsmcore.UserInfo{admin}, Keys: []hsmcore.KeyInfo{k1}}); l != nil {
		t.Fatalf("target in the backup's state: %+v", l)
	}
	l := lost(inv, &Holdings{Users: []hsmcore.UserInfo{admin, alice, {Name: "admin2", Role: hsmcore.CryptoOfficer}}, Keys: []hsmcore.KeyInfo{k1other, k2}})
	if l == nil || l.UserCount != 2 || l.KeyCount != 2 || l.Unknown || l.KeysUnlisted {
		t.Fatalf("newer target: %+v", l)
	}
	if got, want := l.String(), `2 users: alice (CU), admin2 (CO); 2 keys: handle 1 "" kcv cccccc, handle 2 "two" kcv bbbbbb`; got != want {
		t.Fatalf("loss %q, want %q", got, want)
	}
	// A user of the same name but another role is another user.
	if l := lost(inv, &Holdings{Users: []hsmcore.UserInfo{{Name: "admin", Role: hsmcore.CryptoUser}}}); l == nil || l.UserCount != 1 {
		t.Fatalf("role changed: %+v", l)
	}
	l = lost(nil, &Holdings{Users: []hsmcore.UserInfo{admin}, Keys: []hsmcore.KeyInfo{k1}})
	if l == nil || !l.Unknown || l.UserCount != 1 || l.KeyCount != 1 || !strings.Contains(l.String(), "records no inventory") {
		t.Fatalf("no inventory: %+v", l)
	}
	// A backup made before short generic secrets lost their check value
	// records one; restored, the secret has none, and still matches.
	pin := hsmcore.KeyInfo{Handle: 3, Type: hsmcore.GenericSecret, Bits: 16, KCV: "123abc", Token: true}
	legacy := backup.NewInventory([]hsmcore.UserInfo{admin}, []hsmcore.KeyInfo{k1, pin})
	pin.KCV = ""
	if err := CheckInventory(legacy, &Holdings{Users: []hsmcore.UserInfo{admin}, Keys: []hsmcore.KeyInfo{k1, pin}}); err != nil {
		t.Fatalf("a short secret without check value against an old inventory: %v", err)
	}
	noKCV := k1
	noKCV.KCV = ""
	if err := CheckInventory(legacy, &Holdings{Users: []hsmcore.UserInfo{admin}, Keys: []hsmcore.KeyInfo{noKCV, pin}}); !errors.Is(err, ErrInventoryMismatch) {
		t.Fatalf("another key without its check value: got %v, want ErrInventoryMismatch", err)
	}
	unlisted := &backup.Inventory{Format: backup.InventoryFormat, Users: []hsmcore.UserInfo{admin}, KeyCount: backup.MaxInventoryKeys + 1}
	if l := lost(unlisted, &Holdings{Users: []hsmcore.UserInfo{admin}}); l != nil {
		t.Fatalf("keys unlisted, target without keys: %+v", l)
	}
	if l := lost(unlisted, &Holdings{Users: []hsmcore.UserInfo{admin}, Keys: []hsmcore.KeyInfo{k1}}); l == nil || !l.KeysUnlisted || l.KeyCount != 1 {
		t.Fatalf("keys unlisted: %+v", l)
	}
	err := error(&LossError{Loss: l})
	if !errors.Is(err, ErrWouldLose) || !strings.HasPrefix(err.Error(), "holds users or keys the backup lacks: ") {
		t.Fatalf("LossError %v", err)
	}
}

// TestCheckInventory: a restored HSM matches the inventory only if it
// holds every user (name and role) and token key (handle and check value)
// the inventory records and nothing else; an inventory that cannot say
// (none, or keys by count only) is no match either.
func TestCheckInventory(t *testing.T) {
	admin := hsmcore.UserInfo{Name: "admin", Role: hsmcore.CryptoOfficer}
	alice := hsmcore.UserInfo{Name: "alice", Role: hsmcore.CryptoUser}
	k1 := hsmcore.KeyInfo{Handle: 1, KCV: "aaaaaa", Token: true}
	k2 := hsmcore.KeyInfo{Handle: 2, KCV: "bbbbbb", Token: true}
	inv := backup.NewInventory([]hsmcore.UserInfo{admin, alice}, []hsmcore.KeyInfo{k1, k2})
	session := hsmcore.KeyInfo{Handle: 1 << 62, KCV: "eeeeee"}

	if err := CheckInventory(inv, &Holdings{Users: []hsmcore.UserInfo{alice, admin}, Keys: []hsmcore.KeyInfo{k2, k1, session}}); err != nil {
		t.Fatalf("the backup's state (a session key aside): %v", err)
	}
	empty := backup.NewInventory(nil, nil)
	if err := CheckInventory(empty, nil); err != nil {
		t.Fatalf("nothing recorded, nothing held: %v", err)
	}
	for _, tc := range []struct {
		name string
		held *Holdings
		want *Mismatch
		msg  string
	}{
		{"nothing held", nil, &Mismatch{MissingUsers: []hsmcore.UserInfo{admin, alice}, MissingKeys: []string{"1:aaaaaa", "2:bbbbbb"}},
			"2 users missing: admin (CO), alice (CU); 2 keys missing: handle 1 kcv aaaaaa, handle 2 kcv bbbbbb"},
		{"a key missing", &Holdings{Users: []hsmcore.UserInfo{admin, alice}, Keys: []hsmcore.KeyInfo{k1}}, &Mismatch{MissingKeys: []string{"2:bbbbbb"}},
			"1 key missing: handle 2 kcv bbbbbb"},
		{"another check value", &Holdings{Users: []hsmcore.UserInfo{admin, alice}, Keys: []hsmcore.KeyInfo{k1, {Handle: 2, KCV: "cccccc", Token: true}}},
			&Mismatch{MissingKeys: []string{"2:bbbbbb"}, ExtraKeys: []hsmcore.KeyInfo{{Handle: 2, KCV: "cccccc", Token: true}}},
			"1 key missing: handle 2 kcv bbbbbb; 1 key not in the inventory: handle 2 kcv cccccc"},
		{"an extra key", &Holdings{Users: []hsmcore.UserInfo{admin, alice}, Keys: []hsmcore.KeyInfo{k1, k2, {Handle: 3, KCV: "dddddd", Token: true}}},
			&Mismatch{ExtraKeys: []hsmcore.KeyInfo{{Handle: 3, KCV: "dddddd", Token: true}}}, "1 key not in the inventory: handle 3 kcv dddddd"},
		{"an extra user", &Holdings{Users: []hsmcore.UserInfo{admin, alice, {Name: "mallory", Role: hsmcore.CryptoOfficer}}, Keys: []hsmcore.KeyInfo{k1, k2}},
			&Mismatch{ExtraUsers: []hsmcore.UserInfo{{Name: "mallory", Role: hsmcore.CryptoOfficer}}}, "1 user not in the inventory: mallory (CO)"},
		{"another role", &Holdings{Users: []hsmcore.UserInfo{admin, {Name: "alice", Role: hsmcore.CryptoOfficer}}, Keys: []hsmcore.KeyInfo{k1, k2}},
			&Mismatch{MissingUsers: []hsmcore.UserInfo{alice}, ExtraUsers: []hsmcore.UserInfo{{Name: "alice", Role: hsmcore.CryptoOfficer}}},
			"1 user missing: alice (CU); 1 user not in the inventory: alice (CO)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckInventory(inv, tc.held)
			var me *MismatchError
			if !errors.Is(err, ErrInventoryMismatch) || !errors.As(err, &me) {
				t.Fatalf("got %v, want a *MismatchError", err)
			}
			if fmt.Sprint(*me.Mismatch) != fmt.Sprint(*tc.want) {
				t.Fatalf("mismatch %+v, want %+v", *me.Mismatch, *tc.want)
			}
			if want := ErrInventoryMismatch.Error() + ": " + tc.msg; err.Error() != want {
				t.Fatalf("message %q, want %q", err, want)
			}
		})
	}
	if err := CheckInventory(nil, &Holdings{Users: []hsmcore.UserInfo{admin}}); err == nil || errors.Is(err, ErrInventoryMismatch) || !strings.Contains(err.Error(), "records no inventory") {
		t.Fatalf("no inventory: %v", err)
	}
	unlisted := &backup.Inventory{Format: backup.InventoryFormat, Users: []hsmcore.UserInfo{admin}, KeyCount: backup.MaxInventoryKeys + 1}
	if err := CheckInventory(unlisted, &Holdings{Users: []hsmcore.UserInfo{admin}}); err == nil || errors.Is(err, ErrInventoryMismatch) || !strings.Contains(err.Error(), "by count only") {
		t.Fatalf("keys unlisted: %v", err)
	}
}
