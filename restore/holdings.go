package restore

import (
	"context"
	"errors"
	"fmt"
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
