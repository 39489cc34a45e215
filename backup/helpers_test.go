package backup

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"io"
	"sync/atomic"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
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
	cfg := e.InitCluster(tb, e.Serve(tb, nil), testCluster, "admin", testPassword)
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
	del func(ctx context.Context, key string) error
}

func (s *mockStore) Delete(ctx context.Context, key string) error {
	if s.del != nil {
		return s.del(ctx, key)
	}
	return s.Store.Delete(ctx, key)
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

// snapshot returns every object in st, key to bytes.
func snapshot(tb testing.TB, st store.Store) map[string][]byte {
	tb.Helper()
	ctx := context.Background()
	out := map[string][]byte{}
	err := st.List(ctx, "", func(oi store.ObjectInfo) error {
		rc, err := st.Get(ctx, oi.Key)
		if err != nil {
			return err
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		out[oi.Key] = b
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// resign rewrites the stored manifest of backup id: change (if not nil)
// edits it, then priv signs it. With a key other than the service's it
// forges a manifest that parses but does not verify.
func resign(tb testing.TB, repo Repo, cluster, id string, priv ed25519.PrivateKey, change func(*Manifest)) []byte {
	tb.Helper()
	ctx := context.Background()
	m, err := Describe(ctx, repo, cluster, id)
	if err != nil {
		tb.Fatal(err)
	}
	if change != nil {
		change(m)
	}
	if err := m.Sign(priv); err != nil {
		tb.Fatal(err)
	}
	b, err := m.Marshal()
	if err != nil {
		tb.Fatal(err)
	}
	if err := repo.Store.Put(ctx, repo.ObjectKey(cluster, id, ManifestObject), bytes.NewReader(b), store.PutOptions{}); err != nil {
		tb.Fatal(err)
	}
	return b
}
