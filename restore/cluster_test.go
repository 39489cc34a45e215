package restore

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/store"
)

var _ Member = (*client.Client)(nil)
var _ Cloner = (*cluster.Cluster)(nil)

// clusterTargets serves n fresh HSMs matching the fixture's source, each
// with a client that trusts it as a device and, once restored, as a
// member of the source's cluster (with its client certificate).
func clusterTargets(t *testing.T, f *fixture, n int) []ClusterTarget {
	t.Helper()
	ts := make([]ClusterTarget, n)
	for i := range ts {
		_, addr := newTarget(t, f.a, device.ManufactureConfig{})
		cl := newClient(t, client.Config{Addr: addr, ManufacturerRoots: f.a.mfrRoots, CustomerCA: f.src.cfg.CustomerCA, ClusterID: testCluster, Certificate: f.src.cfg.Certificate, Timeout: 10 * time.Second, Claims: f.a.claims})
		ts[i] = ClusterTarget{Addr: addr, Member: cl}
	}
	return ts
}

// opener opens the restored cluster on the first target as its crypto
// officer, and counts its calls.
func opener(f *fixture, first string, calls *int) func(context.Context) (Cloner, error) {
	return func(ctx context.Context) (Cloner, error) {
		*calls++
		cfg := f.src.cfg
		cfg.ManufacturerRoots, cfg.Claims = f.a.mfrRoots, f.a.claims
		return cluster.Open(ctx, cluster.Config{Members: []string{first}, Client: cfg, OperatorRoots: f.a.opRoots}, "admin", testPassword)
	}
}

func healths(t *testing.T, ts []ClusterTarget) []api.Health {
	t.Helper()
	hs := make([]api.Health, len(ts))
	for i, tt := range ts {
		h, err := tt.Member.Health(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		hs[i] = h
	}
	return hs
}

func allUnchanged(t *testing.T, ts []ClusterTarget, before []api.Health) {
	t.Helper()
	for i, h := range healths(t, ts) {
		if h.StateDigest != before[i].StateDigest || h.Initialized != before[i].Initialized || h.ClusterInitialized != before[i].ClusterInitialized {
			t.Fatalf("target %s changed: %+v, was %+v", ts[i].Addr, h, before[i])
		}
	}
}

// TestCluster: the first target is restored, the others cloned from it;
// all end with the source's state.
func TestCluster(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, false)
	ts := clusterTargets(t, f, 3)
	calls := 0
	gets := &countingStore{Store: f.st}
	res, err := Cluster(ctx, ClusterRequest{Repo: backup.Repo{Store: gets, Prefix: testPrefix}, ClusterID: testCluster, BackupID: f.m.ID,
		Targets: ts, Open: opener(f, ts[0].Addr, &calls)}, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	want := []Action{Restored, Cloned, Cloned}
	for i, r := range res {
		if r.Action != want[i] || r.Addr != ts[i].Addr || r.Serial == "" {
			t.Fatalf("result %d: %+v, want %s of %s", i, r, want[i], ts[i].Addr)
		}
	}
	src, err := f.src.officer.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The targets hold the source's keys and users, and every change it
	// held, and list one another as members: one state, which differs from
	// the source's in that list.
	hs := healths(t, ts)
	for i, h := range hs {
		if h.StateDigest != hs[0].StateDigest || h.KeyCount != src.KeyCount || h.UserCount != src.UserCount ||
			!cluster.Version(h.StateVersion).Covers(src.StateVersion) || !h.ClusterInitialized || h.ClusterID != testCluster {
			t.Fatalf("target %d: %+v; want the source's state %+v", i, h, src)
		}
	}
	if calls != 1 {
		t.Fatalf("open called %d times", calls)
	}
	// The object is read once whatever the number of targets: checked as
	// it streams into the first.
	if n := gets.images.Load(); n != 1 {
		t.Fatalf("image object read %d times for 3 targets, want 1", n)
	}
}

// countingStore counts the Gets of image objects.
type countingStore struct {
	store.Store
	images atomic.Int32
}

func (s *countingStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if strings.HasSuffix(key, "/"+backup.ImageObject) {
		s.images.Add(1)
	}
	return s.Store.Get(ctx, key)
}

// TestClusterChecksEveryTargetFirst: a refusal of any target, or a dry
// run, leaves every target as it was, the first included.
func TestClusterChecksEveryTargetFirst(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, false)
	other := newNamedAuthorities(t, "acme", "globex")
	f.opts.OperatorRoots.AddCert(other.op.Certificate())

	mismatched := clusterTargets(t, f, 2)
	cl, addr := newTarget(t, f.a, device.ManufactureConfig{Manufacturer: f.a.mfr, Operator: other.op})
	mismatched = append(mismatched, ClusterTarget{Addr: addr, Member: cl})

	notNew := clusterTargets(t, f, 1)
	notNew = append(notNew, ClusterTarget{Addr: f.src.cfg.Addr, Member: f.src.officer})

	for _, tc := range []struct {
		name    string
		targets []ClusterTarget
		dry     bool
		want    error
	}{
		{"third of another operator", mismatched, false, hsmcore.ErrAttestation},
		{"second not new", notNew, false, ErrNotNew},
		{"dry run", clusterTargets(t, f, 3), true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := healths(t, tc.targets)
			calls := 0
			opts := f.opts
			opts.DryRun = tc.dry
			res, err := Cluster(ctx, ClusterRequest{Repo: f.repo(), ClusterID: testCluster, BackupID: f.m.ID,
				Targets: tc.targets, Open: opener(f, tc.targets[0].Addr, &calls)}, opts)
			switch {
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("got %v, want %v", err, tc.want)
			case tc.want == nil && err != nil:
				t.Fatal(err)
			}
			if tc.dry {
				for _, r := range res {
					if r.Action != Checked {
						t.Fatalf("dry run result %+v", r)
					}
				}
			}
			allUnchanged(t, tc.targets, before)
			if calls != 0 {
				t.Fatalf("open called %d times", calls)
			}
		})
	}
}
