package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/backup/backuptest"
	"github.com/hsmbackup/hsmbackup/internal/miniotest"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/s3"
)

func TestMain(m *testing.M) { miniotest.Main(m) }

// stores are the backends a lease must work on: the file store (one
// machine) and MinIO (S3 conditional writes).
func stores(t *testing.T) map[string]func(t *testing.T) store.Store {
	return map[string]func(t *testing.T) store.Store{
		"file": func(t *testing.T) store.Store { return backuptest.FileStore(t) },
		"minio": func(t *testing.T) store.Store {
			srv := miniotest.Shared(t)
			bucket := srv.NewBucket(t, miniotest.BucketOptions{})
			st, err := s3.New(s3.Config{Bucket: bucket, Endpoint: srv.URL(), Region: "us-east-1", Credentials: srv.Credentials()})
			if err != nil {
				t.Fatal(err)
			}
			return st
		},
	}
}

// fakeClock is a monotonic clock a test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func lessor(st store.Store, holder string, c *fakeClock) *Lessor {
	l := NewLessor(st, "p/", holder, time.Minute)
	if c != nil {
		l.now = c.now
	}
	return l
}

var slot1 = time.Date(2026, 12, 3, 2, 30, 0, 0, time.UTC)

func TestLease(t *testing.T) {
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			t.Run("CreateOnlyRace", func(t *testing.T) { testLeaseRace(t, newStore(t)) })
			t.Run("Lifecycle", func(t *testing.T) { testLeaseLifecycle(t, newStore(t)) })
			t.Run("Takeover", func(t *testing.T) { testLeaseTakeover(t, newStore(t)) })
			t.Run("EveryWriteNewETag", func(t *testing.T) { testLeaseETags(t, newStore(t)) })
		})
	}
}

// testLeaseRace: of replicas racing for a slot nobody holds, exactly one
// takes it, however many there are; so too for the takeover of a
// released one.
func testLeaseRace(t *testing.T, st store.Store) {
	ctx := context.Background()
	for round, slot := range []time.Time{slot1, slot1.Add(24 * time.Hour)} {
		var won atomic.Int32
		var wg sync.WaitGroup
		var leases sync.Map
		for i := range 12 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ls, err := lessor(st, fmt.Sprintf("r%d", i), nil).Acquire(ctx, "backup/c1", slot)
				switch {
				case err == nil:
					won.Add(1)
					leases.Store(i, ls)
				case errors.Is(err, ErrLeaseLost), errors.Is(err, ErrLeaseHeld), errors.Is(err, ErrSlotDone):
				default:
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if n := won.Load(); n != 1 {
			t.Fatalf("round %d: %d replicas took the slot, want 1", round, n)
		}
		leases.Range(func(_, v any) bool {
			if err := v.(*Lease).Release(ctx, true); err != nil {
				t.Fatal(err)
			}
			return true
		})
	}
}

func testLeaseLifecycle(t *testing.T, st store.Store) {
	ctx := context.Background()
	a, b := lessor(st, "a", nil), lessor(st, "b", nil)
	la, err := a.Acquire(ctx, "backup/c1", slot1)
	if err != nil || la.Generation() != 1 {
		t.Fatalf("first Acquire = %v, %v", la, err)
	}
	if _, err := b.Acquire(ctx, "backup/c1", slot1); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("Acquire of a held lease = %v, want ErrLeaseHeld", err)
	}
	if _, err := b.Acquire(ctx, "backup/c2", slot1); err != nil {
		t.Fatalf("another cluster's lease: %v", err)
	}
	if err := la.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if err := la.Release(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, "backup/c1", slot1); !errors.Is(err, ErrSlotDone) {
		t.Fatalf("Acquire of a done slot = %v, want ErrSlotDone", err)
	}
	next := slot1.Add(24 * time.Hour)
	lb, err := b.Acquire(ctx, "backup/c1", next)
	if err != nil || lb.Generation() != 2 {
		t.Fatalf("Acquire of the next slot = %v, %v; want generation 2", lb, err)
	}
	// A failed slot is free to take at once, by anyone.
	if err := lb.Release(ctx, false); err != nil {
		t.Fatal(err)
	}
	if lc, err := a.Acquire(ctx, "backup/c1", next); err != nil || lc.Generation() != 3 {
		t.Fatalf("Acquire of a failed slot = %v, %v; want generation 3", lc, err)
	}
}

// TestLeaseForgedDone: a record claiming a far later slot done (a store
// writer's forgery, or a replica whose clock runs ahead) does not hold
// the current slot off.
func TestLeaseForgedDone(t *testing.T) {
	ctx := context.Background()
	st := backuptest.FileStore(t)
	forger := lessor(st, "forger", nil)
	ls, err := forger.Acquire(ctx, "backup/c1", time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.Release(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, err := lessor(st, "a", nil).Acquire(ctx, "backup/c1", slot1); err != nil {
		t.Fatalf("a forged later 'done' held the slot off: %v", err)
	}
}

// testLeaseTakeover: a held lease is taken over only once its version
// went unrenewed for a whole lease duration as the taker measures it;
// the holder that lost it learns so at its next write and cannot release
// it.
func testLeaseTakeover(t *testing.T, st store.Store) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Unix(1000, 0)}
	a, b := lessor(st, "a", nil), lessor(st, "b", clock)
	la, err := a.Acquire(ctx, "backup/c1", slot1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, "backup/c1", slot1); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("first sight: %v", err)
	}
	clock.add(time.Minute - time.Millisecond)
	if _, err := b.Acquire(ctx, "backup/c1", slot1); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("just short of a lease duration: %v", err)
	}
	if err := la.Renew(ctx); err != nil { // a renewal restarts the wait
		t.Fatal(err)
	}
	clock.add(time.Millisecond)
	if _, err := b.Acquire(ctx, "backup/c1", slot1); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("after a renewal: %v", err)
	}
	clock.add(time.Minute)
	lb, err := b.Acquire(ctx, "backup/c1", slot1)
	if err != nil || lb.Generation() != 2 {
		t.Fatalf("takeover after a lease duration unrenewed = %v, %v", lb, err)
	}
	if err := la.Renew(ctx); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("the old holder's renewal = %v, want ErrLeaseLost", err)
	}
	if la.Fresh() {
		t.Fatal("a lost lease reports itself fresh")
	}
	if err := la.Release(ctx, true); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("the old holder's release = %v, want ErrLeaseLost", err)
	}
	// The old holder's "done" did not land: the slot is still the new
	// holder's.
	if _, err := a.Acquire(ctx, "backup/c1", slot1); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("after the old holder's release: %v", err)
	}
}

// testLeaseETags: every write of a lease makes a new version, also when
// the record's fields are the same: S3's ETag is the MD5 of the bytes, so
// without the nonce an old ETag would still match.
func testLeaseETags(t *testing.T, st store.Store) {
	ctx := context.Background()
	l := lessor(st, "a", nil)
	ls, err := l.Acquire(ctx, "backup/c1", slot1)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{ls.etag: true}
	for range 5 {
		old := ls.etag
		if err := ls.Renew(ctx); err != nil {
			t.Fatal(err)
		}
		if seen[ls.etag] {
			t.Fatalf("a renewal kept ETag %s", ls.etag)
		}
		seen[ls.etag] = true
		// The old version's ETag no longer wins a compare-and-swap.
		stale := &Lease{l: l, job: ls.job, rec: ls.rec, etag: old}
		if err := stale.Renew(ctx); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("a write with a stale ETag = %v, want ErrLeaseLost", err)
		}
	}
}

// TestLeaseKeepLoses: Keep calls lost when another replica took the
// lease, so that the run stops.
func TestLeaseKeepLoses(t *testing.T) {
	ctx := context.Background()
	st := backuptest.FileStore(t)
	a := NewLessor(st, "", "a", 3*time.Second)
	la, err := a.Acquire(ctx, "backup/c1", slot1)
	if err != nil {
		t.Fatal(err)
	}
	// Another replica overwrites the lease (as a takeover would).
	clock := &fakeClock{t: time.Unix(0, 0)}
	b := NewLessor(st, "", "b", 3*time.Second)
	b.now = clock.now
	if _, err := b.Acquire(ctx, "backup/c1", slot1); !errors.Is(err, ErrLeaseHeld) {
		t.Fatal(err)
	}
	clock.add(3 * time.Second)
	if _, err := b.Acquire(ctx, "backup/c1", slot1); err != nil {
		t.Fatal(err)
	}
	lost := make(chan error, 1)
	kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	go la.Keep(kctx, func(err error) { lost <- err })
	select {
	case err := <-lost:
		if !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("lost with %v", err)
		}
	case <-kctx.Done():
		t.Fatal("Keep did not notice the lease was taken")
	}
}

// TestLeaseConcurrentRenewals: the renewer and a commit renewing at once
// both succeed: a lease's own writes never take each other for a loss.
func TestLeaseConcurrentRenewals(t *testing.T) {
	ctx := context.Background()
	ls, err := lessor(backuptest.FileStore(t), "a", nil).Acquire(ctx, "backup/c1", slot1)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for range 40 {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- ls.Renew(ctx) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a concurrent renewal: %v", err)
		}
	}
	if !ls.Fresh() {
		t.Fatal("the lease is not fresh after its renewals")
	}
}
