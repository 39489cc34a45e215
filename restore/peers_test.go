package restore

import (
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
	up := newClient(t, client.Config{Addr: genuine.Addr, ManufacturerRoots: f.a.mfrRoots, Timeout: 10 * time.Second})
	relay := hsmtest.NewRelay(t, hsmtest.RelayConfig{Certificate: hsmtest.ImpersonateDevice(t, decoy), Upstream: up})
	before := []hsmtest.State{genuine.State(t), decoy.State(t)}

	target := newClient(t, client.Config{Addr: relay.Addr, ManufacturerRoots: f.a.mfrRoots, Timeout: 10 * time.Second})
	if _, err := f.restore(target, f.opts); !errors.Is(err, hsmcore.ErrAttestation) {
		t.Errorf("restore through a relay: got %v, want ErrAttestation", err)
	}
	for _, c := range relay.Calls() {
		t.Errorf("the relay received %s %s with %d body bytes", c.Method, c.Path, c.BodyBytes)
	}
	genuine.AssertUnchanged(t, before[0])
	decoy.AssertUnchanged(t, before[1])
}
