// Package retry is a store.Store decorator that repeats operations failing
// with errors marked store.ErrTransient, with capped exponential backoff
// and full jitter, a bounded number of times. Any other error, and any
// error once the context is done, is returned at once.
//
// Get, Stat and Delete are safe to repeat. List resumes after the last key
// it handed to fn, so fn never sees a key twice. Put is repeated only when
// its body is an io.Seeker, which is rewound to where it stood when Put was
// called; a streamed body (a pipe from the HSM, say) is tried once, and
// repeating the whole pipeline is the caller's business. (S3 parts are
// retried below this layer by minio-go, which holds each part in memory.)
//
// A conditional Put (create-only or if-match) that failed transiently may
// have committed anyway (a lost response); if its repeat then meets
// store.ErrExists or store.ErrConflict, the stored object is read back and
// compared with the body: identical bytes count as success, anything else
// as the failure.
package retry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/hsmbackup/hsmbackup/store"
)

// Config bounds the retries. The zero value is valid.
type Config struct {
	// Attempts is how many times an operation is tried in all: 0 means
	// DefaultAttempts; 1 means never repeat.
	Attempts int

	// BaseDelay is the backoff before the first repeat, doubling for each
	// further one up to MaxDelay; the actual wait is drawn uniformly from
	// [0, backoff]. Zero means DefaultBaseDelay and DefaultMaxDelay. Tests
	// set them to microseconds.
	BaseDelay time.Duration
	MaxDelay  time.Duration

	// OnRetry, if set, is called before each wait, for logs and metrics.
	OnRetry func(op, key string, attempt int, err error, wait time.Duration)
}

// Defaults for Config.
const (
	DefaultAttempts  = 5
	DefaultBaseDelay = 200 * time.Millisecond
	DefaultMaxDelay  = 5 * time.Second
)

// Store repeats its inner store's transient failures.
type Store struct {
	inner store.Store
	cfg   Config
}

var (
	_ store.Store   = (*Store)(nil)
	_ store.Wrapper = (*Store)(nil)
)

// New wraps s.
func New(s store.Store, cfg Config) (*Store, error) {
	if s == nil {
		return nil, errors.New("retry: nil store")
	}
	if cfg.Attempts < 0 || cfg.BaseDelay < 0 || cfg.MaxDelay < 0 {
		return nil, errors.New("retry: negative attempts or delay")
	}
	if cfg.Attempts == 0 {
		cfg.Attempts = DefaultAttempts
	}
	if cfg.BaseDelay == 0 {
		cfg.BaseDelay = DefaultBaseDelay
	}
	if cfg.MaxDelay == 0 {
		cfg.MaxDelay = max(DefaultMaxDelay, cfg.BaseDelay)
	}
	if cfg.MaxDelay < cfg.BaseDelay {
		return nil, fmt.Errorf("retry: max delay %v below base delay %v", cfg.MaxDelay, cfg.BaseDelay)
	}
	return &Store{inner: s, cfg: cfg}, nil
}

// Unwrap implements store.Wrapper.
func (s *Store) Unwrap() store.Store { return s.inner }

// do runs op until it succeeds, fails for good, or the attempts run out.
// again, if set, prepares each repeat and may veto it by returning an
// error.
func (s *Store) do(ctx context.Context, name, key string, op func(attempt int) error, again func() error) error {
	backoff := s.cfg.BaseDelay
	for attempt := 1; ; attempt++ {
		err := op(attempt)
		if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			return fmt.Errorf("%w (while retrying: %w)", ctx.Err(), err)
		}
		if err == nil || !store.IsTransient(err) || attempt >= s.cfg.Attempts || ctx.Err() != nil {
			if err != nil && attempt > 1 {
				err = fmt.Errorf("%w (after %d attempts)", err, attempt)
			}
			return err
		}
		wait := rand.N(backoff + 1)
		if s.cfg.OnRetry != nil {
			s.cfg.OnRetry(name, key, attempt, err, wait)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("%w (while retrying: %w)", ctx.Err(), err)
		case <-timer.C:
		}
		backoff = min(2*backoff, s.cfg.MaxDelay)
		if again != nil {
			if aerr := again(); aerr != nil {
				return fmt.Errorf("%s %s: %w (retrying after: %w)", name, key, aerr, err)
			}
		}
	}
}

// Put implements store.Store; see the package comment for when it
// repeats.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, opts store.PutOptions) error {
	rs, ok := r.(io.ReadSeeker)
	if !ok {
		return s.inner.Put(ctx, key, r, opts)
	}
	start, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return s.inner.Put(ctx, key, r, opts) // not really seekable: one try
	}
	rewind := func() error {
		if _, err := rs.Seek(start, io.SeekStart); err != nil {
			return fmt.Errorf("rewind body: %w", err)
		}
		return nil
	}
	return s.do(ctx, "put", key, func(attempt int) error {
		err := s.inner.Put(ctx, key, rs, opts)
		lost := opts.CreateOnly && errors.Is(err, store.ErrExists) || opts.IfMatch != "" && errors.Is(err, store.ErrConflict)
		if attempt > 1 && lost {
			// Did our own earlier attempt commit before failing?
			if rerr := rewind(); rerr != nil {
				return err
			}
			if same, cerr := s.sameContent(ctx, key, rs); cerr == nil && same {
				return nil
			}
		}
		return err
	}, rewind)
}

// sameContent reports whether the object at key holds exactly what r
// holds from its current offset.
func (s *Store) sameContent(ctx context.Context, key string, r io.Reader) (bool, error) {
	obj, err := s.inner.Get(ctx, key)
	if err != nil {
		return false, err
	}
	defer obj.Close()
	a := make([]byte, 32<<10)
	b := make([]byte, 32<<10)
	for {
		na, ea := io.ReadFull(obj, a)
		nb, eb := io.ReadFull(r, b)
		if na != nb || !bytes.Equal(a[:na], b[:nb]) {
			return false, nil
		}
		doneA := ea == io.EOF || ea == io.ErrUnexpectedEOF
		doneB := eb == io.EOF || eb == io.ErrUnexpectedEOF
		switch {
		case ea != nil && !doneA:
			return false, ea
		case eb != nil && !doneB:
			return false, eb
		case doneA || doneB:
			return doneA == doneB, nil
		}
	}
}

// Get implements store.Store. Opening is repeated; reading is not.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := s.do(ctx, "get", key, func(int) error {
		var err error
		rc, err = s.inner.Get(ctx, key)
		return err
	}, nil)
	return rc, err
}

// Stat implements store.Store.
func (s *Store) Stat(ctx context.Context, key string) (store.ObjectInfo, error) {
	var oi store.ObjectInfo
	err := s.do(ctx, "stat", key, func(int) error {
		var err error
		oi, err = s.inner.Stat(ctx, key)
		return err
	}, nil)
	return oi, err
}

// List implements store.Store. A repeat skips the keys up to the last one
// already handed to fn; fn's own errors are never repeated.
func (s *Store) List(ctx context.Context, prefix string, fn func(store.ObjectInfo) error) error {
	var last string
	seen := false
	var fnErr error
	err := s.do(ctx, "list", prefix, func(int) error {
		err := s.inner.List(ctx, prefix, func(oi store.ObjectInfo) error {
			if seen && oi.Key <= last {
				return nil
			}
			if err := fn(oi); err != nil {
				fnErr = err
				return err
			}
			last, seen = oi.Key, true
			return nil
		})
		if fnErr != nil {
			return errStop // never repeated, whatever fn returned
		}
		return err
	}, nil)
	if fnErr != nil {
		return fnErr
	}
	return err
}

// errStop ends a List whose fn failed.
var errStop = errors.New("list stopped by its callback")

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	return s.do(ctx, "delete", key, func(int) error { return s.inner.Delete(ctx, key) }, nil)
}
