package server_test

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
)

// auditVerifies checks that d's audit log chains and ends at its signed
// head.
func auditVerifies(t *testing.T, d *device.Device) {
	t.Helper()
	entries, head, err := d.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	mfr, _ := d.Certificates()
	if err := hsmcore.VerifyAuditLog(entries, head, mfr); err != nil {
		t.Fatalf("audit log: %v", err)
	}
}

// cryptoUser creates crypto user name with the officer's client co and
// returns a client logged in as it.
func (e *env) cryptoUser(t *testing.T, ctx context.Context, addr string, co *client.Client, name string) *client.Client {
	t.Helper()
	if err := co.CreateUser(ctx, name, hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	cert := e.CA.Client(t, name)
	cu := e.memberClient(t, addr, &cert)
	if _, err := cu.Login(ctx, name, password); err != nil {
		t.Fatal(err)
	}
	return cu
}

// The attack: a user who may list keys (their owner, or any crypto
// officer) brute-forces a short generic secret from its check value, the
// first 3 bytes of SHA-1 of the secret. The listing of an 8- or 16-bit
// secret must give nothing that any candidate secret matches; secrets of
// 128 bits and more keep their check value.
func TestSmallSecretCheckValueRevealsNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d, addr, co := e.initialized(t)
	cu := e.cryptoUser(t, ctx, addr, co, "alice")
	small, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{
		{Type: hsmcore.GenericSecret, Bits: 8, Label: "pin8"},
		{Type: hsmcore.GenericSecret, Bits: 16, Label: "pin16"},
	})
	if err != nil {
		t.Fatal(err)
	}
	large, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{
		{Type: hsmcore.GenericSecret, Bits: 128, Label: "s128"},
		{Type: hsmcore.GenericSecret, Bits: 256, Label: "s256"},
	})
	if err != nil {
		t.Fatal(err)
	}
	digest := d.StateDigest()

	for _, lister := range []struct {
		name string
		c    *client.Client
	}{{"owner", cu}, {"officer", co}} {
		keys, err := lister.c.Keys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		byHandle := map[uint64]hsmcore.KeyInfo{}
		for _, k := range keys {
			byHandle[k.Handle] = k
		}
		for _, want := range small {
			k, ok := byHandle[want.Handle]
			if !ok {
				t.Fatalf("%s: key %d not listed", lister.name, want.Handle)
			}
			if n := kcvCandidates(k); n != 0 {
				t.Errorf("%s: %d-bit secret %d: %d of %d candidate secrets match its listed check value %q",
					lister.name, k.Bits, k.Handle, n, 1<<k.Bits, k.KCV)
			}
		}
		for _, want := range large {
			if k := byHandle[want.Handle]; len(k.KCV) != 6 || k.KCV != want.KCV {
				t.Errorf("%s: %d-bit secret %d: check value %q, want the 3-byte value %q given at generation", lister.name, k.Bits, k.Handle, k.KCV, want.KCV)
			}
		}
	}
	if d.StateDigest() != digest {
		t.Fatal("listing keys changed the HSM")
	}
	auditVerifies(t, d)
}

// kcvCandidates counts the secrets of k's size whose check value, as any
// version of hsmcore computed one for a generic secret (SHA-1, first 3
// bytes), is the one k's listing shows.
func kcvCandidates(k hsmcore.KeyInfo) int {
	n := 0
	buf := make([]byte, k.Bits/8)
	for v := range 1 << k.Bits {
		for i := range buf {
			buf[i] = byte(v >> (8 * (len(buf) - 1 - i)))
		}
		h := sha1.Sum(buf)
		if hex.EncodeToString(h[:3]) == k.KCV {
			n++
		}
	}
	return n
}
