package cluster_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/server"
	"github.com/hsmbackup/hsmbackup/internal/testpki"
)

const password = "correct horse battery"

type env struct {
	mfr, op *hsmcore.Authority
	ca      *testpki.CA
}

func newEnv(t *testing.T) *env {
	t.Helper()
	mfr, err := hsmcore.NewAuthority(hsmcore.Manufacturer, "acme")
	if err != nil {
		t.Fatal(err)
	}
	op, err := hsmcore.NewAuthority(hsmcore.Operator, "cloud")
	if err != nil {
		t.Fatal(err)
	}
	return &env{mfr: mfr, op: op, ca: testpki.NewCA(t, "customer root CA")}
}

// hsm is a device directory served on a fixed loopback address, which can
// be stopped and started again like a rebooted appliance.
type hsm struct {
	t      *testing.T
	dir    string
	addr   string
	dev    *hsmcore.Device
	cancel context.CancelFunc
	done   chan error
}

func (e *env) manufacture(t *testing.T, op *hsmcore.Authority) *hsm {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "hsm")
	d, err := hsmcore.Manufacture(dir, hsmcore.ManufactureConfig{Class: "hsm2m.medium", Firmware: "2.1.0", Manufacturer: e.mfr, Operator: op}, hsmcore.TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	h := &hsm{t: t, dir: dir}
	h.start()
	t.Cleanup(h.stop)
	return h
}

func (h *hsm) start() {
	h.t.Helper()
	d, err := hsmcore.Open(h.dir, hsmcore.TestOptions())
	if err != nil {
		h.t.Fatal(err)
	}
	addr := h.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		h.t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	srv, _ := server.New(server.Config{Device: d})
	ctx, cancel := context.WithCancel(context.Background())
	h.dev, h.cancel, h.done = d, cancel, make(chan error, 1)
	go func() { h.done <- srv.Serve(ctx, ln) }()
}

func (h *hsm) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	<-h.done
	h.dev.Close()
	h.cancel = nil
}

func (e *env) clientConfig(t *testing.T) client.Config {
	cert := e.ca.Client(t, "app")
	roots := x509.NewCertPool()
	roots.AddCert(e.mfr.Certificate())
	return client.Config{Certificate: &cert, CustomerCA: e.ca.Cert, ClusterID: "cluster-1", ManufacturerRoots: roots, Timeout: 5 * time.Second}
}

// threeMembers initializes a cluster on one HSM (officer "admin", crypto
// user "alice") and clones two more members from it.
func (e *env) threeMembers(t *testing.T) ([]*hsm, cluster.Config) {
	t.Helper()
	ctx := context.Background()
	first := e.manufacture(t, e.op)
	csr, err := first.dev.ClusterCSR("cluster-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := first.dev.InitializeCluster(e.ca.SignCSR(t, csr), e.ca.Cert.Raw); err != nil {
		t.Fatal(err)
	}
	if err := first.dev.Initialize("admin", password); err != nil {
		t.Fatal(err)
	}
	opRoots := x509.NewCertPool()
	opRoots.AddCert(e.op.Certificate())
	cfg := cluster.Config{Members: []string{first.addr}, Client: e.clientConfig(t), OperatorRoots: opRoots}
	co, err := cluster.Open(ctx, cfg, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	if err := co.CreateUser(ctx, "alice", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	hsms := []*hsm{first}
	for range 2 {
		h := e.manufacture(t, e.op)
		if err := co.AddMember(ctx, h.addr); err != nil {
			t.Fatal(err)
		}
		hsms = append(hsms, h)
		cfg.Members = append(cfg.Members, h.addr)
	}
	return hsms, cfg
}

func digests(hsms []*hsm) []string {
	var out []string
	for _, h := range hsms {
		out = append(out, h.dev.StateDigest())
	}
	return out
}

func assertInSync(t *testing.T, hsms []*hsm) {
	t.Helper()
	d := digests(hsms)
	for i := range d {
		if d[i] != d[0] {
			t.Fatalf("members differ: %v", d)
		}
	}
}

func TestThreeMembersStayInSync(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	hsms, cfg := e.threeMembers(t)
	assertInSync(t, hsms)
	cu, err := cluster.Open(ctx, cfg, "alice", password)
	if err != nil {
		t.Fatal(err)
	}
	defer cu.Close()
	keys, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{
		{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true},
		{Type: hsmcore.EC, Curve: "P-384", Sign: true, Verify: true},
		{Type: hsmcore.AES, Bits: 128, Label: "to delete"},
	})
	if err != nil {
		t.Fatal(err)
	}
	assertInSync(t, hsms)
	// Reads are spread: encrypt on one member, decrypt on the next.
	for range 6 {
		ct, err := cu.Encrypt(ctx, keys[0].Handle, []byte("m"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := cu.Decrypt(ctx, keys[0].Handle, ct, nil); err != nil || string(pt) != "m" {
			t.Fatalf("decrypt on another member: %v", err)
		}
	}
	if err := cu.DeleteKey(ctx, keys[2].Handle); err != nil {
		t.Fatal(err)
	}
	label := "renamed"
	if err := cu.SetAttributes(ctx, keys[0].Handle, hsmcore.AttributeChange{Label: &label}); err != nil {
		t.Fatal(err)
	}
	if err := cu.ChangePassword(ctx, "a new password, long"); err != nil {
		t.Fatal(err)
	}
	assertInSync(t, hsms)
	for _, h := range hsms {
		s, err := h.dev.Login("alice", "a new password, long")
		if err != nil {
			t.Fatalf("new password on %s: %v", h.addr, err)
		}
		ks, _ := s.Keys()
		if len(ks) != 2 || ks[0].Label != "renamed" {
			t.Fatalf("member %s holds %+v", h.addr, ks)
		}
	}
	// A refused write changes no member.
	if err := cu.CreateUser(ctx, "mallory", hsmcore.CryptoOfficer, password); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("crypto user creating a user: got %v, want ErrPermission", err)
	}
	assertInSync(t, hsms)
}

func TestKilledMemberIsSkippedThenResynced(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	hsms, cfg := e.threeMembers(t)
	co, err := cluster.Open(ctx, cfg, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	cu, err := cluster.Open(ctx, cfg, "alice", password)
	if err != nil {
		t.Fatal(err)
	}
	defer cu.Close()

	hsms[1].stop()
	keys, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true}})
	if err != nil {
		t.Fatalf("write with a member down: %v", err)
	}
	if err := co.CreateUser(ctx, "bob", hsmcore.CryptoUser, password); err != nil {
		t.Fatalf("write with a member down: %v", err)
	}
	for range 4 {
		if _, err := cu.Encrypt(ctx, keys[0].Handle, []byte("m"), nil); err != nil {
			t.Fatalf("read with a member down: %v", err)
		}
	}
	if hsms[0].dev.StateDigest() != hsms[2].dev.StateDigest() {
		t.Fatal("the live members differ")
	}

	hsms[1].start()
	if hsms[1].dev.StateDigest() == hsms[0].dev.StateDigest() {
		t.Fatal("the member that was down did not miss the writes")
	}
	// A crypto user's cluster sees the stale member and leaves it out.
	if err := cu.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	for _, m := range cu.Members(ctx) {
		if m.Addr == hsms[1].addr && m.InSync {
			t.Fatal("a crypto user's cluster uses a stale member")
		}
	}
	// An officer's cluster re-syncs it by image.
	if err := co.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	assertInSync(t, hsms)
	if _, err := hsms[1].dev.Login("bob", password); err != nil {
		t.Fatalf("re-synced member lacks the user made while it was down: %v", err)
	}
}

func TestAddMemberRefusesOtherHardware(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, cfg := e.threeMembers(t)
	co, err := cluster.Open(ctx, cfg, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	other, err := hsmcore.NewAuthority(hsmcore.Operator, "cloud") // same name, other AKBK
	if err != nil {
		t.Fatal(err)
	}
	stranger := e.manufacture(t, other)
	before := stranger.dev.StateDigest()
	if err := co.AddMember(ctx, stranger.addr); !errors.Is(err, hsmcore.ErrAttestation) {
		t.Fatalf("got %v, want ErrAttestation", err)
	}
	if stranger.dev.StateDigest() != before || stranger.dev.Initialized() {
		t.Fatal("the refused HSM changed")
	}
}
