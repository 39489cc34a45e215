package migrate_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
	"github.com/hsmbackup/hsmbackup/migrate"
)

const password = "correct horse battery staple"

// fixture is two clusters of three daemons each, over TLS on loopback,
// opened as crypto user alice on both.
type fixture struct {
	e                *hsmtest.Env
	srcHSMs, dstHSMs []*hsmtest.Daemon
	srcCfg, dstCfg   cluster.Config
	src, dst         *cluster.Cluster
	opts             migrate.Options
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{e: hsmtest.NewEnv(t)}
	f.srcHSMs, f.srcCfg = f.e.NewCluster(t, "source", 3, password)
	f.dstHSMs, f.dstCfg = f.e.NewCluster(t, "destination", 3, password)
	f.src, f.dst = f.open(t, f.srcCfg), f.open(t, f.dstCfg)
	mfr := x509.NewCertPool()
	mfr.AddCert(f.e.Mfr.Certificate())
	f.opts = migrate.Options{User: "alice", ManufacturerRoots: mfr, OperatorRoots: []*x509.Certificate{f.e.Op.Certificate()}, SourceCluster: "source",
		Cluster: "destination", ClusterKeyHash: clusterKeyHash(t, f.dstHSMs[0])}
	return f
}

func (f *fixture) open(t testing.TB, cfg cluster.Config) *cluster.Cluster {
	t.Helper()
	c, err := cluster.Open(context.Background(), cfg, "alice", password)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func clusterKeyHash(t testing.TB, h *hsmtest.Daemon) []byte {
	t.Helper()
	id, err := h.Dev.TLSIdentity()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(id.Certificate.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	sum, err := hsmcore.PublicKeyHash(cert.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func (f *fixture) generate(t testing.TB, n int, spec hsmcore.KeySpec) []hsmcore.KeyInfo {
	t.Helper()
	var keys []hsmcore.KeyInfo
	for start := 0; start < n; start += 1000 { // batches of what keys generate makes at once
		var specs []hsmcore.KeySpec
		for i := start; i < min(n, start+1000); i++ {
			s := spec
			s.Label = fmt.Sprintf("%s-%d", spec.Label, i)
			specs = append(specs, s)
		}
		made, err := f.src.GenerateKeys(context.Background(), specs)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, made...)
	}
	return keys
}

// held is what each destination member holds of alice's, by label and
// check value, counted.
func held(t *testing.T, hsms []*hsmtest.Daemon) []map[string]int {
	t.Helper()
	var out []map[string]int
	for _, h := range hsms {
		s, err := h.Dev.Login("alice", password)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := s.Keys()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]int{}
		for _, k := range keys {
			m[k.Label+"/"+k.KCV]++
		}
		s.Logout()
		out = append(out, m)
	}
	return out
}

// A migration cut short after its first bundle, then run again, moves
// every key once: on every member of the destination, no duplicate, and
// the second run skips what the first moved. A third run moves nothing.
func TestMigrateInterruptedAndResumed(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	keys := f.generate(t, 2*hsmcore.MaxBundleKeys+17, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "k", Encrypt: true, Decrypt: true, Extractable: true})
	opts := f.opts
	opts.Progress = func(done, total int) { cancel() } // as a SIGKILL after the first bundle
	rep, err := migrate.Run(ctx, f.src, f.dst, opts)
	if err == nil {
		t.Fatal("the interrupted run did not stop")
	}
	if rep.Moved != hsmcore.MaxBundleKeys {
		t.Fatalf("interrupted run moved %d, want the first bundle's %d", rep.Moved, hsmcore.MaxBundleKeys)
	}
	rep, err = migrate.Run(context.Background(), f.src, f.dst, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Skipped != hsmcore.MaxBundleKeys || rep.Moved != len(keys)-hsmcore.MaxBundleKeys || rep.Refused != 0 {
		t.Fatalf("resumed: moved %d, skipped %d, refused %d", rep.Moved, rep.Skipped, rep.Refused)
	}
	for i, m := range held(t, f.dstHSMs) {
		if len(m) != len(keys) {
			t.Fatalf("member %d holds %d keys, want %d", i, len(m), len(keys))
		}
		for _, k := range keys {
			if m[k.Label+"/"+k.KCV] != 1 {
				t.Fatalf("member %d holds key %s %d times", i, k.Label, m[k.Label+"/"+k.KCV])
			}
		}
	}
	rep, err = migrate.Run(context.Background(), f.src, f.dst, f.opts)
	if err != nil || rep.Moved != 0 || rep.Skipped != len(keys) {
		t.Fatalf("third run: %+v, %v", rep, err)
	}
}

// A member of the destination down during the migration: the keys move
// to the others; back, and re-synced by the officer's next open, it holds
// them too.
func TestMigrateWithADestinationMemberDown(t *testing.T) {
	f := newFixture(t)
	keys := f.generate(t, 20, hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-256", Label: "ec", Sign: true, Verify: true, Extractable: true})
	f.dstHSMs[2].Stop()
	rep, err := migrate.Run(context.Background(), f.src, f.dst, f.opts)
	if err != nil || rep.Moved != len(keys) {
		t.Fatalf("with a member down: %+v, %v", rep, err)
	}
	f.dstHSMs[2].Start()
	// As after any write it missed: the officer's next open re-syncs it.
	co, err := cluster.Open(context.Background(), f.dstCfg, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	co.Close()
	for i, m := range held(t, f.dstHSMs) {
		if len(m) != len(keys) {
			t.Fatalf("member %d holds %d keys, want %d", i, len(m), len(keys))
		}
	}
}

// A dry run checks everything and moves nothing; what may not leave is
// reported refused, with why, in the dry run as in the real one.
func TestMigrateDryRunAndRefusals(t *testing.T) {
	f := newFixture(t)
	f.generate(t, 3, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Label: "ok", Encrypt: true, Extractable: true})
	f.generate(t, 2, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "fixed", Encrypt: true})
	before := f.dstHSMs[0].State(t)
	opts := f.opts
	opts.DryRun = true
	rep, err := migrate.Run(context.Background(), f.src, f.dst, opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Moved != 3 || rep.Refused != 2 {
		t.Fatalf("dry run: moved %d, refused %d", rep.Moved, rep.Refused)
	}
	for _, h := range f.dstHSMs {
		if n := len(held(t, []*hsmtest.Daemon{h})[0]); n != 0 {
			t.Fatalf("a dry run moved %d keys", n)
		}
	}
	if f.dstHSMs[0].State(t).Digest != before.Digest {
		t.Fatal("a dry run changed the destination's state")
	}
	rep, err = migrate.Run(context.Background(), f.src, f.dst, f.opts)
	if err != nil || rep.Moved != 3 || rep.Refused != 2 {
		t.Fatalf("migration: %+v, %v", rep, err)
	}
	for _, k := range rep.Keys {
		if k.Result == hsmcore.Refused && k.Reason != "not extractable" {
			t.Fatalf("refused for %q", k.Reason)
		}
	}
	opts = f.opts
	opts.Room = func(context.Context) (int, error) { return 0, nil }
	if _, err := migrate.Run(context.Background(), f.src, f.dst, opts); err != nil {
		t.Fatalf("nothing left to move, no room: %v", err)
	}
	f.generate(t, 1, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Label: "more", Encrypt: true, Extractable: true})
	if _, err := migrate.Run(context.Background(), f.src, f.dst, opts); !errors.Is(err, migrate.ErrCapacity) {
		t.Fatalf("over capacity: %v", err)
	}
}

// A transport key from an HSM that is not of the named destination
// cluster (the client was pointed at another cluster) is refused before
// the source wraps anything.
func TestMigrateRefusesAnotherCluster(t *testing.T) {
	f := newFixture(t)
	f.generate(t, 1, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Label: "ok", Encrypt: true, Extractable: true})
	opts := f.opts
	opts.ClusterKeyHash = clusterKeyHash(t, f.srcHSMs[0])
	srcState := f.srcHSMs[0].State(t)
	if _, err := migrate.Run(context.Background(), f.src, f.dst, opts); !errors.Is(err, hsmcore.ErrAttestation) {
		t.Fatalf("another cluster's key: %v", err)
	}
	if f.srcHSMs[0].State(t).Digest != srcState.Digest {
		t.Fatal("the source changed")
	}
}

// BenchmarkMigrateFullHSM moves a full HSM's worth of AES-256 keys
// (16,666, CloudHSM hsm2m.medium's limit) between two clusters of three
// daemons each; docs/BENCHMARKS.md sets it against SoftHSMv2's raw
// CKM_AES_KEY_WRAP_PAD rate (interop/softhsm BenchmarkSoftHSMWrapPad).
func BenchmarkMigrateFullHSM(b *testing.B) {
	for range b.N {
		b.StopTimer()
		f := newFixture(b)
		n := 16666
		if testing.Short() { // make test: only that it works
			n = 500
		}
		keys := f.generate(b, n, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "k", Encrypt: true, Extractable: true})
		b.StartTimer()
		rep, err := migrate.Run(context.Background(), f.src, f.dst, f.opts)
		if err != nil || rep.Moved != len(keys) {
			b.Fatalf("%+v, %v", rep.Moved, err)
		}
		b.ReportMetric(float64(len(keys))/b.Elapsed().Seconds(), "keys/s")
	}
}
