package retry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/file"
	"github.com/hsmbackup/hsmbackup/store/storetest"
)

// mock is a store.Store of function fields; a nil field panics.
type mock struct {
	put    func(ctx context.Context, key string, r io.Reader, opts store.PutOptions) error
	get    func(ctx context.Context, key string) (io.ReadCloser, error)
	stat   func(ctx context.Context, key string) (store.ObjectInfo, error)
	list   func(ctx context.Context, prefix string, fn func(store.ObjectInfo) error) error
	delete func(ctx context.Context, key string) error
}

func (m *mock) Put(ctx context.Context, key string, r io.Reader, opts store.PutOptions) error {
	return m.put(ctx, key, r, opts)
}
func (m *mock) Get(ctx context.Context, key string) (io.ReadCloser, error) { return m.get(ctx, key) }
func (m *mock) Stat(ctx context.Context, key string) (store.ObjectInfo, error) {
	return m.stat(ctx, key)
}
func (m *mock) List(ctx context.Context, prefix string, fn func(store.ObjectInfo) error) error {
	return m.list(ctx, prefix, fn)
}
func (m *mock) Delete(ctx context.Context, key string) error { return m.delete(ctx, key) }

// fast is a Config for tests: no real waiting.
var fast = Config{Attempts: 4, BaseDelay: time.Microsecond, MaxDelay: 10 * time.Microsecond}

func wrap(tb testing.TB, s store.Store, cfg Config) *Store {
	tb.Helper()
	r, err := New(s, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

var errFlaky = store.Transient(errors.New("503 slow down"))

// TestConformance: the decorator keeps the store contract.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		fs, err := file.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return wrap(t, fs, fast)
	})
}

func TestStatRetriesTransientOnly(t *testing.T) {
	ctx := context.Background()
	var calls atomic.Int32
	m := &mock{stat: func(context.Context, string) (store.ObjectInfo, error) {
		if calls.Add(1) < 3 {
			return store.ObjectInfo{}, errFlaky
		}
		return store.ObjectInfo{Key: "k", Size: 1}, nil
	}}
	var retries []int
	cfg := fast
	cfg.OnRetry = func(op, key string, attempt int, err error, wait time.Duration) {
		if op != "stat" || key != "k" || !errors.Is(err, errFlaky) || wait > cfg.MaxDelay {
			t.Errorf("OnRetry(%q, %q, %d, %v, %v)", op, key, attempt, err, wait)
		}
		retries = append(retries, attempt)
	}
	oi, err := wrap(t, m, cfg).Stat(ctx, "k")
	if err != nil || oi.Size != 1 || calls.Load() != 3 || !slices.Equal(retries, []int{1, 2}) {
		t.Errorf("got %+v, %v after %d calls, retries %v", oi, err, calls.Load(), retries)
	}

	// Permanent errors are returned at once.
	calls.Store(0)
	m.stat = func(context.Context, string) (store.ObjectInfo, error) {
		calls.Add(1)
		return store.ObjectInfo{}, store.ErrNotFound
	}
	if _, err := wrap(t, m, fast).Stat(ctx, "k"); !errors.Is(err, store.ErrNotFound) || calls.Load() != 1 {
		t.Errorf("permanent: %v after %d calls", err, calls.Load())
	}

	// Attempts are bounded.
	calls.Store(0)
	m.stat = func(context.Context, string) (store.ObjectInfo, error) {
		calls.Add(1)
		return store.ObjectInfo{}, errFlaky
	}
	if _, err := wrap(t, m, fast).Stat(ctx, "k"); !errors.Is(err, errFlaky) || calls.Load() != 4 {
		t.Errorf("always failing: %v after %d calls", err, calls.Load())
	}
}

func TestCancelDuringBackoff(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	m := &mock{delete: func(context.Context, string) error {
		cancel()
		return errFlaky
	}}
	err := wrap(t, m, Config{BaseDelay: time.Hour}).Delete(ctx, "k")
	if !errors.Is(err, context.Canceled) || !errors.Is(err, errFlaky) {
		t.Errorf("got %v", err)
	}
}

// flakyPut fails the first n Puts transiently after reading part of the
// body, and records what each attempt read.
func flakyPut(n int, bodies *[]string) func(context.Context, string, io.Reader, store.PutOptions) error {
	return func(_ context.Context, _ string, r io.Reader, _ store.PutOptions) error {
		if len(*bodies) < n {
			b := make([]byte, 3)
			io.ReadFull(r, b)
			*bodies = append(*bodies, string(b))
			return errFlaky
		}
		b, _ := io.ReadAll(r)
		*bodies = append(*bodies, string(b))
		return nil
	}
}

func TestPutRewindsSeekableBodies(t *testing.T) {
	var bodies []string
	m := &mock{put: flakyPut(2, &bodies)}
	body := strings.NewReader("skip:payload")
	body.Seek(5, io.SeekStart) // Put starts where the body stands
	if err := wrap(t, m, fast).Put(context.Background(), "k", body, store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(bodies, []string{"pay", "pay", "payload"}) {
		t.Errorf("attempts read %q", bodies)
	}
}

func TestPutStreamsOnce(t *testing.T) {
	var bodies []string
	m := &mock{put: flakyPut(1, &bodies)}
	err := wrap(t, m, fast).Put(context.Background(), "k", io.MultiReader(strings.NewReader("payload")), store.PutOptions{})
	if !errors.Is(err, errFlaky) || len(bodies) != 1 {
		t.Errorf("got %v after %d attempts", err, len(bodies))
	}
}

// TestConditionalLostResponse: the first conditional Put (create-only,
// or if-match) committed but its answer was lost; the repeat meets the
// object it made and must recognise it as its own, and nothing else.
func TestConditionalLostResponse(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []struct {
		name  string
		opts  store.PutOptions
		fails error // what the repeat meets
	}{
		{"create-only", store.PutOptions{CreateOnly: true}, store.ErrExists},
		{"if-match", store.PutOptions{IfMatch: "v1"}, store.ErrConflict},
	} {
		for _, tc := range []struct {
			name, stored, body string
			ok                 bool
		}{
			{"ours", "payload", "payload", true},
			{"theirs", "other", "payload", false},
			{"longer", "payload+", "payload", false},
			{"shorter", "pay", "payload", false},
		} {
			t.Run(mode.name+"/"+tc.name, func(t *testing.T) {
				attempts := 0
				m := &mock{
					put: func(_ context.Context, _ string, r io.Reader, opts store.PutOptions) error {
						attempts++
						if opts != mode.opts {
							t.Errorf("options %+v, want %+v", opts, mode.opts)
						}
						if attempts == 1 {
							io.ReadAll(r)
							return errFlaky
						}
						return mode.fails
					},
					get: func(context.Context, string) (io.ReadCloser, error) {
						return io.NopCloser(strings.NewReader(tc.stored)), nil
					},
				}
				err := wrap(t, m, fast).Put(ctx, "k", strings.NewReader(tc.body), mode.opts)
				if tc.ok && err != nil || !tc.ok && !errors.Is(err, mode.fails) {
					t.Errorf("got %v, want success %t", err, tc.ok)
				}
			})
		}
		// A first-attempt failure is final, and nothing is read back.
		m := &mock{put: func(context.Context, string, io.Reader, store.PutOptions) error { return mode.fails }}
		if err := wrap(t, m, fast).Put(ctx, "k", strings.NewReader("x"), mode.opts); !errors.Is(err, mode.fails) {
			t.Errorf("%s: got %v", mode.name, err)
		}
	}
}

func TestListResumes(t *testing.T) {
	keys := []string{"a", "b", "c", "d"}
	calls := 0
	m := &mock{list: func(_ context.Context, _ string, fn func(store.ObjectInfo) error) error {
		calls++
		for i, k := range keys {
			if calls == 1 && i == 2 {
				return errFlaky // fail after two keys
			}
			if err := fn(store.ObjectInfo{Key: k}); err != nil {
				return err
			}
		}
		return nil
	}}
	var got []string
	err := wrap(t, m, fast).List(context.Background(), "", func(oi store.ObjectInfo) error {
		got = append(got, oi.Key)
		return nil
	})
	if err != nil || !slices.Equal(got, keys) {
		t.Errorf("got %q, %v", got, err)
	}

	// fn's error ends the listing, unrepeated, even if it is transient.
	calls = 5
	n := 0
	err = wrap(t, m, fast).List(context.Background(), "", func(store.ObjectInfo) error {
		n++
		return errFlaky
	})
	if err != errFlaky || n != 1 {
		t.Errorf("fn error: %v after %d calls", err, n)
	}
}

func TestGetRetriesOpening(t *testing.T) {
	calls := 0
	m := &mock{get: func(context.Context, string) (io.ReadCloser, error) {
		if calls++; calls == 1 {
			return nil, errFlaky
		}
		return io.NopCloser(bytes.NewReader([]byte("x"))), nil
	}}
	rc, err := wrap(t, m, fast).Get(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
}

func TestNewValidates(t *testing.T) {
	fs := &mock{}
	for _, cfg := range []Config{{Attempts: -1}, {BaseDelay: -1}, {BaseDelay: time.Second, MaxDelay: time.Millisecond}} {
		if _, err := New(fs, cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	if _, err := New(nil, Config{}); err == nil {
		t.Error("New(nil) accepted")
	}
	r := wrap(t, fs, Config{})
	if r.cfg.Attempts != DefaultAttempts || r.cfg.BaseDelay != DefaultBaseDelay || r.cfg.MaxDelay != DefaultMaxDelay {
		t.Errorf("defaults %+v", r.cfg)
	}
	if r.Unwrap() != store.Store(fs) {
		t.Error("Unwrap")
	}
}
