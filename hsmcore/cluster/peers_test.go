package cluster_test

// Attacks on who receives the cluster's credentials and images: a genuine
// device certificate at a member's address, a relay in front of a new HSM,
// another genuine HSM where a new one was expected. Each is refused with
// nothing sent, and leaves every HSM as it was.

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
)

// oneMember initializes a cluster on one HSM (officer "admin") and returns
// it with a cluster configuration whose client trusts both the customer CA
// and the manufacturer root, as the CLI's configuration does.
func (e *env) oneMember(t *testing.T) (*hsmtest.Daemon, cluster.Config) {
	t.Helper()
	first := e.Serve(t, nil)
	first.InstallCluster(e.CA, "cluster-1")
	if err := first.Dev.Initialize("admin", password); err != nil {
		t.Fatal(err)
	}
	opRoots := x509.NewCertPool()
	opRoots.AddCert(e.Op.Certificate())
	return first, cluster.Config{Members: []string{first.Addr}, Client: e.clientConfig(t), OperatorRoots: opRoots}
}

func noCalls(t *testing.T, r *hsmtest.Relay, who string) {
	t.Helper()
	for _, c := range r.Calls() {
		t.Errorf("%s received %s %s with %d body bytes", who, c.Method, c.Path, c.BodyBytes)
	}
}

// A genuine HSM of another operator, uninitialized, answers at a member's
// address and claims to be a member of the cluster. The cluster client
// trusts the customer CA and the manufacturer root; it must not take the
// device certificate for a member, and sends it no password.
func TestOpenSendsNoPasswordToADevice(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first, cfg := e.oneMember(t)
	otherOp, err := device.NewAuthority(device.Operator, "other-operator")
	if err != nil {
		t.Fatal(err)
	}
	stranger := e.Serve(t, otherOp)
	rogue := hsmtest.NewRelay(t, hsmtest.RelayConfig{
		Certificate: hsmtest.ImpersonateDevice(t, stranger),
		Health: &api.Health{Identity: stranger.Dev.Identity(), ClusterID: "cluster-1", ClusterInitialized: true,
			Initialized: true, StateDigest: first.Dev.StateDigest()},
	})
	firstBefore, strangerBefore := first.State(t), stranger.State(t)

	cfg.Members = append(cfg.Members, rogue.Addr)
	co, err := cluster.Open(ctx, cfg, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	noCalls(t, rogue, "the device posing as a member")
	for _, m := range co.Members(ctx) {
		if m.Addr == rogue.Addr && (m.Healthy || m.InSync) {
			t.Errorf("the device posing as a member is in use: %+v", m)
		}
	}
	first.AssertUnchanged(t, firstBefore)
	stranger.AssertUnchanged(t, strangerBefore)
}

// A relay presents another genuine device's certificate (of the same
// manufacturer and operator), forwards the attestation to the genuine new
// HSM, and terminates TLS itself. AddMember must refuse it before any
// image leaves the cluster.
func TestAddMemberThroughRelayRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first, cfg := e.oneMember(t)
	co, err := cluster.Open(ctx, cfg, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	target, decoy := e.Serve(t, nil), e.Serve(t, nil)
	relay := hsmtest.NewRelay(t, hsmtest.RelayConfig{
		Certificate: hsmtest.ImpersonateDevice(t, decoy),
		Upstream:    e.deviceClient(t, target.Addr),
	})
	states := []hsmtest.State{first.State(t), target.State(t), decoy.State(t)}

	err = co.AddMember(ctx, relay.Addr, cluster.AddOptions{})
	if !errors.Is(err, hsmcore.ErrAttestation) {
		t.Errorf("add member through a relay: got %v, want ErrAttestation", err)
	}
	noCalls(t, relay, "the relay")
	if n := len(co.Members(ctx)); n != 1 {
		t.Errorf("the cluster has %d members after a refused add", n)
	}
	for i, h := range []*hsmtest.Daemon{first, target, decoy} {
		h.AssertUnchanged(t, states[i])
	}
}

// The relay lets the first connection through to the genuine new HSM,
// so the attestation comes from it over a connection to it, and
// terminates every later connection itself with another genuine device's
// certificate. Nothing may go to those: every connection that carries the
// image, or the cluster's credentials, must reach the attested HSM or a
// member.
func TestAddMemberPinsEveryConnection(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first, cfg := e.oneMember(t)
	co, err := cluster.Open(ctx, cfg, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	target, decoy := e.Serve(t, nil), e.Serve(t, nil)
	relay := hsmtest.NewRelay(t, hsmtest.RelayConfig{
		Certificate: hsmtest.ImpersonateDevice(t, decoy),
		Passthrough: 1, PassthroughAddr: target.Addr,
	})
	states := []hsmtest.State{first.State(t), target.State(t), decoy.State(t)}

	err = co.AddMember(ctx, relay.Addr, cluster.AddOptions{})
	if !errors.Is(err, client.ErrUntrusted) {
		t.Errorf("add member through a relay that switches connections: got %v, want ErrUntrusted", err)
	}
	if relay.Connections() < 2 {
		t.Fatalf("the relay saw %d connections; the test needs the import on a connection of its own", relay.Connections())
	}
	noCalls(t, relay, "the relay")
	for i, h := range []*hsmtest.Daemon{first, target, decoy} {
		h.AssertUnchanged(t, states[i])
	}
}

// The operator expects HSM serial S at addr; another genuine, new HSM of
// the same class, manufacturer and operator answers there. It is refused
// and left unchanged; the HSM with serial S is accepted.
func TestAddMemberSerialPinned(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first, cfg := e.oneMember(t)
	co, err := cluster.Open(ctx, cfg, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	expected, other := e.Serve(t, nil), e.Serve(t, nil)
	serial := expected.Dev.Identity().Serial
	states := []hsmtest.State{first.State(t), other.State(t)}

	err = co.AddMember(ctx, other.Addr, cluster.AddOptions{Serial: serial})
	if !errors.Is(err, hsmcore.ErrAttestation) {
		t.Fatalf("another HSM than the serial pinned: got %v, want ErrAttestation", err)
	}
	first.AssertUnchanged(t, states[0])
	other.AssertUnchanged(t, states[1])
	if err := co.AddMember(ctx, expected.Addr, cluster.AddOptions{Serial: serial}); err != nil {
		t.Fatalf("the HSM of the serial pinned: %v", err)
	}
	if expected.Dev.StateDigest() != first.Dev.StateDigest() {
		t.Fatal("the added member differs from the cluster")
	}
}

// The operator sets up a new HSM through a relay that forwards the
// attestation to the genuine HSM but terminates TLS itself, with another
// genuine device's certificate: the client binds to the attested HSM
// before it asks for a claim nonce, so the relay receives no request, no
// proof is made for it, and neither HSM changes.
func TestClaimProofNotMadeThroughRelay(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	target, decoy := e.Serve(t, nil), e.Serve(t, nil)
	relay := hsmtest.NewRelay(t, hsmtest.RelayConfig{
		Certificate: hsmtest.ImpersonateDevice(t, decoy),
		Upstream:    e.deviceClient(t, target.Addr),
	})
	states := []hsmtest.State{target.State(t), decoy.State(t)}
	pre := e.deviceClient(t, relay.Addr) // holds the claims of both
	_, _, err := cluster.RequestCSR(ctx, pre, "cluster-1", e.challenge())
	if !errors.Is(err, hsmcore.ErrAttestation) {
		t.Fatalf("cluster CSR through a relay: %v, want ErrAttestation", err)
	}
	noCalls(t, relay, "the relay")
	for i, h := range []*hsmtest.Daemon{target, decoy} {
		h.AssertUnchanged(t, states[i])
	}
}
