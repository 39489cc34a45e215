package device

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// twoMembers returns two HSMs of one initialized cluster, the second added
// to the member list and cloned from the first by image, as
// cluster.AddMember does, with officer and user sessions on each.
func twoMembers(t testing.TB) (a, b *Device, coA, cuA, coB, cuB *Session) {
	t.Helper()
	a = newDevice(t, stdHW)
	coA, cuA = initDevice(t, a)
	initCluster(t, a, "cluster-s")
	b = newDevice(t, stdHW)
	addMember(t, coA, b)
	if _, err := b.claimImport(context.Background(), bytes.NewReader(exportImage(t, coA))); err != nil {
		t.Fatal(err)
	}
	return a, b, coA, cuA, login(t, b, "admin"), login(t, b, "alice")
}

// addMember lists d among the members of co's cluster.
func addMember(t testing.TB, co *Session, d *Device) {
	t.Helper()
	if err := co.AddMember(d.mfrCert); err != nil {
		t.Fatal(err)
	}
}

// reclone re-syncs member dst by image from src's device, as the cluster
// client does with a member that missed changes; co is an officer's
// session on dst.
func reclone(t testing.TB, src *Session, dst *Device, co *Session) {
	t.Helper()
	if _, err := dst.ImportImage(context.Background(), co, bytes.NewReader(exportImage(t, src))); err != nil {
		t.Fatal(err)
	}
}

// changesFor returns the changes src made that dst does not hold yet,
// for dst.
func changesFor(t testing.TB, src, dst *Device) [][]byte {
	t.Helper()
	_, v := dst.State()
	recs, _, err := login(t, src, "admin").ExportChanges(v[src.id.Serial], dst.id.Serial)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// replicate brings dst up to date with the changes src made, each
// imported in a session of the user who made it, as the cluster client
// does.
func replicate(t testing.TB, src, dst *Device) {
	t.Helper()
	for _, rec := range changesFor(t, src, dst) {
		b, _, err := parseChange(rec)
		if err != nil {
			t.Fatal(err)
		}
		if err := login(t, dst, b.Meta.Actor).ImportChange(rec); err != nil {
			t.Fatalf("import %s %s: %v", b.Meta.Op, b.Meta.Object, err)
		}
	}
}

func TestChangesKeepMembersEqual(t *testing.T) {
	a, b, _, cuA, _, cuB := twoMembers(t)
	if a.StateDigest() != b.StateDigest() {
		t.Fatal("a member cloned by image differs")
	}
	k, err := cuA.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	if a.StateDigest() == b.StateDigest() {
		t.Fatal("digests equal after a change on one member")
	}
	replicate(t, a, b)
	coA := login(t, a, "admin")
	if err := coA.CreateUser("bob", hsmcore.CryptoUser, testPassword); err != nil {
		t.Fatal(err)
	}
	// A crypto user cannot import the officer's change.
	if err := cuB.ImportChange(changesFor(t, a, b)[0]); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("crypto user importing an officer's change: got %v, want ErrPermission", err)
	}
	replicate(t, a, b)
	if err := cuA.ShareKey(k.Handle, "bob", true); err != nil {
		t.Fatal(err)
	}
	replicate(t, a, b)
	if a.StateDigest() != b.StateDigest() {
		t.Fatal("members differ after replicating every change")
	}
	_, va := a.State()
	_, vb := b.State()
	if va[a.id.Serial] != vb[a.id.Serial] || va[a.id.Serial] == 0 {
		t.Fatalf("versions %v and %v", va, vb)
	}
	ct, err := cuA.Encrypt(k.Handle, []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := login(t, b, "alice").Decrypt(k.Handle, ct, nil); err != nil || string(pt) != "hello" {
		t.Fatalf("replicated key does not decrypt: %v", err)
	}
	// Changes flow the other way too, and deletions leave tombstones.
	if err := login(t, b, "alice").DeleteKey(k.Handle); err != nil {
		t.Fatal(err)
	}
	replicate(t, b, a)
	if a.StateDigest() != b.StateDigest() {
		t.Fatal("members differ after a delete made on the second")
	}
	// Session keys do not move the state members agree on.
	if _, err := cuA.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Session: true}); err != nil {
		t.Fatal(err)
	}
	if a.StateDigest() != b.StateDigest() {
		t.Fatal("a session key changed the replicated state")
	}
}

func TestChangeRefusals(t *testing.T) {
	a, b, _, cuA, _, _ := twoMembers(t)
	if _, err := cuA.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256}); err != nil {
		t.Fatal(err)
	}
	rec := changesFor(t, a, b)[0]
	sealed, content := stateBytes(t, b), contentsBytes(t, b)
	cuB := login(t, b, "alice")
	for i := range rec {
		flipped := bytes.Clone(rec)
		flipped[i] ^= 1
		if err := cuB.ImportChange(flipped); err == nil {
			t.Fatalf("record with byte %d flipped imported", i)
		}
	}
	// A member of another cluster of the same name cannot use it.
	c := newDevice(t, stdHW)
	initDevice(t, c)
	initCluster(t, c, "cluster-s")
	if err := login(t, c, "alice").ImportChange(rec); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("other cluster: got %v, want ErrPermission", err)
	}
	// Nor an HSM that is not a current member, even with the cluster's
	// image.
	if _, _, err := login(t, a, "admin").ExportChanges(0, c.id.Serial); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("export for a non-member: got %v, want ErrPermission", err)
	}
	// A device outside any cluster neither exports nor imports.
	d := newDevice(t, stdHW)
	_, cuD := initDevice(t, d)
	if _, _, err := cuD.ExportChanges(0, b.id.Serial); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("export outside a cluster: got %v, want ErrPermission", err)
	}
	if err := cuD.ImportChange(rec); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("import outside a cluster: got %v, want ErrPermission", err)
	}
	assertUnchanged(t, b, sealed, content)
}

// A batch of change records applies in order with one commit; at the
// first refused record it stops and keeps the ones before it, each
// checked against the state the ones before it left.
func TestImportChangesBatch(t *testing.T) {
	a, b, _, cuA, _, cuB := twoMembers(t)
	var made []hsmcore.KeyInfo
	for range 3 {
		made = append(made, mustGenerateKey(t, cuA, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true}))
	}
	recs := changesFor(t, a, b)
	if len(recs) != 3 {
		t.Fatalf("%d records, want 3", len(recs))
	}
	// The second missing: the first applies, the third is refused as
	// out of order, and the first stays applied.
	n, err := cuB.ImportChanges([][]byte{recs[0], recs[2]})
	if n != 1 || !errors.Is(err, hsmcore.ErrConflict) {
		t.Fatalf("a gap in the batch: %d applied, %v", n, err)
	}
	if _, err := cuB.Key(made[0].Handle); err != nil {
		t.Fatalf("the record before the gap: %v", err)
	}
	// The rest, and a replay of the first within the same batch.
	if n, err := cuB.ImportChanges([][]byte{recs[1], recs[2], recs[0]}); n != 2 || !errors.Is(err, hsmcore.ErrConflict) {
		t.Fatalf("the rest, then a replay: %d applied, %v", n, err)
	}
	if a.StateDigest() != b.StateDigest() {
		t.Fatal("the members differ after the batches")
	}
	if _, err := cuB.ImportChanges(make([][]byte, maxImportChanges+1)); !errors.Is(err, hsmcore.ErrInvalid) {
		t.Fatalf("an oversized batch: %v", err)
	}
}
