package device

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// twoMembers returns two HSMs of one initialized cluster, the second
// cloned from the first by image, with officer and user sessions on each.
func twoMembers(t *testing.T) (a, b *Device, coA, cuA, coB, cuB *Session) {
	t.Helper()
	a = newDevice(t, stdHW)
	coA, cuA = initDevice(t, a)
	initCluster(t, a, "cluster-s")
	b = newDevice(t, stdHW)
	if _, err := b.ImportImage(context.Background(), nil, bytes.NewReader(exportImage(t, coA))); err != nil {
		t.Fatal(err)
	}
	return a, b, coA, cuA, login(t, b, "admin"), login(t, b, "alice")
}

func TestSyncRecordsKeepMembersEqual(t *testing.T) {
	a, b, coA, cuA, coB, cuB := twoMembers(t)
	if a.StateDigest() != b.StateDigest() {
		t.Fatal("a member cloned by image differs")
	}
	k, err := cuA.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := coA.CreateUser("bob", hsmcore.CryptoUser, testPassword); err != nil {
		t.Fatal(err)
	}
	if a.StateDigest() == b.StateDigest() {
		t.Fatal("digests equal after a change on one member")
	}
	keyRec, err := cuA.ExportKeyRecord(k.Handle)
	if err != nil {
		t.Fatal(err)
	}
	userRec, err := coA.ExportUserRecord("bob")
	if err != nil {
		t.Fatal(err)
	}
	if err := cuB.ImportRecord(userRec); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("crypto user importing a user: got %v, want ErrPermission", err)
	}
	if err := cuB.ImportRecord(keyRec); err != nil {
		t.Fatal(err)
	}
	if err := coB.ImportRecord(userRec); err != nil {
		t.Fatal(err)
	}
	if a.StateDigest() != b.StateDigest() {
		t.Fatal("members differ after replicating every change")
	}
	ct, err := cuA.Encrypt(k.Handle, []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := cuB.Decrypt(k.Handle, ct, nil); err != nil || string(pt) != "hello" {
		t.Fatalf("replicated key does not decrypt: %v", err)
	}
	// Session keys do not move the handle counter members agree on.
	if _, err := cuA.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Session: true}); err != nil {
		t.Fatal(err)
	}
	if a.StateDigest() != b.StateDigest() {
		t.Fatal("a session key changed the replicated state")
	}
}

func TestSyncRecordRefusals(t *testing.T) {
	_, b, _, cuA, coB, _ := twoMembers(t)
	k, err := cuA.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := cuA.ExportKeyRecord(k.Handle)
	if err != nil {
		t.Fatal(err)
	}
	sealed, content := stateBytes(t, b), contentsBytes(t, b)
	flipped := bytes.Clone(rec)
	flipped[len(flipped)-3] ^= 1
	if err := coB.ImportRecord(flipped); !errors.Is(err, hsmcore.ErrTampered) {
		t.Fatalf("flipped record: got %v, want ErrTampered", err)
	}
	// A member of another cluster cannot read it.
	c := newDevice(t, stdHW)
	coC, _ := initDevice(t, c)
	initCluster(t, c, "cluster-s") // same name, another cluster key
	if err := coC.ImportRecord(rec); !errors.Is(err, hsmcore.ErrTampered) {
		t.Fatalf("other cluster: got %v, want ErrTampered", err)
	}
	// A device outside any cluster neither exports nor imports.
	d := newDevice(t, stdHW)
	coD, cuD := initDevice(t, d)
	kd, _ := cuD.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256})
	if _, err := cuD.ExportKeyRecord(kd.Handle); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("export outside a cluster: got %v, want ErrPermission", err)
	}
	if err := coD.ImportRecord(rec); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("import outside a cluster: got %v, want ErrPermission", err)
	}
	assertUnchanged(t, b, sealed, content)
}
