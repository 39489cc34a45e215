package backup

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hsmbackup/hsmbackup/store"
)

// Object lock (docs/STORAGE.md, "Object lock"): a backup made with an
// ObjectLock stores every object it writes (the image, the manifest, and
// later every version of the manifest a lifecycle change writes) under an
// S3 Object Lock retention until its creation time plus Days, recorded in
// the manifest (Manifest.Lock). Until then the store refuses to delete
// them, whoever asks: a stolen store credential cannot destroy the
// backup. Prune leaves a locked backup as it is and says so.

// MaxLockDays bounds ObjectLock.Days: a hundred years, a sane maximum.
const MaxLockDays = 36500

// ObjectLock is the object lock of a new backup: retention in Mode for
// Days days from its creation. The zero value is none.
type ObjectLock struct {
	Mode store.RetentionMode // store.Governance or store.Compliance
	Days int                 // 1 to MaxLockDays
}

// Validate checks that l is either none or complete and in range.
func (l ObjectLock) Validate() error {
	switch l.Mode {
	case "":
		if l.Days != 0 {
			return errors.New("object lock: days without a mode")
		}
		return nil
	case store.Governance, store.Compliance:
	default:
		return fmt.Errorf("object lock: mode %q: want %s or %s", l.Mode, store.Governance, store.Compliance)
	}
	if l.Days < 1 || l.Days > MaxLockDays {
		return fmt.Errorf("object lock: %d days: want 1 to %d", l.Days, MaxLockDays)
	}
	return nil
}

// Covering returns l lasting at least days (a retention in days), so
// that a backup's lock is never shorter than its own retention. A zero
// lock stays zero.
func (l ObjectLock) Covering(days int) ObjectLock {
	if l.Mode != "" && days > l.Days {
		l.Days = days
	}
	return l
}

// lockOf returns the lock a backup created at created is stored under:
// until created plus l.Days, rounded up to a whole second (S3 keeps
// seconds), so that it lasts at least that long. Nil for no lock.
func (l ObjectLock) lockOf(created time.Time) *Lock {
	if l.Mode == "" {
		return nil
	}
	until := created.UTC().Add(time.Duration(l.Days) * 24 * time.Hour)
	if t := until.Truncate(time.Second); t.Before(until) {
		until = t.Add(time.Second)
	}
	return &Lock{Mode: l.Mode, Until: until}
}

// CheckObjectLock checks, without writing, that st can lock objects: it
// must be a store.ObjectLocker (S3) whose probe passes (a bucket made
// with object lock). Otherwise the error wraps store.ErrUnsupported (or
// says why the probe failed).
func CheckObjectLock(ctx context.Context, st store.Store) error {
	l, ok := store.As[store.ObjectLocker](st)
	if !ok {
		name := "the store"
		if s, ok := store.As[fmt.Stringer](st); ok {
			name = "store " + s.String()
		}
		return fmt.Errorf("%s cannot lock objects (object lock needs an S3 bucket made with it): %w", name, store.ErrUnsupported)
	}
	return l.CheckObjectLock(ctx)
}

// lockMargin: a lock ending sooner than this is not asked of a new
// version of a manifest, as it might end before the request arrives
// (S3 refuses a retention date in the past).
const lockMargin = time.Minute

// manifestRetention is the retention a lifecycle change stores the new
// version of m's manifest under: m's lock while it lasts (by the real
// clock, which the store's is), in a store that can lock.
func manifestRetention(st store.Store, m *Manifest) store.Retention {
	if m.Lock == nil || !time.Now().Add(lockMargin).Before(m.Lock.Until) {
		return store.Retention{}
	}
	if _, ok := store.As[store.ObjectLocker](st); !ok {
		return store.Retention{}
	}
	return store.Retention{Mode: m.Lock.Mode, Until: m.Lock.Until}
}
