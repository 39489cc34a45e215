package server_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
	"github.com/hsmbackup/hsmbackup/internal/testpki"
)

const password = "correct horse battery"

type env struct{ *hsmtest.Env }

func newEnv(t *testing.T) *env { return &env{hsmtest.NewEnv(t)} }

// serve manufactures an HSM and serves it on a loopback port.
func (e *env) serve(t *testing.T) (*device.Device, string) {
	d := e.Serve(t, nil)
	return d.Dev, d.Addr
}

func (e *env) roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(e.Mfr.Certificate())
	return p
}

// preInitClient trusts the device certificate and presents none.
func (e *env) preInitClient(t *testing.T, addr string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Addr: addr, ManufacturerRoots: e.roots(), Claims: e.Claims})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// memberClient presents cert and trusts the cluster certificate.
// boundClient is a preInitClient bound to the new HSM at addr once it
// attested (client.Bind): the client that may send it an image.
func (e *env) boundClient(t *testing.T, addr string) *client.Client {
	t.Helper()
	c := e.preInitClient(t, addr)
	op := x509.NewCertPool()
	op.AddCert(e.Op.Certificate())
	st, err := hsmcore.Challenge(context.Background(), c, hsmcore.ChallengeOptions{ManufacturerRoots: e.roots(), OperatorRoots: op, Certified: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Bind(st); err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *env) memberClient(t *testing.T, addr string, cert *tls.Certificate) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Addr: addr, Certificate: cert, CustomerCA: e.CA.Cert, ClusterID: "cluster-1", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// initialized serves an HSM, initializes its cluster and first officer,
// and returns an officer's client.
func (e *env) initialized(t *testing.T) (*device.Device, string, *client.Client) {
	t.Helper()
	ctx := context.Background()
	h := e.Serve(t, nil)
	d, addr := h.Dev, h.Addr
	cfg := e.InitCluster(t, h, "cluster-1", "admin", password)
	co := e.memberClient(t, addr, cfg.Certificate)
	if _, err := co.Login(ctx, "admin", password); err != nil {
		t.Fatal(err)
	}
	return d, addr, co
}

func TestClusterInitOverTheWire(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d, addr, co := e.initialized(t)
	h, err := co.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !h.ClusterInitialized || !h.Initialized || h.ClusterID != "cluster-1" || h.Serial != d.Identity().Serial {
		t.Fatalf("health %+v", h)
	}
	if err := co.CreateUser(ctx, "alice", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	cert := e.CA.Client(t, "app")
	cu := e.memberClient(t, addr, &cert)
	if _, err := cu.Login(ctx, "alice", password); err != nil {
		t.Fatal(err)
	}
	keys, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true}, {Type: hsmcore.EC, Curve: "P-256", Sign: true, Verify: true}})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := cu.Encrypt(ctx, keys[0].Handle, []byte("over the wire"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := cu.Decrypt(ctx, keys[0].Handle, ct, nil); err != nil || string(pt) != "over the wire" {
		t.Fatalf("decrypt: %q, %v", pt, err)
	}
	sig, err := cu.Sign(ctx, keys[1].Handle, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cu.Verify(ctx, keys[1].Handle, []byte("m"), sig); err != nil {
		t.Fatal(err)
	}
	if err := cu.Verify(ctx, keys[1].Handle, []byte("x"), sig); !errors.Is(err, hsmcore.ErrTampered) {
		t.Fatalf("bad signature: got %v, want ErrTampered", err)
	}
	// The attestation fetched over the wire verifies.
	nonce := hsmcore.NewNonce()
	att, err := co.Attest(ctx, nonce)
	if err != nil {
		t.Fatal(err)
	}
	op := x509.NewCertPool()
	op.AddCert(e.Op.Certificate())
	if _, err := hsmcore.VerifyAttestation(att, hsmcore.VerifyOptions{ManufacturerRoots: e.roots(), OperatorRoots: op, Nonce: nonce,
		Expect: hsmcore.Expectation{Class: "hsm2m.medium", Manufacturer: "acme", Operator: "cloud"}}); err != nil {
		t.Fatal(err)
	}
	// The audit log read over the API verifies against the device.
	var entries []audit.Entry
	head, err := co.AuditLog(ctx, func(page []audit.Entry) error { entries = append(entries, page...); return nil })
	if err != nil {
		t.Fatal(err)
	}
	mc, _ := d.Certificates()
	if err := hsmcore.VerifyAuditLog(entries, head, mc); err != nil {
		t.Fatal(err)
	}
}

func TestRefusals(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d, addr, co := e.initialized(t)
	if err := co.CreateUser(ctx, "alice", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	digest := d.StateDigest()

	t.Run("no client certificate", func(t *testing.T) {
		c := e.memberClient(t, addr, nil)
		if _, err := c.Health(ctx); err == nil {
			t.Fatal("a client without a certificate was served")
		}
	})
	t.Run("certificate from another CA", func(t *testing.T) {
		cert := testpki.NewCA(t, "mallory CA").Client(t, "mallory")
		if _, err := e.memberClient(t, addr, &cert).Login(ctx, "admin", password); err == nil {
			t.Fatal("a certificate from another CA was accepted")
		}
	})
	t.Run("expired certificate", func(t *testing.T) {
		cert := e.CA.ClientCert(t, "old", time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
		if _, err := e.memberClient(t, addr, &cert).Login(ctx, "admin", password); err == nil {
			t.Fatal("an expired certificate was accepted")
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		cert := e.CA.Client(t, "c")
		if _, err := e.memberClient(t, addr, &cert).Login(ctx, "admin", "wrong password"); !errors.Is(err, hsmcore.ErrAuth) {
			t.Fatalf("got %v, want ErrAuth", err)
		}
	})
	t.Run("no session", func(t *testing.T) {
		cert := e.CA.Client(t, "c")
		if _, err := e.memberClient(t, addr, &cert).Users(ctx); !errors.Is(err, hsmcore.ErrAuth) {
			t.Fatalf("got %v, want ErrAuth", err)
		}
	})
	t.Run("crypto user doing officer work", func(t *testing.T) {
		cert := e.CA.Client(t, "app")
		cu := e.memberClient(t, addr, &cert)
		if _, err := cu.Login(ctx, "alice", password); err != nil {
			t.Fatal(err)
		}
		if err := cu.CreateUser(ctx, "mallory", hsmcore.CryptoOfficer, password); !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("got %v, want ErrPermission", err)
		}
		if _, err := cu.ExportImage(ctx); !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("export: got %v, want ErrPermission", err)
		}
		if _, err := cu.AuditLog(ctx, func([]audit.Entry) error { return nil }); !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("audit: got %v, want ErrPermission", err)
		}
	})
	t.Run("cluster init again", func(t *testing.T) {
		if _, err := co.ClusterCSR(ctx, "cluster-1"); !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("got %v, want ErrPermission", err)
		}
	})
	if d.StateDigest() != digest {
		t.Fatal("a refused call changed the HSM")
	}
}

// A token is bound to the client certificate that logged in.
func TestTokenBoundToCertificate(t *testing.T) {
	e := newEnv(t)
	_, addr, _ := e.initialized(t)
	owner, thief := e.CA.Client(t, "owner"), e.CA.Client(t, "thief")
	call := func(cert *tls.Certificate, method, path, token, body string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, "https://"+addr+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := rawClient(e, cert).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	resp := call(&owner, "POST", "/v1/login", "", `{"user":"admin","password":"`+password+`"}`)
	var login struct{ Token string }
	if err := json.NewDecoder(resp.Body).Decode(&login); err != nil || login.Token == "" {
		t.Fatalf("login: %v", err)
	}
	if r := call(&owner, "GET", "/v1/users", login.Token, ""); r.StatusCode != http.StatusOK || r.ProtoMajor != 2 {
		t.Fatalf("owner's call: status %d over HTTP/%d, want 200 over HTTP/2", r.StatusCode, r.ProtoMajor)
	}
	if r := call(&thief, "GET", "/v1/users", login.Token, ""); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("token from another certificate: status %d, want 401", r.StatusCode)
	}
	call(&owner, "POST", "/v1/logout", login.Token, "")
	if r := call(&owner, "GET", "/v1/users", login.Token, ""); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("token after logout: status %d, want 401", r.StatusCode)
	}
}

func rawClient(e *env, cert *tls.Certificate) *http.Client {
	tc := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}, Timeout: 5 * time.Second}
}

func TestMalformedAndOversizedRequests(t *testing.T) {
	e := newEnv(t)
	d, addr, _ := e.initialized(t)
	cert := e.CA.Client(t, "fuzzer")
	hc := rawClient(e, &cert)
	digest := d.StateDigest()
	cases := []struct {
		name, method, path, body string
		status                   int
	}{
		{"not JSON", "POST", "/v1/login", "{not json", 400},
		{"unknown field", "POST", "/v1/login", `{"user":"a","password":"b","admin":true}`, 400},
		{"two objects", "POST", "/v1/login", `{"user":"a","password":"b"}{}`, 400},
		{"oversized", "POST", "/v1/login", `{"user":"` + strings.Repeat("a", 2<<20) + `"}`, 413},
		{"unknown call", "GET", "/v1/nothing", "", 404},
		{"no session", "GET", "/v1/keys/abc", "", 401},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(c.method, "https://"+addr+c.path, strings.NewReader(c.body))
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, c.status)
			}
		})
	}
	// The daemon still serves.
	if _, err := e.memberClient(t, addr, &cert).Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d.StateDigest() != digest {
		t.Fatal("a malformed request changed the HSM")
	}
}

// A member added to a cluster is cloned from an existing one by image, and
// then serves as the cluster.
func TestCloneMemberOverTheWire(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a, _, co := e.initialized(t)
	b, addrB := e.serve(t)
	mfr, _ := b.Certificates()
	if err := co.AddMember(ctx, mfr.Raw); err != nil {
		t.Fatal(err)
	}
	img, err := co.ExportImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, img); err != nil {
		t.Fatal(err)
	}
	img.Close()
	// A client that trusts devices sends an image only to the one bound.
	if _, err := e.preInitClient(t, addrB).ImportImage(ctx, bytes.NewReader(buf.Bytes())); !errors.Is(err, client.ErrDeviceOnly) {
		t.Fatalf("image to an unbound device: got %v, want ErrDeviceOnly", err)
	}
	if _, err := e.boundClient(t, addrB).ImportImage(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	if a.StateDigest() != b.StateDigest() || !b.ClusterInitialized() {
		t.Fatal("the clone differs from its source")
	}
	cert := e.CA.Client(t, "c")
	cb := e.memberClient(t, addrB, &cert)
	if _, err := cb.Login(ctx, "admin", password); err != nil {
		t.Fatalf("login on the clone: %v", err)
	}
}

// A connection opened before the cluster was initialized, without a client
// certificate, gets nothing more after it.
func TestPreInitConnectionGainsNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, addr := e.serve(t)
	pre := e.preInitClient(t, addr)
	csr, err := pre.ClusterCSR(ctx, "cluster-1")
	if err != nil {
		t.Fatal(err)
	}
	// The client sends no password to a device; a raw client does, and
	// the daemon refuses it.
	if err := pre.Initialize(ctx, "admin", password); !errors.Is(err, client.ErrDeviceOnly) {
		t.Fatalf("initialize before cluster init: got %v, want the client's ErrDeviceOnly", err)
	}
	raw := rawClient(e, nil)
	initialize := func() int {
		req, _ := http.NewRequest("POST", "https://"+addr+"/v1/initialize", strings.NewReader(`{"user":"admin","password":"`+password+`"}`))
		resp, err := raw.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := initialize(); st != http.StatusForbidden {
		t.Fatalf("initialize before cluster init: status %d, want 403", st)
	}
	if err := pre.InitializeCluster(ctx, e.CA.SignCSR(t, csr), e.CA.Cert.Raw); err != nil {
		t.Fatal(err)
	}
	// Same client, same kept-alive connection, no certificate.
	if st := initialize(); st != http.StatusForbidden {
		t.Fatalf("initialize over a pre-init connection: status %d, want 403", st)
	}
}

// Zeroize over the wire: refused to everyone but a logged-in crypto
// officer on the member channel (and its quorum, if the policy asks), a
// refusal changing nothing; once done, the HSM serves as a new one, after
// a restart too, and takes a restore as a new one does.
func TestZeroizeOverTheWire(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	h := e.Serve(t, nil)
	addr := h.Addr
	cfg := e.InitCluster(t, h, "cluster-1", "admin", password)
	co := e.memberClient(t, addr, cfg.Certificate)
	if _, err := co.Login(ctx, "admin", password); err != nil {
		t.Fatal(err)
	}
	if err := co.CreateUser(ctx, "alice", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	appCert := e.CA.Client(t, "app")
	cu := e.memberClient(t, addr, &appCert)
	if _, err := cu.Login(ctx, "alice", password); err != nil {
		t.Fatal(err)
	}
	if _, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true}}); err != nil {
		t.Fatal(err)
	}
	img, err := co.ExportImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var backup bytes.Buffer
	if _, err := io.Copy(&backup, img); err != nil {
		t.Fatal(err)
	}
	img.Close()
	digest := h.Dev.StateDigest()

	unchanged := func(t *testing.T) {
		t.Helper()
		if h.Dev.StateDigest() != digest || !h.Dev.Initialized() || !h.Dev.ClusterInitialized() {
			t.Fatal("a refused zeroize changed the HSM")
		}
	}
	t.Run("crypto user", func(t *testing.T) {
		if err := cu.Zeroize(ctx); !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("got %v, want ErrPermission", err)
		}
		unchanged(t)
	})
	t.Run("not logged in", func(t *testing.T) {
		cert := e.CA.Client(t, "anon")
		if err := e.memberClient(t, addr, &cert).Zeroize(ctx); !errors.Is(err, hsmcore.ErrAuth) {
			t.Fatalf("got %v, want ErrAuth", err)
		}
		unchanged(t)
	})
	t.Run("no client certificate", func(t *testing.T) {
		var remote *client.RemoteError
		err := e.memberClient(t, addr, nil).Zeroize(ctx)
		if err == nil || errors.As(err, &remote) {
			t.Fatalf("got %v, want no answer (the handshake needs a client certificate)", err)
		}
		unchanged(t)
	})
	t.Run("certificate from another CA", func(t *testing.T) {
		cert := testpki.NewCA(t, "mallory CA").Client(t, "mallory")
		var remote *client.RemoteError
		if err := e.memberClient(t, addr, &cert).Zeroize(ctx); err == nil || errors.As(err, &remote) {
			t.Fatalf("got %v, want no answer", err)
		}
		unchanged(t)
	})
	t.Run("officer's token from another certificate", func(t *testing.T) {
		owner, thief := e.CA.Client(t, "owner"), e.CA.Client(t, "thief")
		req, _ := http.NewRequest("POST", "https://"+addr+"/v1/login", strings.NewReader(`{"user":"admin","password":"`+password+`"}`))
		resp, err := rawClient(e, &owner).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var login struct{ Token string }
		err = json.NewDecoder(resp.Body).Decode(&login)
		resp.Body.Close()
		if err != nil || login.Token == "" {
			t.Fatalf("login: %v", err)
		}
		req, _ = http.NewRequest("POST", "https://"+addr+"/v1/zeroize", nil)
		req.Header.Set("Authorization", "Bearer "+login.Token)
		resp, err = rawClient(e, &thief).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", resp.StatusCode)
		}
		unchanged(t)
	})

	// The officer zeroizes it.
	if err := co.Zeroize(ctx); err != nil {
		t.Fatal(err)
	}
	wantNew := func(t *testing.T) {
		t.Helper()
		hl, err := e.preInitClient(t, addr).Health(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if hl.Initialized || hl.ClusterInitialized || hl.ClusterID != "" || hl.KeyCount != 0 || hl.UserCount != 0 || hl.Serial != h.Dev.Identity().Serial {
			t.Fatalf("health after zeroize: %+v", hl)
		}
	}
	wantNew(t)
	// Sessions and member connections opened before get nothing more.
	if _, err := cu.Keys(ctx); err == nil {
		t.Fatal("a crypto user's session outlived the zeroization")
	}
	if _, err := co.Users(ctx); !errors.Is(err, client.ErrUntrusted) {
		t.Fatalf("the officer's client after zeroize: got %v, want ErrUntrusted (the HSM presents its device certificate)", err)
	}
	// A restart finds it zeroized.
	h.Stop()
	h.Start()
	wantNew(t)
	// It takes a restore as a new HSM does.
	if _, err := e.boundClient(t, addr).ImportImage(ctx, &backup); err != nil {
		t.Fatalf("restore into the zeroized HSM: %v", err)
	}
	if h.Dev.StateDigest() != digest {
		t.Fatal("the restored HSM differs from the backup's source")
	}
	again := e.memberClient(t, addr, cfg.Certificate)
	if _, err := again.Login(ctx, "admin", password); err != nil {
		t.Fatalf("login after the restore: %v", err)
	}
}

// With a quorum policy, a zeroization over the wire needs the approvals,
// carried as for any protected call.
func TestZeroizeQuorumOverTheWire(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d, addr, co := e.initialized(t)
	privs := map[string]ed25519.PrivateKey{}
	for _, name := range []string{"admin", "co2"} {
		c := co
		if name != "admin" {
			if err := co.CreateUser(ctx, name, hsmcore.CryptoOfficer, password); err != nil {
				t.Fatal(err)
			}
			cert := e.CA.Client(t, name)
			c = e.memberClient(t, addr, &cert)
			if _, err := c.Login(ctx, name, password); err != nil {
				t.Fatal(err)
			}
		}
		pub, priv, _ := ed25519.GenerateKey(nil)
		if err := c.RegisterSigningKey(ctx, pub); err != nil {
			t.Fatal(err)
		}
		privs[name] = priv
	}
	if err := co.SetQuorum(ctx, "image.import", 2); err != nil {
		t.Fatal(err)
	}
	digest := d.StateDigest()
	if err := co.Zeroize(ctx); !errors.Is(err, hsmcore.ErrQuorum) {
		t.Fatalf("without approvals: got %v, want ErrQuorum", err)
	}
	if d.StateDigest() != digest {
		t.Fatal("a refused zeroize changed the HSM")
	}
	tok, _, err := co.QuorumToken(ctx, "device.zeroize", d.Identity().Serial)
	if err != nil {
		t.Fatal(err)
	}
	if err := co.Approve(tok.ID, []quorum.Approval{quorum.Sign(privs["admin"], "admin", tok), quorum.Sign(privs["co2"], "co2", tok)}); err != nil {
		t.Fatal(err)
	}
	if err := co.Zeroize(ctx); err != nil {
		t.Fatalf("with approvals: %v", err)
	}
	if d.Initialized() || d.ClusterInitialized() {
		t.Fatal("not zeroized")
	}
}
