package cluster_test

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/internal/testpki"
)

func (e *env) challenge() hsmcore.ChallengeOptions {
	mfr, op := x509.NewCertPool(), x509.NewCertPool()
	mfr.AddCert(e.Mfr.Certificate())
	op.AddCert(e.Op.Certificate())
	return hsmcore.ChallengeOptions{ManufacturerRoots: mfr, OperatorRoots: op,
		Expect: hsmcore.Expectation{Class: "hsm2m.medium", Manufacturer: "acme", Operator: "cloud"}}
}

func (e *env) deviceClient(t *testing.T, addr string) *client.Client {
	t.Helper()
	cl, err := client.New(client.Config{Addr: addr, ManufacturerRoots: e.challenge().ManufacturerRoots, Timeout: 5 * time.Second, Claims: e.Claims})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// TestBootstrap initializes a cluster in one go, grows it by a member,
// and refuses to add a member that is initialized already.
func TestBootstrap(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	a, b := e.Serve(t, nil), e.Serve(t, nil)
	ccfg := e.clientConfig(t)
	bcfg := ccfg
	bcfg.Addr, bcfg.ManufacturerRoots = a.Addr, nil
	st, cert, err := cluster.Bootstrap(ctx, cluster.BootstrapConfig{
		Client: bcfg, Challenge: e.challenge(), Sign: e.CA.CA.SignCSR, Officer: "admin", Password: password,
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.Serial != a.Dev.Identity().Serial || cert.Subject.CommonName != "cluster-1" || !a.Dev.ClusterInitialized() {
		t.Fatalf("bootstrapped %s with %q; initialized %t", st.Serial, cert.Subject.CommonName, a.Dev.ClusterInitialized())
	}
	co, err := cluster.Open(ctx, cluster.Config{Members: []string{a.Addr}, Client: ccfg, OperatorRoots: e.challenge().OperatorRoots}, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	if err := co.AddMember(ctx, b.Addr, cluster.AddOptions{}); err != nil {
		t.Fatal(err)
	}
	if a.Dev.StateDigest() != b.Dev.StateDigest() {
		t.Fatal("the new member differs")
	}
	before := a.Dev.StateDigest()
	if err := co.AddMember(ctx, a.Addr, cluster.AddOptions{}); !errors.Is(err, hsmcore.ErrPermission) || !strings.Contains(err.Error(), "is not a new HSM") {
		t.Fatalf("adding an initialized HSM: %v", err)
	}
	if a.Dev.StateDigest() != before {
		t.Fatal("a refused member changed")
	}

	// A second bootstrap of the same HSM finds no device to trust.
	if _, _, err := cluster.Bootstrap(ctx, cluster.BootstrapConfig{
		Client: bcfg, Challenge: e.challenge(), Sign: e.CA.CA.SignCSR, Officer: "admin", Password: password,
	}); err == nil || a.Dev.StateDigest() != before {
		t.Fatalf("second bootstrap: %v", err)
	}
	if _, _, err := cluster.Bootstrap(ctx, cluster.BootstrapConfig{Client: bcfg, Challenge: e.challenge()}); err == nil || !strings.Contains(err.Error(), "required") {
		t.Fatalf("bootstrap without a signer: %v", err)
	}
}

// TestInitSteps runs the steps apart, as the CLI does, and their
// refusals.
func TestInitSteps(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	h := e.Serve(t, nil)
	pre := e.deviceClient(t, h.Addr)

	// Another operator's HSM is refused before it makes a key.
	other, err := device.NewAuthority(device.Operator, "othercloud")
	if err != nil {
		t.Fatal(err)
	}
	theirs := e.Serve(t, other)
	if _, _, err := cluster.RequestCSR(ctx, e.deviceClient(t, theirs.Addr), "cluster-1", e.challenge()); !errors.Is(err, hsmcore.ErrAttestation) || theirs.Dev.ClusterID() != "" {
		t.Fatalf("another operator's HSM: %v; cluster %q", err, theirs.Dev.ClusterID())
	}

	cert := func(t *testing.T, ca *testpki.CA, csr []byte) *x509.Certificate {
		c, err := x509.ParseCertificate(ca.SignCSR(t, csr))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	csr1, st, err := cluster.RequestCSR(ctx, pre, "cluster-1", e.challenge())
	if err != nil {
		t.Fatal(err)
	}
	if st.Serial != h.Dev.Identity().Serial || len(st.ClusterKeyHash) == 0 {
		t.Fatalf("statement %+v", st)
	}
	// A CSR for another cluster id replaces the first; the first's
	// certificate no longer fits.
	csr2, _, err := cluster.RequestCSR(ctx, pre, "cluster-2", e.challenge())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.Install(ctx, pre, cert(t, e.CA, csr1), e.CA.Cert); err == nil || !strings.Contains(err.Error(), `made its CSR for cluster "cluster-2", but the certificate names "cluster-1"`) {
		t.Fatalf("install for another cluster id: %v", err)
	}
	mallory := testpki.NewCA(t, "mallory")
	if _, err := cluster.Install(ctx, pre, cert(t, mallory, csr2), e.CA.Cert); err == nil || !strings.Contains(err.Error(), "not valid under the customer CA") {
		t.Fatalf("install of another CA's certificate: %v", err)
	}
	if h.Dev.ClusterInitialized() {
		t.Fatal("a refused install changed the HSM")
	}
	if _, err := cluster.Install(ctx, pre, cert(t, e.CA, csr2), e.CA.Cert); err != nil {
		t.Fatal(err)
	}

	ccfg := e.clientConfig(t)
	ccfg.Addr, ccfg.ClusterID = h.Addr, "cluster-2"
	co, err := client.New(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	if err := cluster.Activate(ctx, co, "admin", password); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Activate(ctx, co, "admin2", password); err == nil || !strings.Contains(err.Error(), "create crypto officer admin2") {
		t.Fatalf("second activation: %v", err)
	}

	if _, err := cluster.ParseCSR(csr2, "cluster-1"); err == nil || !strings.Contains(err.Error(), `names "cluster-2", not cluster "cluster-1"`) {
		t.Fatalf("ParseCSR for another id: %v", err)
	}
}

// TestPickMember picks the first healthy member in the cluster, and names
// every one it could not use when none will do: an HSM that presents a
// device certificate is no member, even to a configuration that trusts
// the manufacturer root.
func TestPickMember(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	hsms, cfg := e.threeMembers(t)
	fresh := e.Serve(t, nil)
	cfg.Members = []string{"127.0.0.1:1", fresh.Addr, hsms[1].Addr, hsms[2].Addr}
	p, err := cluster.PickMember(ctx, cfg, cluster.PickOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Client.Close()
	if p.Addr != hsms[1].Addr || p.Health.StateDigest != hsms[1].Dev.StateDigest() {
		t.Fatalf("picked %s, want %s", p.Addr, hsms[1].Addr)
	}
	cfg.Members = []string{"127.0.0.1:1", fresh.Addr}
	if _, err := cluster.PickMember(ctx, cfg, cluster.PickOptions{}); err == nil || !strings.Contains(err.Error(), "cluster cluster-1: no healthy member (127.0.0.1:1: ") || !strings.Contains(err.Error(), fresh.Addr+": health: hsm certificate not trusted") {
		t.Fatalf("no usable member: %v", err)
	}
}

// TestPickMemberDiverged picks the member with the newest state, however
// many members hold an older one; it refuses to choose between members
// that each hold changes the other lacks (a split), listing each one's
// version and counts, unless the member is named; a member that is not
// configured, or not usable, cannot be named.
func TestPickMemberDiverged(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	hsms, cfg := e.threeMembers(t)
	s, err := hsms[2].Dev.Login("alice", password)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.GenerateKeys([]hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256}, {Type: hsmcore.AES, Bits: 128}}); err != nil {
		t.Fatal(err)
	}
	s.Logout()
	// Two members agree on the older state: a majority is no proof of
	// being current.
	p, err := cluster.PickMember(ctx, cfg, cluster.PickOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Client.Close()
	if p.Addr != hsms[2].Addr {
		t.Fatalf("picked %s, want the newest, %s", p.Addr, hsms[2].Addr)
	}
	// A change on the other side too: no member holds every change.
	s, err = hsms[0].Dev.Login("alice", password)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.GenerateKeys([]hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256}}); err != nil {
		t.Fatal(err)
	}
	s.Logout()
	_, err = cluster.PickMember(ctx, cfg, cluster.PickOptions{})
	var de *cluster.DivergedError
	if !errors.Is(err, cluster.ErrDiverged) || !errors.As(err, &de) {
		t.Fatalf("diverged members: %v", err)
	}
	if len(de.Members) != 3 || de.Members[0].Keys != 1 || de.Members[1].Keys != 0 || de.Members[2].Keys != 2 || de.Members[2].Users != 2 || de.Members[2].Addr != hsms[2].Addr ||
		de.Members[2].StateDigest != hsms[2].Dev.StateDigest() || de.Members[0].StateDigest == de.Members[2].StateDigest {
		t.Fatalf("diverged members: %+v", de.Members)
	}
	if want := hsms[2].Addr + ": 2 keys, 2 users, version "; !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "cluster cluster-1: members hold different states (") {
		t.Fatalf("error %q does not contain %q", err, want)
	}

	p, err = cluster.PickMember(ctx, cfg, cluster.PickOptions{Member: hsms[2].Addr})
	if err != nil {
		t.Fatal(err)
	}
	p.Client.Close()
	if p.Addr != hsms[2].Addr || p.Health.KeyCount != 2 || p.Health.UserCount != 2 {
		t.Fatalf("picked %s %+v, want %s", p.Addr, p.Health, hsms[2].Addr)
	}
	if _, err := cluster.PickMember(ctx, cfg, cluster.PickOptions{Member: "127.0.0.1:1"}); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1 is not one of its members") {
		t.Fatalf("member not configured: %v", err)
	}
	cfg.Members = append(cfg.Members, "127.0.0.1:1")
	if _, err := cluster.PickMember(ctx, cfg, cluster.PickOptions{Member: "127.0.0.1:1"}); err == nil || !strings.Contains(err.Error(), "member 127.0.0.1:1: ") {
		t.Fatalf("member down: %v", err)
	}
}
