package server_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
)

// The attacks of anyone on the network on a factory-fresh HSM: each made
// over the daemon's TLS interface by a stranger, who reaches the HSM as
// its owner does (trusting the manufacturer root) but holds a claim
// secret of its own, or none. Each is refused, and the HSM's state digest
// and audit chain are as before.

// strangerClient reaches the new HSM h as a device, holding a secret of
// its own for h's serial (none if !withSecret), bound to h once attested
// if bind.
func (e *env) strangerClient(t *testing.T, h *hsmtest.Daemon, withSecret, bind bool) *client.Client {
	t.Helper()
	cfg := client.Config{Addr: h.Addr, ManufacturerRoots: e.roots(), Timeout: 5 * time.Second}
	if withSecret {
		cfg.Claims = hsmcore.Claims{}
		cfg.Claims.Add(hsmcore.NewClaim(h.Claim.Serial))
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if bind {
		op := x509.NewCertPool()
		op.AddCert(e.Op.Certificate())
		st, err := hsmcore.Challenge(context.Background(), c, hsmcore.ChallengeOptions{ManufacturerRoots: e.roots(), OperatorRoots: op, Certified: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Bind(st); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func TestClaimStrangerCannotGetCSR(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	h := e.Serve(t, nil)
	before := h.State(t)
	for _, withSecret := range []bool{false, true} {
		_, err := e.strangerClient(t, h, withSecret, false).ClusterCSR(ctx, "mine")
		if !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("stranger's CSR (own secret %v): %v, want ErrPermission", withSecret, err)
		}
	}
	h.AssertUnchanged(t, before)
	if health, _ := e.preInitClient(t, h.Addr).Health(ctx); health.ClusterID != "" {
		t.Fatalf("the stranger's CSR left cluster %q", health.ClusterID)
	}
}

// The owner made a CSR and had it signed; a stranger who has another
// certificate for it (from a CA of their own) cannot install it, nor ask
// for a CSR of another cluster id, which would replace the pending key
// so that the owner's certificate no longer installs.
func TestClaimStrangerCannotInitializeCluster(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	h := e.Serve(t, nil)
	owner := e.preInitClient(t, h.Addr)
	csr, err := owner.ClusterCSR(ctx, "cluster-1")
	if err != nil {
		t.Fatal(err)
	}
	before := h.State(t)
	theirs := hsmtest.NewEnv(t).CA
	s := e.strangerClient(t, h, true, false)
	if err := s.InitializeCluster(ctx, theirs.SignCSR(t, csr), theirs.Cert.Raw); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("stranger's cluster init: %v, want ErrPermission", err)
	}
	if err := e.strangerClient(t, h, false, false).InitializeCluster(ctx, theirs.SignCSR(t, csr), theirs.Cert.Raw); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("cluster init without a proof: %v, want ErrPermission", err)
	}
	h.AssertUnchanged(t, before)
	if err := owner.InitializeCluster(ctx, e.CA.SignCSR(t, csr), e.CA.Cert.Raw); err != nil {
		t.Fatalf("the owner's certificate after the attempts: %v", err)
	}
}

func TestClaimStrangerCannotReplacePendingCSR(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	h := e.Serve(t, nil)
	owner := e.preInitClient(t, h.Addr)
	csr, err := owner.ClusterCSR(ctx, "cluster-1")
	if err != nil {
		t.Fatal(err)
	}
	before := h.State(t)
	for _, id := range []string{"cluster-2", "cluster-1"} {
		if _, err := e.strangerClient(t, h, true, false).ClusterCSR(ctx, id); !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("stranger's CSR for %s: %v, want ErrPermission", id, err)
		}
	}
	h.AssertUnchanged(t, before)
	if err := owner.InitializeCluster(ctx, e.CA.SignCSR(t, csr), e.CA.Cert.Raw); err != nil {
		t.Fatalf("the owner's certificate no longer installs: %v", err)
	}
}

// A stranger with an HSM of the same class, manufacturer and operator
// (so the same PBK: its images import into the victim) tries to clone
// their own cluster into the victim, and own it.
func TestClaimStrangerCannotImportImage(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, _, co := e.initialized(t) // the stranger's own cluster
	img, err := co.ExportImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(img)
	img.Close()
	if err != nil {
		t.Fatal(err)
	}
	victim := e.Serve(t, nil)
	before := victim.State(t)
	for _, withSecret := range []bool{false, true} {
		_, err := e.strangerClient(t, victim, withSecret, true).ImportImage(ctx, bytes.NewReader(raw))
		if !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("stranger's image (own secret %v): %v, want ErrPermission", withSecret, err)
		}
	}
	victim.AssertUnchanged(t, before)
	if _, err := e.boundClient(t, victim.Addr).ImportImage(ctx, bytes.NewReader(raw)); err != nil {
		t.Fatalf("the holder's import: %v", err)
	}
}

// Online guessing: wrong proofs are refused; after five in a row even the
// holder's is refused for a while, audited within the bound of
// unauthenticated calls.
func TestClaimWrongSecretRefusedAndRateLimited(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	h := e.Serve(t, nil)
	before := h.State(t)
	s := e.strangerClient(t, h, true, false)
	for i := range 5 {
		_, err := s.ClusterCSR(ctx, "c1")
		if !errors.Is(err, hsmcore.ErrPermission) || !strings.Contains(err.Error(), "wrong claim secret") {
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	_, err := e.preInitClient(t, h.Addr).ClusterCSR(ctx, "c1")
	if !errors.Is(err, hsmcore.ErrPermission) || !strings.Contains(err.Error(), "too many wrong claim proofs") {
		t.Fatalf("the holder during the lockout: %v", err)
	}
	if now := h.State(t); now.Digest != before.Digest || now.AuditEntries > before.AuditEntries+device.UnauthAuditBurst {
		t.Fatalf("guessing changed the HSM or grew its log without bound: %+v, before %+v", now, before)
	}
}

// A claim header that does not parse is refused before the HSM sees it,
// and a proof sent to the wrong operation by hand (a raw client, the
// proof of a CSR on an image import) is refused by the HSM.
func TestClaimHeaderMalformed(t *testing.T) {
	e := newEnv(t)
	h := e.Serve(t, nil)
	before := h.State(t)
	raw := rawClient(e, nil)
	for _, hdr := range []string{"x", "a.b.c", strings.Repeat("A", 600), h.Claim.Serial + "..", h.Claim.Serial + ".AAAA.AAAA"} {
		req, _ := http.NewRequest("POST", "https://"+h.Addr+"/v1/cluster/csr", strings.NewReader(`{"cluster_id":"c1"}`))
		req.Header.Set(api.ClaimHeader, hdr)
		resp, err := raw.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			t.Fatalf("claim header %q: status %d", hdr, resp.StatusCode)
		}
	}
	h.AssertUnchanged(t, before)
}
