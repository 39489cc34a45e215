package restore

import (
	"context"
	"crypto/x509"
	"io"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
	"github.com/hsmbackup/hsmbackup/internal/testpki"
	"github.com/hsmbackup/hsmbackup/store"
)

var _ Target = (*client.Client)(nil)

const (
	testCluster  = "cluster-1"
	testPassword = "correct horse battery"
	testClass    = "hsm2m.medium"
	testFirmware = "2.1.0"
)

// authorities are a manufacturer and an operator, and root pools holding
// their certificates.
type authorities struct {
	mfr, op           *device.Authority
	mfrRoots, opRoots *x509.CertPool
	claims            hsmcore.Claims // of the HSMs newTarget served
}

func newAuthorities(tb testing.TB) *authorities {
	tb.Helper()
	return newNamedAuthorities(tb, "acme", "cloud")
}

func newNamedAuthorities(tb testing.TB, mfrName, opName string) *authorities {
	tb.Helper()
	mfr, err := device.NewAuthority(device.Manufacturer, mfrName)
	if err != nil {
		tb.Fatal(err)
	}
	op, err := device.NewAuthority(device.Operator, opName)
	if err != nil {
		tb.Fatal(err)
	}
	a := &authorities{mfr: mfr, op: op, mfrRoots: x509.NewCertPool(), opRoots: x509.NewCertPool(), claims: hsmcore.Claims{}}
	a.mfrRoots.AddCert(mfr.Certificate())
	a.opRoots.AddCert(op.Certificate())
	return a
}

// source is an initialized cluster member holding a crypto user's AES key
// and a ciphertext made with it.
type source struct {
	officer    *client.Client
	cfg        client.Config // a client config for the cluster, without session
	key        uint64
	ciphertext []byte
}

const plaintext = "attack at dawn"

func newSource(tb testing.TB, a *authorities, fips bool) *source {
	tb.Helper()
	ctx := context.Background()
	ca := testpki.NewCA(tb, "customer root CA")
	d := hsmtest.Serve(tb, device.ManufactureConfig{FIPS: fips, Manufacturer: a.mfr, Operator: a.op})
	cfg := hsmtest.InitCluster(tb, d.Addr, d.Claim, a.mfrRoots, a.opRoots, ca, testCluster, "admin", testPassword)
	co := newClient(tb, cfg)
	if _, err := co.Login(ctx, "admin", testPassword); err != nil {
		tb.Fatal(err)
	}
	if err := co.CreateUser(ctx, "crypto-user", hsmcore.CryptoUser, testPassword); err != nil {
		tb.Fatal(err)
	}
	cu := newClient(tb, cfg)
	defer cu.Close()
	if _, err := cu.Login(ctx, "crypto-user", testPassword); err != nil {
		tb.Fatal(err)
	}
	keys, err := cu.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true}})
	if err != nil {
		tb.Fatal(err)
	}
	ct, err := cu.Encrypt(ctx, keys[0].Handle, []byte(plaintext), nil)
	if err != nil {
		tb.Fatal(err)
	}
	return &source{officer: co, cfg: cfg, key: keys[0].Handle, ciphertext: ct}
}

func newClient(tb testing.TB, cfg client.Config) *client.Client {
	tb.Helper()
	c, err := client.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

// newTarget serves a fresh, uninitialized HSM and returns a client that
// trusts it as a device and holds its claim secret, and its address.
func newTarget(tb testing.TB, a *authorities, cfg device.ManufactureConfig) (*client.Client, string) {
	tb.Helper()
	if cfg.Manufacturer == nil {
		cfg.Manufacturer, cfg.Operator = a.mfr, a.op
	}
	h := hsmtest.Serve(tb, cfg)
	a.claims.Add(h.Claim)
	return newClient(tb, client.Config{Addr: h.Addr, ManufacturerRoots: a.mfrRoots, Timeout: 10 * time.Second, Claims: a.claims}), h.Addr
}

// swapStore wraps a Store; every Get of key returns the object other
// instead: an image object replaced after its manifest was written.
type swapStore struct {
	store.Store
	key, other string
}

func (s *swapStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if key == s.key {
		key = s.other
	}
	return s.Store.Get(ctx, key)
}
