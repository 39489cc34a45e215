package scheduler

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hsmbackup/hsmbackup/internal/strictjson"
	"github.com/hsmbackup/hsmbackup/store"
)

// A lease gives one replica the right to run one slot of one job (a
// cluster's backup, or its drill). It is one small object per job in the
// store, holding the slot it was taken for and its state, and it is
// changed only by the store's conditional writes: taken create-only
// (If-None-Match: *) when there is none, else by compare-and-swap on the
// ETag the taker read (If-Match), renewed the same way while the run
// lasts, and released by a last compare-and-swap that marks it done or
// failed. Nothing is ever deleted: MinIO ignores If-Match on DELETE. Every
// write carries a fresh nonce, because an S3 ETag is the MD5 of the bytes
// and two identical writes would share one, letting two writers win.
//
// A held lease is taken over only when its holder has not renewed it for
// a whole lease duration, measured on the taker's monotonic clock from the
// moment it first saw that version: no clock is compared with another
// machine's. docs/SCHEDULER.md explains why this is sound on S3 and MinIO.

// LeaseState is the state of a lease record.
type LeaseState string

const (
	// LeaseHeld: a replica is running the slot.
	LeaseHeld LeaseState = "held"
	// LeaseDone: the slot's run succeeded; nobody runs that slot again.
	LeaseDone LeaseState = "done"
	// LeaseFailed: the holder gave up on the slot; another may take it.
	LeaseFailed LeaseState = "failed"
)

// leaseFormat is the format of a lease record.
const leaseFormat = "hsmbackup-lease-v1"

// maxLeaseSize bounds a lease record read from the store.
const maxLeaseSize = 4 << 10

// leaseRecord is the stored lease.
type leaseRecord struct {
	Format string `json:"format"`
	// Job names what the lease is for: "backup/prod-1".
	Job string `json:"job"`
	// Slot is the slot taken, in UTC.
	Slot time.Time `json:"slot"`
	// Holder names the replica (host, process, random suffix).
	Holder string `json:"holder"`
	// Generation counts the takes of this job's lease: a fencing token.
	Generation uint64     `json:"generation"`
	State      LeaseState `json:"state"`
	// Nonce makes every write's bytes, and so its ETag, unique.
	Nonce string `json:"nonce"`
	// DurationSeconds is the lease duration its holder runs by.
	DurationSeconds float64 `json:"duration_seconds"`
	// Written is the holder's clock at the write: for people, never
	// compared by the protocol.
	Written time.Time `json:"written"`
}

func parseLease(b []byte) (*leaseRecord, error) {
	var r leaseRecord
	if err := strictjson.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("lease record: %w", err)
	}
	if r.Format != leaseFormat {
		return nil, fmt.Errorf("lease record: format %q, want %q", r.Format, leaseFormat)
	}
	switch r.State {
	case LeaseHeld, LeaseDone, LeaseFailed:
	default:
		return nil, fmt.Errorf("lease record: state %q", r.State)
	}
	return &r, nil
}

// Errors of Lessor.Acquire.
var (
	// ErrSlotDone: the slot (or a later one) was already run to success.
	ErrSlotDone = errors.New("slot already done")
	// ErrLeaseHeld: another replica holds the lease and renews it.
	ErrLeaseHeld = errors.New("lease held by another replica")
	// ErrLeaseLost: the lease was taken over or changed under its holder.
	ErrLeaseLost = errors.New("lease lost")
)

// Lessor takes and keeps leases in a store for one replica.
type Lessor struct {
	st       store.Store
	prefix   string // "" or ending with "/"
	holder   string
	duration time.Duration
	now      func() time.Time // monotonic: time.Now

	mu   sync.Mutex
	seen map[string]sighting // job: the version last seen held by another
}

// sighting is when this replica first saw a version of a held lease.
type sighting struct {
	etag  string
	since time.Time
}

// NewLessor returns a Lessor for holder, keeping its leases under
// prefix in st, each lasting d unrenewed.
func NewLessor(st store.Store, prefix, holder string, d time.Duration) *Lessor {
	return &Lessor{st: st, prefix: prefix, holder: holder, duration: d, now: time.Now, seen: map[string]sighting{}}
}

func (l *Lessor) key(job string) string { return l.prefix + "scheduler/leases/" + job + ".json" }

// Lease is a lease this replica holds.
type Lease struct {
	l    *Lessor
	job  string
	rec  leaseRecord
	etag string

	// wmu serializes the lease's writes: the renewer and a commit's
	// renewal must not race each other's compare-and-swap (the loser
	// would take the lease for lost).
	wmu sync.Mutex

	mu      sync.Mutex
	renewed time.Time // monotonic, of the last write that succeeded
	lost    bool
}

// Generation is the lease's fencing token.
func (ls *Lease) Generation() uint64 { return ls.rec.Generation }

// Acquire takes job's lease for slot. It fails with ErrSlotDone if the
// record says slot was done, with ErrLeaseHeld if
// another replica holds it and has renewed it within the lease duration
// as this replica observes, and with ErrLeaseLost if another replica won
// a race for it.
func (l *Lessor) Acquire(ctx context.Context, job string, slot time.Time) (*Lease, error) {
	key := l.key(job)
	rec, etag, err := l.read(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return l.write(ctx, job, slot, 1, "")
	}
	if err != nil {
		return nil, err
	}
	// Done for this very slot only: a record claiming a later slot (a
	// replica whose clock runs ahead, or a forged record) does not hold
	// this slot off; the due check (signed manifests) already skips a slot
	// a later backup covers.
	if rec != nil && rec.State == LeaseDone && rec.Slot.Equal(slot) {
		return nil, ErrSlotDone
	}
	if rec != nil && rec.State == LeaseHeld && !l.expired(job, etag) {
		return nil, fmt.Errorf("%w (%s, slot %s)", ErrLeaseHeld, rec.Holder, rec.Slot.Format(time.RFC3339))
	}
	// Released, taken for an earlier slot and done, expired, or
	// unreadable (a record this version cannot parse is replaced only
	// through the same compare-and-swap).
	gen := uint64(1)
	if rec != nil {
		gen = rec.Generation + 1
	}
	return l.write(ctx, job, slot, gen, etag)
}

// expired reports whether the held version etag of job's lease has gone
// unrenewed for a lease duration since this replica first saw it.
func (l *Lessor) expired(job, etag string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.seen[job]
	if !ok || s.etag != etag {
		l.seen[job] = sighting{etag: etag, since: l.now()}
		return false
	}
	return l.now().Sub(s.since) >= l.duration
}

// read returns job's lease record and its ETag; a nil record with an
// ETag if the object does not parse.
func (l *Lessor) read(ctx context.Context, key string) (*leaseRecord, string, error) {
	oi, err := l.st.Stat(ctx, key)
	if err != nil {
		return nil, "", fmt.Errorf("read lease %s: %w", key, err)
	}
	changed := func(err error) error {
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			// Rewritten (or released and replaced) while read: another
			// replica is at it; the caller waits and tries again.
			return fmt.Errorf("%w: %s changed while read", ErrLeaseLost, key)
		}
		return fmt.Errorf("read lease %s: %w", key, err)
	}
	rc, err := l.st.Get(ctx, key)
	if err != nil {
		return nil, "", changed(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxLeaseSize+1))
	if err != nil {
		return nil, "", changed(err)
	}
	// The ETag is the Stat's: if the object changed between Stat and
	// Get, a compare-and-swap on it fails, as it should.
	rec, err := parseLease(b)
	if err != nil || len(b) > maxLeaseSize {
		return nil, oi.ETag, nil
	}
	return rec, oi.ETag, nil
}

// write takes job's lease by a create-only put (etag "") or a
// compare-and-swap on etag.
func (l *Lessor) write(ctx context.Context, job string, slot time.Time, gen uint64, etag string) (*Lease, error) {
	ls := &Lease{l: l, job: job, rec: leaseRecord{
		Format: leaseFormat, Job: job, Slot: slot.UTC(), Holder: l.holder, Generation: gen,
		State: LeaseHeld, DurationSeconds: l.duration.Seconds(),
	}}
	if err := ls.put(ctx, etag); err != nil {
		return nil, err
	}
	l.mu.Lock()
	delete(l.seen, job)
	l.mu.Unlock()
	return ls, nil
}

// put writes ls's record with a fresh nonce, create-only if etag is "",
// else if the stored version is still etag, and keeps the new ETag.
func (ls *Lease) put(ctx context.Context, etag string) error {
	var nonce [12]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return err
	}
	ls.rec.Nonce = hex.EncodeToString(nonce[:])
	ls.rec.Written = time.Now().UTC().Round(0)
	b, err := json.Marshal(ls.rec)
	if err != nil {
		return err
	}
	key := ls.l.key(ls.job)
	opts := store.PutOptions{CreateOnly: etag == "", IfMatch: etag}
	start := ls.l.now()
	if err := ls.l.st.Put(ctx, key, bytes.NewReader(b), opts); err != nil {
		if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("%w: %s", ErrLeaseLost, key)
		}
		return fmt.Errorf("write lease %s: %w", key, err)
	}
	oi, err := ls.l.st.Stat(ctx, key)
	if err != nil {
		return fmt.Errorf("write lease %s: %w", key, err)
	}
	ls.etag = oi.ETag
	ls.mu.Lock()
	ls.renewed = start // the write may have landed as soon as it was sent
	ls.mu.Unlock()
	return nil
}

// Renew rewrites the lease if it is still this replica's version; a
// lease changed by another replica fails with ErrLeaseLost, and stays
// lost.
func (ls *Lease) Renew(ctx context.Context) error {
	ls.wmu.Lock()
	defer ls.wmu.Unlock()
	return ls.renew(ctx)
}

func (ls *Lease) renew(ctx context.Context) error {
	ls.mu.Lock()
	lost := ls.lost
	ls.mu.Unlock()
	if lost {
		return fmt.Errorf("%w: %s", ErrLeaseLost, ls.l.key(ls.job))
	}
	err := ls.put(ctx, ls.etag)
	if errors.Is(err, ErrLeaseLost) {
		ls.mu.Lock()
		ls.lost = true
		ls.mu.Unlock()
	}
	return err
}

// Fresh reports whether the lease is safely this replica's: it was
// written within two thirds of the lease duration (another replica waits
// a whole one before it takes over) and was not lost.
func (ls *Lease) Fresh() bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return !ls.lost && ls.l.now().Sub(ls.renewed) < 2*ls.l.duration/3
}

// Release ends the lease, marking its slot done (ok) or failed, by a
// compare-and-swap on this replica's version.
func (ls *Lease) Release(ctx context.Context, ok bool) error {
	ls.wmu.Lock()
	defer ls.wmu.Unlock()
	ls.rec.State = LeaseFailed
	if ok {
		ls.rec.State = LeaseDone
	}
	return ls.renew(ctx)
}

// Keep renews the lease every third of its duration until ctx is done,
// and calls lost (once) when the lease is lost or goes stale because the
// store could not be reached: the run must then stop, as another replica
// may take the slot.
func (ls *Lease) Keep(ctx context.Context, lost func(error)) {
	t := time.NewTicker(ls.l.duration / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := ls.Renew(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrLeaseLost) || (err != nil && !ls.Fresh()) {
			lost(err)
			return
		}
	}
}
