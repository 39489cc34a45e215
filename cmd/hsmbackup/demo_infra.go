package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/server"
	"github.com/hsmbackup/hsmbackup/store"
)

// The demo's infrastructure: HSMs served on loopback, their clients, and
// the store's clean-up.

// demoHSM is an HSM served in-process by hsmcore/server on a loopback
// address, as `hsmbackup hsm serve` would serve it.
type demoHSM struct {
	name string // "A", "B"…
	addr string // host:port
	id   hsmcore.Identity
	stop func() error // shuts the server down and closes the device
}

// serveHSM manufactures HSM name of the demo's class and manufacturer for
// operator op in the workspace, and serves it on 127.0.0.1 with a port of
// its own. The HSM is stopped by cleanUp.
func (d *demo) serveHSM(name string, op *device.Authority) (*demoHSM, error) {
	dir := filepath.Join(d.ws, "hsm-"+strings.ToLower(name))
	dev, claim, err := device.Manufacture(dir, device.ManufactureConfig{
		Class:        demoClass,
		Firmware:     demoFirmware,
		Manufacturer: d.mfr,
		Operator:     op,
	}, device.Options{PasswordIterations: d.opts.PasswordIterations})
	if err != nil {
		return nil, fmt.Errorf("manufacture HSM %s: %w", name, err)
	}
	d.claims.Add(claim)
	addr, stop, err := server.ServeLoopback(server.Config{Device: dev}, "")
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("serve HSM %s: %w", name, err)
	}
	h := &demoHSM{name: name, addr: addr, id: dev.Identity()}
	h.stop = func() error { return errors.Join(stop(), dev.Close()) }
	d.hsms = append(d.hsms, h)
	return h, nil
}

// deviceTarget reaches HSMs whose cluster is not yet initialized, as
// 'hsmbackup cluster init' does: it trusts the device certificate through
// the manufacturer's root, presents no certificate of its own, and holds
// the claim secrets of the demo's HSMs.
func (d *demo) deviceTarget() *target {
	return &target{tls: client.Config{ManufacturerRoots: d.mfrRoots, Claims: d.claims}, device: true}
}

// memberTarget reaches members of the cluster as the commands do with the
// config's cluster entry: mutual TLS with the client certificate from the
// customer CA, which must also have signed the cluster certificate naming
// the demo's cluster; logged in as user.
func (d *demo) memberTarget(user, password string, members ...*demoHSM) *target {
	cert := d.clientCert
	t := &target{
		clusterID: demoClusterID,
		tls:       client.Config{Certificate: &cert, CustomerCA: d.ca.Cert, ClusterID: demoClusterID, Claims: d.claims},
		user:      user,
		password:  func() (string, error) { return password, nil },
	}
	for _, m := range members {
		t.members = append(t.members, m.addr)
	}
	return t
}

// login dials member h as user and logs in.
func (d *demo) login(ctx context.Context, h *demoHSM, user, password string) (*conn, error) {
	t := d.memberTarget(user, password, h)
	cl, err := t.dialOne()
	if err != nil {
		return nil, err
	}
	if _, err := t.login(ctx, cl); err != nil {
		cl.Close()
		return nil, fmt.Errorf("HSM %s: %w", h.name, err)
	}
	return cl, nil
}

// unchanged checks that the HSM behind cl has the state it had before a
// refused restore, and says so.
func (d *demo) unchanged(ctx context.Context, name string, cl *conn, before api.Health) error {
	after, err := cl.Health(ctx)
	if err != nil {
		return err
	}
	if after.StateDigest != before.StateDigest || after.Initialized != before.Initialized ||
		after.ClusterInitialized != before.ClusterInitialized || after.ClusterID != before.ClusterID {
		return fmt.Errorf("HSM %s changed after a refused restore: state digest %s, was %s", name, after.StateDigest, before.StateDigest)
	}
	if after.Initialized || after.ClusterInitialized {
		return fmt.Errorf("HSM %s was not a fresh HSM", name)
	}
	d.out.printf("  HSM %s unchanged: still uninitialized, state digest %s before and after\n", name, short(after.StateDigest))
	return nil
}

// short abbreviates a hex digest for the narration.
func short(hexDigest string) string {
	if len(hexDigest) > 16 {
		return hexDigest[:16] + "…"
	}
	return hexDigest
}

// newRunPrefix returns the prefix of one run's objects in the store:
// unique, so that runs against one store do not collide, and sorted by
// time.
func newRunPrefix(now time.Time) string {
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("hsmbackup-demo/%s-%x/", now.UTC().Format("20060102T150405Z"), b)
}

// deleteObjects deletes every object under the run's prefix and returns
// how many there were. It has a context of its own: it also runs after the
// demo's was cancelled.
func (d *demo) deleteObjects() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var keys []string
	err := d.st.List(ctx, d.prefix, func(oi store.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, k := range keys {
		if err := d.st.Delete(ctx, k); err != nil {
			return 0, err
		}
	}
	return len(keys), nil
}
