package client_test

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
)

// rogue serves, at an address of its own, the TLS identity of a genuine,
// uninitialized HSM of another operator, claiming to be a member of
// cluster-1, and records what it receives.
func rogue(t *testing.T, e *hsmtest.Env) (*hsmtest.Relay, *hsmtest.Daemon) {
	t.Helper()
	op, err := device.NewAuthority(device.Operator, "other-operator")
	if err != nil {
		t.Fatal(err)
	}
	stranger := e.Serve(t, op)
	r := hsmtest.NewRelay(t, hsmtest.RelayConfig{
		Certificate: hsmtest.ImpersonateDevice(t, stranger),
		Health:      &api.Health{Identity: stranger.Dev.Identity(), ClusterID: "cluster-1", ClusterInitialized: true, Initialized: true},
	})
	return r, stranger
}

// A client that trusts both the customer CA and the manufacturer root
// (to reach HSMs new or initialized) sends passwords only to a member of
// the cluster: a genuine device certificate is not enough.
func TestPasswordGoesOnlyToTheCluster(t *testing.T) {
	e := hsmtest.NewEnv(t)
	ctx := context.Background()
	r, stranger := rogue(t, e)
	before := stranger.State(t)
	cert := e.CA.Client(t, "app")
	mfr := x509.NewCertPool()
	mfr.AddCert(e.Mfr.Certificate())
	cl, err := client.New(client.Config{Addr: r.Addr, Certificate: &cert, CustomerCA: e.CA.Cert, ClusterID: "cluster-1",
		ManufacturerRoots: mfr, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// What proves nothing secret is answered by the device.
	if h, err := cl.Health(ctx); err != nil || h.ClusterID != "cluster-1" {
		t.Fatalf("health: %+v, %v", h, err)
	}
	if _, err := cl.Login(ctx, "admin", "the officer's password"); !errors.Is(err, client.ErrDeviceOnly) {
		t.Errorf("login: got %v, want ErrDeviceOnly", err)
	}
	if err := cl.Initialize(ctx, "admin", "the officer's password"); !errors.Is(err, client.ErrDeviceOnly) {
		t.Errorf("initialize: got %v, want ErrDeviceOnly", err)
	}
	for _, c := range r.Calls() {
		t.Errorf("the device received %s %s with %d body bytes", c.Method, c.Path, c.BodyBytes)
	}
	stranger.AssertUnchanged(t, before)
}

// A client that trusts devices only (no customer CA) sends no password
// and no image without a pinned device, and opens no connection for them.
func TestDeviceClientSendsNoSecret(t *testing.T) {
	e := hsmtest.NewEnv(t)
	ctx := context.Background()
	r, stranger := rogue(t, e)
	before := stranger.State(t)
	mfr := x509.NewCertPool()
	mfr.AddCert(e.Mfr.Certificate())
	cl, err := client.New(client.Config{Addr: r.Addr, ManufacturerRoots: mfr, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Login(ctx, "admin", "the officer's password"); !errors.Is(err, client.ErrDeviceOnly) || !errors.Is(err, client.ErrUntrusted) {
		t.Errorf("login: got %v, want ErrUntrusted and ErrDeviceOnly", err)
	}
	if _, err := cl.ImportImage(ctx, strings.NewReader("an image")); !errors.Is(err, client.ErrDeviceOnly) {
		t.Errorf("import image: got %v, want ErrDeviceOnly", err)
	}
	if n := r.Connections(); n != 0 {
		t.Errorf("the device got %d connections", n)
	}
	stranger.AssertUnchanged(t, before)
}
