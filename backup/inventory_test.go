package backup

import (
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// TestInventory: token keys only, sorted; a manifest carrying an
// inventory round-trips and is signed with it; a malformed one is refused.
func TestInventory(t *testing.T) {
	inv := NewInventory(
		[]hsmcore.UserInfo{{Name: "zed", Role: hsmcore.CryptoUser}, {Name: "admin", Role: hsmcore.CryptoOfficer}},
		[]hsmcore.KeyInfo{{Handle: 12, KCV: "0a0b0c", Token: true}, {Handle: 3, KCV: "010203", Token: true}, {Handle: 7, KCV: "ffffff"}})
	if inv.KeyCount != 2 || strings.Join(inv.Keys, ",") != "3:010203,12:0a0b0c" || inv.Users[0].Name != "admin" || !inv.KeysListed() {
		t.Fatalf("inventory %+v", inv)
	}
	if !inv.HasKey(hsmcore.KeyInfo{Handle: 12, KCV: "0a0b0c"}) || inv.HasKey(hsmcore.KeyInfo{Handle: 12, KCV: "000000"}) || inv.HasKey(hsmcore.KeyInfo{Handle: 7, KCV: "ffffff"}) {
		t.Fatal("HasKey")
	}
	if !inv.HasUser(hsmcore.UserInfo{Name: "zed", Role: hsmcore.CryptoUser}) || inv.HasUser(hsmcore.UserInfo{Name: "zed", Role: hsmcore.CryptoOfficer}) {
		t.Fatal("HasUser")
	}
	if err := inv.validate(); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]*Inventory{
		"format":   {Format: "x", Users: []hsmcore.UserInfo{}},
		"no users": {Format: InventoryFormat},
		"count":    {Format: InventoryFormat, Users: []hsmcore.UserInfo{}, KeyCount: 2, Keys: []string{"1:aa"}},
		"order":    {Format: InventoryFormat, Users: []hsmcore.UserInfo{}, KeyCount: 2, Keys: []string{"2:aa", "1:aa"}},
		"entry":    {Format: InventoryFormat, Users: []hsmcore.UserInfo{}, KeyCount: 1, Keys: []string{"01:aa"}},
		"role":     {Format: InventoryFormat, Users: []hsmcore.UserInfo{{Name: "a", Role: "root"}}},
	} {
		if err := bad.validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if got := NewInventory(nil, make([]hsmcore.KeyInfo, MaxInventoryKeys+1)); got.KeyCount != 0 {
		t.Fatalf("session keys counted: %+v", got.KeyCount)
	}
	many := make([]hsmcore.KeyInfo, MaxInventoryKeys+1)
	for i := range many {
		many[i] = hsmcore.KeyInfo{Handle: uint64(i + 1), KCV: "abcdef", Token: true}
	}
	if got := NewInventory(nil, many); got.KeyCount != MaxInventoryKeys+1 || len(got.Keys) != 0 || got.KeysListed() || got.validate() != nil {
		t.Fatalf("too many keys: count %d, listed %d", got.KeyCount, len(got.Keys))
	}
}
