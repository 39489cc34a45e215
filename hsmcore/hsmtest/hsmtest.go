// Package hsmtest serves HSMs in-process for tests: real TLS on loopback,
// a device directory that can be stopped and started again like a rebooted
// appliance.
package hsmtest

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/server"
	"github.com/hsmbackup/hsmbackup/internal/testpki"
)

// Env is one manufacturer ("acme"), one operator ("cloud") and one
// customer CA.
type Env struct {
	Mfr, Op *device.Authority
	CA      *testpki.CA
	// Claims are the claim secrets of the HSMs e.Serve made, for the
	// client configurations that set new HSMs up (not safe for Serve and
	// a client's use at the same time).
	Claims hsmcore.Claims
}

// NewEnv makes the authorities and the customer CA.
func NewEnv(tb testing.TB) *Env {
	tb.Helper()
	mfr, err := device.NewAuthority(device.Manufacturer, "acme")
	if err != nil {
		tb.Fatal(err)
	}
	op, err := device.NewAuthority(device.Operator, "cloud")
	if err != nil {
		tb.Fatal(err)
	}
	return &Env{Mfr: mfr, Op: op, CA: testpki.NewCA(tb, "customer root CA"), Claims: hsmcore.Claims{}}
}

// Daemon is an HSM served on a loopback address.
type Daemon struct {
	tb    testing.TB
	Dir   string
	Addr  string
	Claim hsmcore.Claim  // the HSM's claim secret, from its manufacture
	Dev   *device.Device // nil while stopped
	stop  func() error   // nil while stopped
}

// Serve manufactures an hsm2m.medium HSM of e's manufacturer and the given
// operator (nil: e's), serves it, and stops it when the test ends. Its
// claim secret joins e.Claims.
func (e *Env) Serve(tb testing.TB, op *device.Authority) *Daemon {
	tb.Helper()
	if op == nil {
		op = e.Op
	}
	h := Serve(tb, device.ManufactureConfig{Manufacturer: e.Mfr, Operator: op})
	e.Claims.Add(h.Claim)
	return h
}

// Serve manufactures an HSM as cfg says (zero Class and Firmware:
// hsm2m.medium, 2.1.0), serves it, and stops it when the test ends.
func Serve(tb testing.TB, cfg device.ManufactureConfig) *Daemon {
	tb.Helper()
	if cfg.Class == "" {
		cfg.Class = "hsm2m.medium"
	}
	if cfg.Firmware == "" {
		cfg.Firmware = "2.1.0"
	}
	dir := filepath.Join(tb.TempDir(), "hsm")
	d, claim, err := device.Manufacture(dir, cfg, device.TestOptions())
	if err != nil {
		tb.Fatal(err)
	}
	d.Close()
	h := &Daemon{tb: tb, Dir: dir, Claim: claim}
	h.Start()
	tb.Cleanup(h.Stop)
	return h
}

// Start opens the device and serves it, on the address it had before if it
// had one.
func (h *Daemon) Start() {
	h.tb.Helper()
	d, err := device.Open(h.Dir, device.TestOptions())
	if err != nil {
		h.tb.Fatal(err)
	}
	addr, stop, err := server.ServeLoopback(server.Config{Device: d}, h.Addr)
	if err != nil {
		d.Close()
		h.tb.Fatal(err)
	}
	h.Addr, h.Dev, h.stop = addr, d, stop
}

// Stop shuts the daemon down and closes the device.
func (h *Daemon) Stop() {
	if h.stop == nil {
		return
	}
	if err := h.stop(); err != nil {
		h.tb.Errorf("serve %s: %v", h.Addr, err)
	}
	h.Dev.Close()
	h.stop, h.Dev = nil, nil
}

// InitCluster initializes the cluster of the uninitialized HSM at addr,
// whose claim secret is claim, as a customer would, with
// cluster.Bootstrap: over the wire it trusts the device through mfrRoots,
// attests it against mfrRoots and opRoots (any identity they certify),
// gets the cluster CSR for clusterID, has ca sign it and installs it. Then
// it creates the first crypto officer, officer, with password. It returns
// a client configuration for the cluster, with a client certificate from
// ca.
func InitCluster(tb testing.TB, addr string, claim hsmcore.Claim, mfrRoots, opRoots *x509.CertPool, ca *testpki.CA, clusterID, officer, password string) client.Config {
	tb.Helper()
	cert := ca.Client(tb, "test-client")
	cfg := client.Config{Addr: addr, Certificate: &cert, CustomerCA: ca.Cert, ClusterID: clusterID, Timeout: 10 * time.Second}
	bc := cfg
	bc.Claims = hsmcore.Claims{}
	bc.Claims.Add(claim)
	_, _, err := cluster.Bootstrap(context.Background(), cluster.BootstrapConfig{
		Client:    bc,
		Challenge: hsmcore.ChallengeOptions{ManufacturerRoots: mfrRoots, OperatorRoots: opRoots, Certified: true},
		Sign:      ca.CA.SignCSR,
		Officer:   officer,
		Password:  password,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// InitCluster initializes the cluster of the uninitialized HSM h (see
// the function InitCluster), trusting e's manufacturer and operator.
func (e *Env) InitCluster(tb testing.TB, h *Daemon, clusterID, officer, password string) client.Config {
	tb.Helper()
	return InitCluster(tb, h.Addr, h.Claim, pool(e.Mfr), pool(e.Op), e.CA, clusterID, officer, password)
}

func pool(a *device.Authority) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(a.Certificate())
	return p
}

// Proof returns a claim proof for op on object, made as the holder of h's
// claim secret with a nonce from its device, for calls made in-process.
func (h *Daemon) Proof(op, object string) *hsmcore.ClaimProof {
	h.tb.Helper()
	nonce, err := h.Dev.ClaimNonce()
	if err != nil {
		h.tb.Fatal(err)
	}
	p := h.Claim.Prove(nonce, op, object)
	return &p
}

// InstallCluster makes h's device the first member of cluster id, in
// process: its cluster CSR, signed by ca, installed, as the claim holder.
func (h *Daemon) InstallCluster(ca *testpki.CA, id string) {
	h.tb.Helper()
	csr, err := h.Dev.ClusterCSR(id, h.Proof(hsmcore.ClaimCSR, id))
	if err != nil {
		h.tb.Fatal(err)
	}
	cert := ca.SignCSR(h.tb, csr)
	if err := h.Dev.InitializeCluster(cert, ca.Cert.Raw, h.Proof(hsmcore.ClaimInit, hsmcore.ClusterInitObject(cert, ca.Cert.Raw))); err != nil {
		h.tb.Fatal(err)
	}
}

// NewCluster serves n HSMs of e's and makes them cluster id, as a
// customer would over the wire: the first initialized (officer "admin"),
// crypto user "alice" created, the others added by the cluster client.
// Both users have password. It returns the HSMs and a configuration whose
// client trusts the customer CA and e's roots and holds e's claims.
func (e *Env) NewCluster(tb testing.TB, id string, n int, password string) ([]*Daemon, cluster.Config) {
	tb.Helper()
	ctx := context.Background()
	first := e.Serve(tb, nil)
	cc := e.InitCluster(tb, first, id, "admin", password)
	cc.ManufacturerRoots, cc.Claims = pool(e.Mfr), e.Claims
	cfg := cluster.Config{Members: []string{first.Addr}, Client: cc, OperatorRoots: pool(e.Op)}
	co, err := cluster.Open(ctx, cfg, "admin", password)
	if err != nil {
		tb.Fatal(err)
	}
	defer co.Close()
	if err := co.CreateUser(ctx, "alice", hsmcore.CryptoUser, password); err != nil {
		tb.Fatal(err)
	}
	hsms := []*Daemon{first}
	for range n - 1 {
		h := e.Serve(tb, nil)
		if err := co.AddMember(ctx, h.Addr, cluster.AddOptions{}); err != nil {
			tb.Fatal(err)
		}
		hsms = append(hsms, h)
		cfg.Members = append(cfg.Members, h.Addr)
	}
	return hsms, cfg
}
