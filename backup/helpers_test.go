package backup

import (
	"context"
	"crypto/x509"
	"io"
	"sync/atomic"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/internal/hsmtest"
	"github.com/hsmbackup/hsmbackup/store"
)

const (
	testCluster  = "cluster-1"
	testPassword = "correct horse battery"
)

// newMember serves an HSM, initializes its cluster and first crypto
// officer, has a crypto user make that many 512-byte secret keys, and
// returns the officer's logged-in client.
func newMember(tb testing.TB, keys int) *client.Client {
	tb.Helper()
	ctx := context.Background()
	e := hsmtest.NewEnv(tb)
	roots := x509.NewCertPool()
	roots.AddCert(e.Mfr.Certificate())
	cfg := hsmtest.InitCluster(tb, e.Serve(tb, nil).Addr, roots, e.CA, testCluster, "admin", testPassword)
	co, err := client.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(co.Close)
	if _, err := co.Login(ctx, "admin", testPassword); err != nil {
		tb.Fatal(err)
	}
	if keys > 0 {
		if err := co.CreateUser(ctx, "crypto-user", hsmcore.CryptoUser, testPassword); err != nil {
			tb.Fatal(err)
		}
		cu, err := client.New(cfg)
		if err != nil {
			tb.Fatal(err)
		}
		defer cu.Close()
		if _, err := cu.Login(ctx, "crypto-user", testPassword); err != nil {
			tb.Fatal(err)
		}
		specs := make([]hsmcore.KeySpec, keys)
		for i := range specs {
			specs[i] = hsmcore.KeySpec{Type: hsmcore.GenericSecret, Bits: 4096}
		}
		if _, err := cu.GenerateKeys(ctx, specs); err != nil {
			tb.Fatal(err)
		}
	}
	return co
}

// mockStore wraps a Store; a non-nil function field replaces its method.
type mockStore struct {
	store.Store
	put func(ctx context.Context, key string, r io.Reader, opts store.PutOptions) error
}

func (s *mockStore) Put(ctx context.Context, key string, r io.Reader, opts store.PutOptions) error {
	if s.put != nil {
		return s.put(ctx, key, r, opts)
	}
	return s.Store.Put(ctx, key, r, opts)
}

// failAfter returns a put function that passes keys with the given
// suffix to st through a reader that fails after n bytes, while armed.
func failAfter(st store.Store, suffix string, n int64, armed *atomic.Bool) func(context.Context, string, io.Reader, store.PutOptions) error {
	return func(ctx context.Context, key string, r io.Reader, opts store.PutOptions) error {
		if armed.Load() && len(key) >= len(suffix) && key[len(key)-len(suffix):] == suffix {
			r = io.MultiReader(io.LimitReader(r, n), failingReader{})
		}
		return st.Put(ctx, key, r, opts)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errInjected }

var errInjected = &injectedError{}

type injectedError struct{}

func (*injectedError) Error() string { return "injected storage failure" }
