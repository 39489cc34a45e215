package hsmkey_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmkey"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
	"github.com/hsmbackup/hsmbackup/wrap"
)

const password = "correct horse battery"

// A backup envelope whose data key the HSM cluster wraps: it opens through
// the cluster, and through nothing else.
func TestEnvelopeUnderAnHSMHeldKey(t *testing.T) {
	ctx := context.Background()
	e := hsmtest.NewEnv(t)
	d := e.Serve(t, nil)
	d.InstallCluster(e.CA, "cluster-1")
	if err := d.Dev.Initialize("admin", password); err != nil {
		t.Fatal(err)
	}
	cert := e.CA.Client(t, "backup-service")
	cfg := cluster.Config{Members: []string{d.Addr}, Client: client.Config{Certificate: &cert, CustomerCA: e.CA.Cert, ClusterID: "cluster-1", Timeout: 5 * time.Second}}
	admin, err := cluster.Open(ctx, cfg, "admin", password)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.CreateUser(ctx, "backup", hsmcore.CryptoUser, password); err != nil {
		t.Fatal(err)
	}
	svc, err := cluster.Open(ctx, cfg, "backup", password)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	keys, err := svc.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true, Label: "backup master key"}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := wrap.NewHSMRecipient(hsmkey.New(svc, "cluster-1", keys[0].Handle))
	if err != nil {
		t.Fatal(err)
	}

	plain := bytes.Repeat([]byte("an HSM image, already encrypted by the HSM. "), 5000)
	var env bytes.Buffer
	w, err := wrap.Encrypt(ctx, &env, r)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(plain)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	h, err := wrap.ReadHeader(bytes.NewReader(env.Bytes()))
	if err != nil || len(h.Recipients()) != 1 {
		t.Fatalf("header: %v %v", h, err)
	}
	dr, err := wrap.Decrypt(ctx, bytes.NewReader(env.Bytes()), r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(dr)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("round trip through the HSM-held key: %v", err)
	}

	// Another AES key of the same cluster, under the same name, cannot
	// open it: the HSM reports the wrapped key as not authentic.
	other, err := svc.GenerateKeys(ctx, []hsmcore.KeySpec{{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true}})
	if err != nil {
		t.Fatal(err)
	}
	impostor := hsmkey.New(svc, "cluster-1", other[0].Handle)
	stanzaBody := []byte(nil)
	for _, s := range h.Stanzas {
		stanzaBody = s.Body
	}
	if _, err := impostor.UnwrapKey(ctx, stanzaBody); !errors.Is(err, wrap.ErrTampered) {
		t.Fatalf("another key: got %v, want wrap.ErrTampered", err)
	}
}
