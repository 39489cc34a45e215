package cluster_test

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
)

const password = "correct horse battery"

type env struct{ *hsmtest.Env }

func newEnv(t *testing.T) *env { return &env{hsmtest.NewEnv(t)} }

func (e *env) clientConfig(t *testing.T) client.Config {
	cert := e.CA.Client(t, "app")
	roots := x509.NewCertPool()
	roots.AddCert(e.Mfr.Certificate())
	return client.Config{Certificate: &cert, CustomerCA: e.CA.Cert, ClusterID: "cluster-1", ManufacturerRoots: roots, Timeout: 5 * time.Second, Claims: e.Claims}
}

// threeMembers initializes a cluster on one HSM (officer "admin", crypto
// user "alice") and clones two more members from it.
func (e *env) threeMembers(t *testing.T) ([]*hsmtest.Daemon, cluster.Config) {
	t.Helper()
	ctx := context.Background()
	first := e.Serve(t, nil)
	first.InstallCluster(e.CA, "cluster-1")
	if err := first.Dev.Initialize("admin", password); err != nil {
		t.Fatal(err)
	}
	opRoots := x509.NewCertPool()
	opRoots.AddCert(e.Op.Certificate())
	cfg := cluster.Config{Members: []string{first.Addr}, Client: e.clientConfig(t), OperatorRoots: opRoots}
	co, err := cluster.Open(ctx, cfg, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	if err := co.CreateUser(ctx, "alice", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	hsms := []*hsmtest.Daemon{first}
	for range 2 {
		h := e.Serve(t, nil)
		if err := co.AddMember(ctx, h.Addr, cluster.AddOptions{}); err != nil {
			t.Fatal(err)
		}
		hsms = append(hsms, h)
		cfg.Members = append(cfg.Members, h.Addr)
	}
	return hsms, cfg
}

func digests(hsms []*hsmtest.Daemon) []string {
	var out []string
	for _, h := range hsms {
		out = append(out, h.Dev.StateDigest())
	}
	return out
}

func assertInSync(t *testing.T, hsms []*hsmtest.Daemon) {
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
		s, err := h.Dev.Login("alice", "a new password, long")
		if err != nil {
			t.Fatalf("new password on %s: %v", h.Addr, err)
		}
		ks, _ := s.Keys()
		if len(ks) != 2 || ks[0].Label != "renamed" {
			t.Fatalf("member %s holds %+v", h.Addr, ks)
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

	hsms[1].Stop()
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
	if hsms[0].Dev.StateDigest() != hsms[2].Dev.StateDigest() {
		t.Fatal("the live members differ")
	}

	hsms[1].Start()
	if hsms[1].Dev.StateDigest() == hsms[0].Dev.StateDigest() {
		t.Fatal("the member that was down did not miss the writes")
	}
	// A crypto user's cluster sees the stale member and leaves it out.
	if err := cu.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	for _, m := range cu.Members(ctx) {
		if m.Addr == hsms[1].Addr && m.InSync {
			t.Fatal("a crypto user's cluster uses a stale member")
		}
	}
	// An officer's cluster re-syncs it by image.
	if err := co.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	assertInSync(t, hsms)
	if _, err := hsms[1].Dev.Login("bob", password); err != nil {
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
	other, err := device.NewAuthority(device.Operator, "cloud") // same name, other AKBK
	if err != nil {
		t.Fatal(err)
	}
	stranger := e.Serve(t, other)
	before := stranger.Dev.StateDigest()
	if err := co.AddMember(ctx, stranger.Addr, cluster.AddOptions{}); !errors.Is(err, hsmcore.ErrAttestation) {
		t.Fatalf("got %v, want ErrAttestation", err)
	}
	if stranger.Dev.StateDigest() != before || stranger.Dev.Initialized() {
		t.Fatal("the refused HSM changed")
	}
}

// Wrong credentials are reported as such, not as a vague "no member".
func TestOpenReportsWhyNoMemberServes(t *testing.T) {
	e := newEnv(t)
	_, cfg := e.threeMembers(t)
	_, err := cluster.Open(context.Background(), cfg, "admin", "not the password")
	if !errors.Is(err, cluster.ErrNoMember) || !errors.Is(err, hsmcore.ErrAuth) {
		t.Fatalf("got %v, want ErrNoMember wrapping ErrAuth", err)
	}
}
