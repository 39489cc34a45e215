package restore

import (
	"errors"
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
