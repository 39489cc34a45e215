package restore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// ErrWouldLose: the target holds users or keys that the backup does not
// (or, for a backup without an inventory, may not): restoring replaces
// the target's whole state and would lose them. The error is a *LossError.
var ErrWouldLose = errors.New("holds users or keys the backup lacks")

// Holdings is what a target holds: its users and token keys.
type Holdings struct {
	Users []hsmcore.UserInfo
	Keys  []hsmcore.KeyInfo
}

// Holder is a Target that can say what it holds before anything is sent:
// an initialized HSM lists its users and keys in a crypto officer's
// session; a new HSM holds nothing (nil). A restore into a Target that is
// not a Holder makes no such check.
type Holder interface {
	Holdings(ctx context.Context) (*Holdings, error)
}

// Loss is what a restore replaces on its target that the backup lacks:
// the target's users and keys not in the backup's inventory. Unknown means
// the backup records no inventory (or lists its keys by count only), so
// that everything the target holds (of that kind) is counted.
type Loss struct {
	Users        []hsmcore.UserInfo `json:"-"`
	Keys         []hsmcore.KeyInfo  `json:"-"`
	UserCount    int                `json:"users"`
	KeyCount     int                `json:"keys"`
	Unknown      bool               `json:"backup_content_unknown,omitempty"`
	KeysUnlisted bool               `json:"backup_keys_unlisted,omitempty"`
}

// lost returns what restoring a backup with inventory inv (nil: not
// recorded) into a target holding held loses, or nil if nothing.
func lost(inv *backup.Inventory, held *Holdings) *Loss {
	if held == nil || len(held.Users) == 0 && len(held.Keys) == 0 {
		return nil
	}
	l := &Loss{Unknown: inv == nil}
	for _, u := range held.Users {
		if inv == nil || !inv.HasUser(u) {
			l.Users = append(l.Users, u)
		}
	}
	unlisted := inv != nil && !inv.KeysListed()
	for _, k := range held.Keys {
		if k.Token && (inv == nil || unlisted || !inv.HasKey(k)) {
			l.Keys = append(l.Keys, k)
		}
	}
	l.KeysUnlisted = unlisted && len(l.Keys) > 0
	l.UserCount, l.KeyCount = len(l.Users), len(l.Keys)
	if l.UserCount == 0 && l.KeyCount == 0 {
		return nil
	}
	return l
}

// String says what is lost, counted, naming the first few users and keys.
func (l *Loss) String() string {
	var parts []string
	if n := len(l.Users); n > 0 {
		names := make([]string, 0, 3)
		for _, u := range l.Users[:min(n, 3)] {
			names = append(names, fmt.Sprintf("%s (%s)", u.Name, u.Role))
		}
		parts = append(parts, fmt.Sprintf("%s: %s%s", plural(n, "user"), strings.Join(names, ", "), more(n, 3)))
	}
	if n := len(l.Keys); n > 0 {
		names := make([]string, 0, 3)
		for _, k := range l.Keys[:min(n, 3)] {
			names = append(names, fmt.Sprintf("handle %d %q kcv %s", k.Handle, k.Label, k.KCV))
		}
		parts = append(parts, fmt.Sprintf("%s: %s%s", plural(n, "key"), strings.Join(names, ", "), more(n, 3)))
	}
	s := strings.Join(parts, "; ")
	switch {
	case l.Unknown:
		s += ", and the backup records no inventory of its content (made before inventories were recorded): all of them count as lost"
	case l.KeysUnlisted:
		s += fmt.Sprintf(", and the backup lists its keys by count only (more than %d): all the target's keys count as lost", backup.MaxInventoryKeys)
	}
	return s
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func more(n, shown int) string {
	if n > shown {
		return fmt.Sprintf(" and %d more", n-shown)
	}
	return ""
}

// LossError is ErrWouldLose with what would be lost.
type LossError struct {
	Loss *Loss
}

func (e *LossError) Error() string {
	return fmt.Sprintf("%v: restoring replaces its whole state (users and keys) with the backup's and would lose %s", ErrWouldLose, e.Loss)
}

func (e *LossError) Unwrap() error { return ErrWouldLose }

// Checkable says why a restore cannot be checked against inventory inv
// (CheckInventory), or returns nil if it can: a backup made before
// manifests recorded an inventory (nil) has no record to check against,
// and one that lists its keys by count only no check values.
func Checkable(inv *backup.Inventory) error {
	switch {
	case inv == nil:
		return errors.New("the backup records no inventory of its content (made before inventories were recorded): what it restores cannot be checked")
	case !inv.KeysListed():
		return fmt.Errorf("the backup lists its %d keys by count only (more than %d): their check values cannot be checked", inv.KeyCount, backup.MaxInventoryKeys)
	}
	return nil
}

// ErrInventoryMismatch: an HSM restored from a backup does not hold what
// the backup's manifest records of its source (its inventory): a user or
// key is missing, has another role or check value, or is not in the
// inventory. The error is a *MismatchError.
var ErrInventoryMismatch = errors.New("the restored HSM does not hold what the backup's inventory records")

// Mismatch is how a restored HSM's holdings differ from the backup's
// inventory. A user held with another role than the inventory's, or a key
// with another check value, is both missing and extra.
type Mismatch struct {
	MissingUsers []hsmcore.UserInfo // in the inventory, not held
	ExtraUsers   []hsmcore.UserInfo // held, not in the inventory
	MissingKeys  []string           // inventory entries "<handle>:<kcv>" not held
	ExtraKeys    []hsmcore.KeyInfo  // token keys held, not in the inventory
}

// MismatchError is ErrInventoryMismatch with the differences.
type MismatchError struct {
	Mismatch *Mismatch
}

func (e *MismatchError) Error() string {
	m := e.Mismatch
	var parts []string
	users := func(what string, us []hsmcore.UserInfo) {
		if n := len(us); n > 0 {
			names := make([]string, 0, 3)
			for _, u := range us[:min(n, 3)] {
				names = append(names, fmt.Sprintf("%s (%s)", u.Name, u.Role))
			}
			parts = append(parts, fmt.Sprintf("%s %s: %s%s", plural(n, "user"), what, strings.Join(names, ", "), more(n, 3)))
		}
	}
	users("missing", m.MissingUsers)
	users("not in the inventory", m.ExtraUsers)
	if n := len(m.MissingKeys); n > 0 {
		names := make([]string, 0, 3)
		for _, e := range m.MissingKeys[:min(n, 3)] {
			h, kcv, _ := strings.Cut(e, ":")
			names = append(names, fmt.Sprintf("handle %s kcv %s", h, kcv))
		}
		parts = append(parts, fmt.Sprintf("%s missing: %s%s", plural(n, "key"), strings.Join(names, ", "), more(n, 3)))
	}
	if n := len(m.ExtraKeys); n > 0 {
		names := make([]string, 0, 3)
		for _, k := range m.ExtraKeys[:min(n, 3)] {
			names = append(names, fmt.Sprintf("handle %d kcv %s", k.Handle, k.KCV))
		}
		parts = append(parts, fmt.Sprintf("%s not in the inventory: %s%s", plural(n, "key"), strings.Join(names, ", "), more(n, 3)))
	}
	return fmt.Sprintf("%v: %s", ErrInventoryMismatch, strings.Join(parts, "; "))
}

func (e *MismatchError) Unwrap() error { return ErrInventoryMismatch }

// CheckInventory checks that held, what an HSM restored from a backup
// holds, is what the backup's inventory inv records: every user with its
// role and every token key with its handle and check value, and nothing
// else. It returns a *MismatchError (ErrInventoryMismatch) listing the
// differences, or nil. An inventory that cannot be checked (Checkable) is
// an error of its own, saying so, not a mismatch.
func CheckInventory(inv *backup.Inventory, held *Holdings) error {
	if err := Checkable(inv); err != nil {
		return err
	}
	if held == nil {
		held = &Holdings{}
	}
	m := &Mismatch{}
	roles := map[string]hsmcore.Role{}
	for _, u := range held.Users {
		roles[u.Name] = u.Role
		if !inv.HasUser(u) {
			m.ExtraUsers = append(m.ExtraUsers, u)
		}
	}
	for _, u := range inv.Users {
		if r, ok := roles[u.Name]; !ok || r != u.Role {
			m.MissingUsers = append(m.MissingUsers, u)
		}
	}
	keys := map[uint64]hsmcore.KeyInfo{}
	for _, k := range held.Keys {
		if !k.Token {
			continue
		}
		keys[k.Handle] = k
		if !inv.HasKey(k) {
			m.ExtraKeys = append(m.ExtraKeys, k)
		}
	}
	for _, e := range inv.Keys {
		h, _, _ := strings.Cut(e, ":") // validated with the manifest
		n, err := strconv.ParseUint(h, 10, 64)
		if k, ok := keys[n]; err != nil || !ok || !inv.HasKey(k) {
			m.MissingKeys = append(m.MissingKeys, e)
		}
	}
	if len(m.MissingUsers)+len(m.ExtraUsers)+len(m.MissingKeys)+len(m.ExtraKeys) == 0 {
		return nil
	}
	return &MismatchError{Mismatch: m}
}
