// Package hsmtest serves HSMs in-process for the tests of the daemon and
// the cluster client: real TLS on loopback, a device directory that can be
// stopped and started again like a rebooted appliance.
package hsmtest

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/server"
	"github.com/hsmbackup/hsmbackup/internal/testpki"
)

// Env is one manufacturer ("acme"), one operator ("cloud") and one
// customer CA.
type Env struct {
	Mfr, Op *hsmcore.Authority
	CA      *testpki.CA
}

// NewEnv makes the authorities and the customer CA.
func NewEnv(tb testing.TB) *Env {
	tb.Helper()
	mfr, err := hsmcore.NewAuthority(hsmcore.Manufacturer, "acme")
	if err != nil {
		tb.Fatal(err)
	}
	op, err := hsmcore.NewAuthority(hsmcore.Operator, "cloud")
	if err != nil {
		tb.Fatal(err)
	}
	return &Env{Mfr: mfr, Op: op, CA: testpki.NewCA(tb, "customer root CA")}
}

// Daemon is an HSM served on a loopback address.
type Daemon struct {
	tb     testing.TB
	Dir    string
	Addr   string
	Dev    *hsmcore.Device // nil while stopped
	cancel context.CancelFunc
	done   chan error
}

// Serve manufactures an hsm2m.medium HSM of e's manufacturer and the given
// operator (nil: e's), serves it, and stops it when the test ends.
func (e *Env) Serve(tb testing.TB, op *hsmcore.Authority) *Daemon {
	tb.Helper()
	if op == nil {
		op = e.Op
	}
	dir := filepath.Join(tb.TempDir(), "hsm")
	d, err := hsmcore.Manufacture(dir, hsmcore.ManufactureConfig{Class: "hsm2m.medium", Firmware: "2.1.0", Manufacturer: e.Mfr, Operator: op}, hsmcore.TestOptions())
	if err != nil {
		tb.Fatal(err)
	}
	d.Close()
	h := &Daemon{tb: tb, Dir: dir}
	h.Start()
	tb.Cleanup(h.Stop)
	return h
}

// Start opens the device and serves it, on the address it had before if it
// had one.
func (h *Daemon) Start() {
	h.tb.Helper()
	d, err := hsmcore.Open(h.Dir, hsmcore.TestOptions())
	if err != nil {
		h.tb.Fatal(err)
	}
	addr := h.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		h.tb.Fatal(err)
	}
	h.Addr = ln.Addr().String()
	srv, err := server.New(server.Config{Device: d})
	if err != nil {
		h.tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.Dev, h.cancel, h.done = d, cancel, make(chan error, 1)
	go func() { h.done <- srv.Serve(ctx, ln) }()
}

// Stop shuts the daemon down and closes the device.
func (h *Daemon) Stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	if err := <-h.done; err != nil {
		h.tb.Errorf("serve %s: %v", h.Addr, err)
	}
	h.Dev.Close()
	h.cancel, h.Dev = nil, nil
}
