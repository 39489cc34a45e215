package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	hsmcluster "github.com/hsmbackup/hsmbackup/hsmcore/cluster"
)

// threeMembers grows the CLI-made cluster to three HSM daemon processes:
// two more HSMs are manufactured with the CLI, served, attested and cloned
// from the first by the cluster client, which holds their claim secrets.
func threeMembers(t *testing.T) (*cluster, hsmcluster.Config) {
	t.Helper()
	c := newCluster(t)
	pair, err := tls.LoadX509KeyPair(c.cert, c.key)
	if err != nil {
		t.Fatal(err)
	}
	mfr, op := x509.NewCertPool(), x509.NewCertPool()
	mfr.AddCert(loadCert(t, c.mfrRoot))
	op.AddCert(loadCert(t, c.opRoot))
	cfg := hsmcluster.Config{
		Members: []string{c.addr},
		Client: client.Config{Certificate: &pair, CustomerCA: loadCert(t, c.ca.Cert), ClusterID: testCluster,
			ManufacturerRoots: mfr, Timeout: 10 * time.Second},
		OperatorRoots: op,
	}
	var added []string
	claims := hsmcore.Claims{}
	for _, name := range []string{"hsm-b", "hsm-c"} {
		addr := c.newHSM(t, name, filepath.Join(c.dir, "op"), testFirmware)
		claims.Add(readClaim(t, c.claims[addr]))
		added = append(added, addr)
	}
	ctx := context.Background()
	withClaims := cfg
	withClaims.Client.Claims = claims
	admin, err := hsmcluster.Open(ctx, withClaims, testOfficer, c.password)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, addr := range added {
		if err := admin.AddMember(ctx, addr, hsmcluster.AddOptions{}); err != nil {
			t.Fatalf("add %s: %v", addr, err)
		}
		cfg.Members = append(cfg.Members, addr)
	}
	return c, cfg
}

// readClaim reads the claim file hsm manufacture wrote.
func readClaim(t *testing.T, path string) hsmcore.Claim {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	claim, err := hsmcore.ParseClaim(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return claim
}

// digests reads every member's state digest over the wire.
func digests(t *testing.T, cfg hsmcluster.Config) []string {
	t.Helper()
	var out []string
	for _, addr := range cfg.Members {
		cc := cfg.Client
		cc.Addr = addr
		cl, err := client.New(cc)
		if err != nil {
			t.Fatal(err)
		}
		h, err := cl.Health(context.Background())
		cl.Close()
		if err != nil {
			t.Fatalf("health of %s: %v", addr, err)
		}
		out = append(out, h.StateDigest)
	}
	return out
}

func wantInSync(t *testing.T, cfg hsmcluster.Config) {
	t.Helper()
	d := digests(t, cfg)
	for i := range d {
		if d[i] != d[0] {
			t.Fatalf("members differ: %v", d)
		}
	}
}

// Three daemons kept in sync through creates and deletes; one killed with
// SIGKILL while the cluster keeps serving reads and writes; re-synced by
// image when it comes back.
func TestClusterOfProcesses(t *testing.T) {
	c, cfg := threeMembers(t)
	ctx := context.Background()
	wantInSync(t, cfg)
	admin, err := hsmcluster.Open(ctx, cfg, testOfficer, c.password)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.CreateUser(ctx, "app", hsmcore.CryptoUser, c.password); err != nil {
		t.Fatal(err)
	}
	app, err := hsmcluster.Open(ctx, cfg, "app", c.password)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	keys, err := app.GenerateKeys(ctx, []hsmcore.KeySpec{
		{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true, Label: "data"},
		{Type: hsmcore.AES, Bits: 256, Label: "short-lived"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := app.DeleteKey(ctx, keys[1].Handle); err != nil {
		t.Fatal(err)
	}
	wantInSync(t, cfg)

	// A crash of one member: the cluster goes on serving.
	down := cfg.Members[1]
	Kill(t, down)
	more, err := app.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 128, Encrypt: true, Decrypt: true}})
	if err != nil {
		t.Fatalf("write with a member down: %v", err)
	}
	if err := admin.CreateUser(ctx, "auditor", hsmcore.CryptoUser, c.password); err != nil {
		t.Fatalf("write with a member down: %v", err)
	}
	for range 6 {
		ct, err := app.Encrypt(ctx, more[0].Handle, []byte("still serving"), nil)
		if err != nil {
			t.Fatalf("read with a member down: %v", err)
		}
		if _, err := app.Decrypt(ctx, more[0].Handle, ct, nil); err != nil {
			t.Fatalf("read with a member down: %v", err)
		}
	}

	// It comes back having missed two writes, and is re-synced by image.
	RestartDaemon(t, down)
	if d := digests(t, cfg); d[1] == d[0] {
		t.Fatal("the restarted member did not miss the writes")
	}
	if err := admin.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	wantInSync(t, cfg)
	for _, m := range admin.Members(ctx) {
		if !m.Healthy || !m.InSync {
			t.Fatalf("member %+v after re-sync", m)
		}
	}
	// The re-synced member serves the key made while it was down.
	cc := cfg.Client
	cc.Addr = down
	cl, err := client.New(cc)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Login(ctx, "auditor", c.password); err != nil {
		t.Fatalf("user made while the member was down: %v", err)
	}
	if _, err := cl.Login(ctx, "app", c.password); err != nil {
		t.Fatal(err)
	}
	ct, err := app.Encrypt(ctx, more[0].Handle, []byte("made elsewhere"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := cl.Decrypt(ctx, more[0].Handle, ct, nil); err != nil || string(pt) != "made elsewhere" {
		t.Fatalf("key made while the member was down: %q, %v", pt, err)
	}
	if _, err := cl.Key(ctx, keys[1].Handle); !errors.Is(err, hsmcore.ErrNotFound) {
		t.Fatalf("key deleted before the crash: got %v, want ErrNotFound", err)
	}
}
