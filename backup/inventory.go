package backup

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// InventoryFormat is the value of an inventory's "format" field.
const InventoryFormat = "hsmbackup-inventory/1"

// Limits on an inventory. A source with more token keys than
// MaxInventoryKeys is inventoried by count only (Keys empty), so that the
// manifest stays under MaxManifestSize.
const (
	MaxInventoryUsers = 1024
	MaxInventoryKeys  = 32768
)

// Inventory is the public description of what a backup's source HSM held
// when its image was exported: its users (names and roles) and its token
// keys (handle and check value), listed by a crypto officer. It holds no
// secret. It is stored in the manifest, so signed with it.
type Inventory struct {
	Format string             `json:"format"` // InventoryFormat
	Users  []hsmcore.UserInfo `json:"users"`  // sorted by name
	// KeyCount is how many token keys the source held.
	KeyCount int `json:"key_count"`
	// Keys are those keys as "<handle>:<kcv>", sorted by handle: all
	// KeyCount of them, or none if there were more than MaxInventoryKeys.
	Keys []string `json:"keys,omitempty"`
}

// InventorySource is an ImageSource that can list what it holds: a crypto
// officer's session (*hsmcore/client.Client is one). Create records an
// inventory only from such a source.
type InventorySource interface {
	// Inventory lists the users and token keys, the keys only if there
	// are at most maxKeys.
	Inventory(ctx context.Context, maxKeys int) (hsmcore.Inventory, error)
}

// NewInventory returns the inventory of users and keys (token keys only;
// session keys are never imaged).
func NewInventory(users []hsmcore.UserInfo, keys []hsmcore.KeyInfo) *Inventory {
	var refs []hsmcore.KeyRef
	for _, k := range keys {
		if k.Token {
			refs = append(refs, hsmcore.KeyRef{Handle: k.Handle, KCV: k.KCV})
		}
	}
	return inventoryOf(hsmcore.Inventory{Users: users, KeyCount: len(refs), Keys: refs})
}

// inventoryOf returns the manifest's inventory of what an HSM listed.
func inventoryOf(hi hsmcore.Inventory) *Inventory {
	inv := &Inventory{Format: InventoryFormat, Users: slices.Clone(hi.Users)}
	if inv.Users == nil {
		inv.Users = []hsmcore.UserInfo{}
	}
	slices.SortFunc(inv.Users, func(a, b hsmcore.UserInfo) int { return strings.Compare(a.Name, b.Name) })
	ks := slices.Clone(hi.Keys)
	slices.SortFunc(ks, func(a, b hsmcore.KeyRef) int { return cmp.Compare(a.Handle, b.Handle) })
	inv.KeyCount = hi.KeyCount
	if len(ks) == hi.KeyCount && len(ks) <= MaxInventoryKeys {
		for _, k := range ks {
			inv.Keys = append(inv.Keys, keyEntry(k.Handle, k.KCV))
		}
	}
	return inv
}

func keyEntry(handle uint64, kcv string) string { return strconv.FormatUint(handle, 10) + ":" + kcv }

// KeysListed reports whether the inventory lists every key (not only
// their count).
func (inv *Inventory) KeysListed() bool { return len(inv.Keys) == inv.KeyCount }

// HasUser reports whether the inventory holds user u, with its role.
func (inv *Inventory) HasUser(u hsmcore.UserInfo) bool {
	i, ok := slices.BinarySearchFunc(inv.Users, u.Name, func(a hsmcore.UserInfo, name string) int { return strings.Compare(a.Name, name) })
	return ok && inv.Users[i].Role == u.Role
}

// HasKey reports whether the inventory lists key k (the same handle and
// check value). It is false for every key if the keys are not listed. A
// generic secret of under 128 bits has no check value (HSMs withhold it,
// as it would reveal the secret): the handle alone matches it, whatever
// check value an inventory written before recorded.
func (inv *Inventory) HasKey(k hsmcore.KeyInfo) bool {
	i, ok := slices.BinarySearchFunc(inv.Keys, k.Handle, func(e string, h uint64) int {
		eh, _ := strconv.ParseUint(e[:strings.IndexByte(e, ':')], 10, 64)
		return cmp.Compare(eh, h)
	})
	if ok && k.KCV == "" && k.Type == hsmcore.GenericSecret && k.Bits < 128 {
		return true
	}
	return ok && inv.Keys[i] == keyEntry(k.Handle, k.KCV)
}

func (inv *Inventory) validate() error {
	switch {
	case inv.Format != InventoryFormat:
		return fmt.Errorf("inventory format %q, want %q", inv.Format, InventoryFormat)
	case inv.Users == nil || len(inv.Users) > MaxInventoryUsers:
		return errors.New("inventory: missing or too many users")
	case inv.KeyCount < 0 || len(inv.Keys) > MaxInventoryKeys || (len(inv.Keys) != 0 && len(inv.Keys) != inv.KeyCount):
		return errors.New("inventory: key count does not match the keys listed")
	}
	for i, u := range inv.Users {
		if hsmcore.CheckName(u.Name) != nil || (u.Role != hsmcore.CryptoOfficer && u.Role != hsmcore.CryptoUser) {
			return fmt.Errorf("inventory: bad user %q", u.Name)
		}
		if i > 0 && inv.Users[i-1].Name >= u.Name {
			return errors.New("inventory: users not sorted by name, or repeated")
		}
	}
	var last uint64
	for i, e := range inv.Keys {
		h, kcv, ok := strings.Cut(e, ":")
		n, err := strconv.ParseUint(h, 10, 64)
		if !ok || err != nil || strconv.FormatUint(n, 10) != h || len(kcv) > 64 || !isLowerHex(kcv) {
			return fmt.Errorf("inventory: bad key %q", e)
		}
		if i > 0 && n <= last {
			return errors.New("inventory: keys not sorted by handle, or repeated")
		}
		last = n
	}
	return nil
}

func isLowerHex(s string) bool {
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
