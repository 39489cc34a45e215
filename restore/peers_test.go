package restore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
)

// A relay presents another genuine device's certificate (same
// manufacturer and operator), forwards the attestation to a genuine new
// HSM, and terminates TLS itself: the restore is refused before any image
// byte goes to it.
func TestRestoreThroughRelayRefused(t *testing.T) {
	f := newFixture(t, false)
	mc := device.ManufactureConfig{Manufacturer: f.a.mfr, Operator: f.a.op}
	genuine, decoy := hsmtest.Serve(t, mc), hsmtest.Serve(t, mc)
	up := newClient(t, client.Config{Addr: genuine.Addr, ManufacturerRoots: f.a.mfrRoots, Timeout: 10 * time.Second, Claims: f.a.claims})
	relay := hsmtest.NewRelay(t, hsmtest.RelayConfig{Certificate: hsmtest.ImpersonateDevice(t, decoy), Upstream: up})
	before := []hsmtest.State{genuine.State(t), decoy.State(t)}

	target := newClient(t, client.Config{Addr: relay.Addr, ManufacturerRoots: f.a.mfrRoots, Timeout: 10 * time.Second, Claims: f.a.claims})
	if _, err := f.restore(target, f.opts); !errors.Is(err, hsmcore.ErrAttestation) {
		t.Errorf("restore through a relay: got %v, want ErrAttestation", err)
	}
	for _, c := range relay.Calls() {
		t.Errorf("the relay received %s %s with %d body bytes", c.Method, c.Path, c.BodyBytes)
	}
	genuine.AssertUnchanged(t, before[0])
	decoy.AssertUnchanged(t, before[1])
}

// The operator expects serial S for a target; another genuine new HSM of
// matching hardware answers at its address: the restore is refused, the
// target unchanged, in a single restore and in a restore into several.
func TestRestoreSerialPinned(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, false)
	mc := device.ManufactureConfig{Manufacturer: f.a.mfr, Operator: f.a.op}
	expected, other := hsmtest.Serve(t, mc), hsmtest.Serve(t, mc)
	serial := expected.Dev.Identity().Serial
	before := other.State(t)

	opts := f.opts
	opts.Serial = serial
	target := newClient(t, client.Config{Addr: other.Addr, ManufacturerRoots: f.a.mfrRoots, Timeout: 10 * time.Second, Claims: f.a.claims})
	if _, err := f.restore(target, opts); !errors.Is(err, hsmcore.ErrAttestation) {
		t.Fatalf("restore into another HSM than the serial pinned: got %v, want ErrAttestation", err)
	}
	other.AssertUnchanged(t, before)

	// In a restore into several, every target is checked before any
	// changes.
	ts := clusterTargets(t, f, 2)
	ts = append(ts, ClusterTarget{Addr: other.Addr, Member: target, Serial: serial})
	firstBefore := healths(t, ts[:1])
	calls := 0
	_, err := Cluster(ctx, ClusterRequest{Repo: f.repo(), ClusterID: testCluster, BackupID: f.m.ID, Targets: ts, Open: opener(f, ts[0].Addr, &calls)}, f.opts)
	if !errors.Is(err, hsmcore.ErrAttestation) {
		t.Fatalf("restore into several, one not the serial pinned: got %v, want ErrAttestation", err)
	}
	allUnchanged(t, ts[:1], firstBefore)
	other.AssertUnchanged(t, before)
}
