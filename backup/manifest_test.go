package backup

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// fixedKey is the known-answer signing key: seed 32 bytes of 0x42.
func fixedKey() ed25519.PrivateKey { return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x42}, 32)) }

// fixedManifest is the known-answer manifest, unsigned.
func fixedManifest() *Manifest {
	return &Manifest{
		Format:    ManifestFormat,
		ID:        "backup-20261124T170001Z-abcdefgh23",
		ClusterID: "cluster-1",
		Source: Source{Identity: hsmcore.Identity{Serial: "HSM-0001", Class: "hsm2m.medium", Manufacturer: "acme", Operator: "cloud",
			Firmware: "2.1.0", FIPS: true}, PBKFingerprint: strings.Repeat("0f", 32)},
		ImageID:            strings.Repeat("a5", 16),
		State:              StateReady,
		Created:            time.Date(2026, 11, 24, 17, 0, 1, 123456789, time.UTC),
		ImageSize:          1000,
		ObjectSize:         1200,
		ObjectSHA256:       strings.Repeat("5a", 32),
		Recipients:         []string{"keyring master 1"},
		OuterHeader:        []byte("HSMWRAP header bytes <&>"),
		Tags:               map[string]string{"env": "prod", "Team": "hsm ops", "cost-centre": "42"},
		RetentionDays:      30,
		ClusterCertificate: []byte{0x30, 0x82, 0x01, 0x00},
		CustomerCA:         []byte{0x30, 0x82, 0x02, 0x00},
	}
}

const (
	vectorSigning  = "testdata/manifest-v1.signing.json"
	vectorManifest = "testdata/manifest-v1.json"
)

// TestManifestKnownAnswer pins the signing bytes and the stored encoding
// (and so, Ed25519 being deterministic, the signature) of a fixed
// manifest. The vectors were written once by this test with
// BACKUP_WRITE_VECTORS=1 and must not change while the format is version 1.
func TestManifestKnownAnswer(t *testing.T) {
	m := fixedManifest()
	priv := fixedKey()
	signing, err := m.SigningBytes()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Sign(priv); err != nil {
		t.Fatal(err)
	}
	stored, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("BACKUP_WRITE_VECTORS") == "1" {
		for p, b := range map[string][]byte{vectorSigning: signing, vectorManifest: stored} {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	wantSigning, err := os.ReadFile(vectorSigning)
	if err != nil {
		t.Fatal(err)
	}
	wantStored, err := os.ReadFile(vectorManifest)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(signing, wantSigning) {
		t.Fatalf("signing bytes changed:\n got %s\nwant %s", signing, wantSigning)
	}
	if !bytes.Equal(stored, wantStored) {
		t.Fatalf("stored manifest changed:\n got %s\nwant %s", stored, wantStored)
	}
	parsed, err := ParseManifest(wantStored)
	if err != nil {
		t.Fatal(err)
	}
	if err := parsed.Verify(priv.Public().(ed25519.PublicKey)); err != nil {
		t.Fatal(err)
	}
}

func TestManifestSignVerify(t *testing.T) {
	priv := fixedKey()
	pub := priv.Public().(ed25519.PublicKey)
	m := fixedManifest()
	if _, err := m.Marshal(); err == nil {
		t.Fatal("Marshal of an unsigned manifest succeeded")
	}
	if err := m.Sign(priv); err != nil {
		t.Fatal(err)
	}
	if err := m.Verify(pub); err != nil {
		t.Fatal(err)
	}
	other, _, _ := ed25519.GenerateKey(nil)
	if err := m.Verify(other); !errors.Is(err, ErrManifest) {
		t.Fatalf("verify under another key: %v", err)
	}
	m.State = StateDeleted
	if err := m.Verify(pub); !errors.Is(err, ErrManifest) {
		t.Fatalf("verify after a change: %v", err)
	}
}

func TestParseManifestRejects(t *testing.T) {
	m := fixedManifest()
	if err := m.Sign(fixedKey()); err != nil {
		t.Fatal(err)
	}
	good, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseManifest(good); err != nil {
		t.Fatal(err)
	}
	s := string(good)
	manyTags := map[string]string{}
	for i := range MaxTags + 1 {
		manyTags[strings.Repeat("k", i+1)] = "v"
	}
	cases := map[string][]byte{
		"empty":            nil,
		"not json":         []byte("hello"),
		"unknown field":    []byte(strings.Replace(s, `{"format"`, `{"extra":1,"format"`, 1)),
		"white space":      []byte(strings.Replace(s, `,"id"`, `, "id"`, 1)),
		"trailing newline": append(bytes.Clone(good), '\n'),
		"two values":       append(bytes.Clone(good), good...),
		"wrong case":       []byte(strings.Replace(s, `"format"`, `"Format"`, 1)),
		"duplicate key":    []byte(strings.Replace(s, `{"format"`, `{"format":"x","format"`, 1)),
		"bad format":       []byte(strings.Replace(s, ManifestFormat, "hsmbackup-manifest/2", 1)),
		"bad state":        []byte(strings.Replace(s, `"READY"`, `"GONE"`, 1)),
		"bad id":           []byte(strings.Replace(s, "backup-20261124T170001Z", "backup-20261324T170001Z", 1)),
		"upper hex":        []byte(strings.Replace(s, strings.Repeat("a5", 16), strings.Repeat("A5", 16), 1)),
		"not utc":          []byte(strings.Replace(s, "17:00:01.123456789Z", "17:00:01.123456789+01:00", 1)),
		"escaped":          []byte(strings.Replace(s, `"env"`, `"\u0065nv"`, 1)),
		"oversize":         bytes.Repeat([]byte(" "), MaxManifestSize+1),
	}
	for name, b := range cases {
		if _, err := ParseManifest(b); !errors.Is(err, ErrManifest) {
			t.Errorf("%s: ParseManifest = %v", name, err)
		}
	}
	for name, tags := range map[string]map[string]string{
		"too many":     manyTags,
		"long key":     {strings.Repeat("k", MaxTagKeyLen+1): "v"},
		"long value":   {"k": strings.Repeat("v", MaxTagValueLen+1)},
		"empty key":    {"": "v"},
		"aws prefix":   {"aws:owner": "v"},
		"bad char":     {"k": "a;b"},
		"invalid utf8": {"k": "\xff"},
	} {
		if err := ValidateTags(tags); err == nil {
			t.Errorf("tags %s accepted", name)
		}
		m2 := fixedManifest()
		m2.Tags = tags
		if err := m2.Sign(fixedKey()); err == nil {
			t.Errorf("manifest with tags %s signed", name)
		}
	}
	for name, tags := range map[string]map[string]string{
		"limits":      {strings.Repeat("k", MaxTagKeyLen): strings.Repeat("é", MaxTagValueLen)},
		"empty value": {"k": ""},
		"unicode":     {"Kostenstelle ü": "Zürich 1/2 @ = +"},
	} {
		if err := ValidateTags(tags); err != nil {
			t.Errorf("tags %s: %v", name, err)
		}
	}
}

func FuzzParseManifest(f *testing.F) {
	m := fixedManifest()
	if err := m.Sign(fixedKey()); err != nil {
		f.Fatal(err)
	}
	good, err := m.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte("{}"))
	f.Add([]byte(`{"format":"hsmbackup-manifest/1"}`))
	pub := fixedKey().Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			if !errors.Is(err, ErrManifest) {
				t.Fatalf("error without ErrManifest: %v", err)
			}
			return
		}
		again, err := m.Marshal()
		if err != nil {
			t.Fatalf("parsed manifest does not marshal: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%q\n%q", b, again)
		}
		if err := m.Verify(pub); err == nil && !bytes.Equal(b, good) {
			t.Fatalf("a manifest other than the seed verifies")
		}
	})
}

const vectorInventory = "testdata/manifest-v1-inventory.json"

// TestManifestInventoryKnownAnswer pins the encoding of the members added
// to version 1 after it was first published: a copy's
// source_object_sha256 and the source's inventory. A manifest without
// them encodes as before (TestManifestKnownAnswer).
func TestManifestInventoryKnownAnswer(t *testing.T) {
	m := fixedManifest()
	m.SourceBackupID, m.SourceClusterID, m.SourceObjectSHA256 = "backup-20261124T160000Z-zyxwvuts23", "cluster-1", strings.Repeat("c3", 32)
	m.Inventory = NewInventory(
		[]hsmcore.UserInfo{{Name: "admin", Role: hsmcore.CryptoOfficer}, {Name: "app", Role: hsmcore.CryptoUser}},
		[]hsmcore.KeyInfo{{Handle: 1, KCV: "0d0399", Token: true}, {Handle: 42, KCV: "a1b2c3", Token: true}})
	priv := fixedKey()
	if err := m.Sign(priv); err != nil {
		t.Fatal(err)
	}
	stored, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("BACKUP_WRITE_VECTORS") == "1" {
		if err := os.WriteFile(vectorInventory, stored, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(vectorInventory)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stored, want) {
		t.Fatalf("stored manifest changed:\n got %s\nwant %s", stored, want)
	}
	parsed, err := ParseManifest(want)
	if err != nil {
		t.Fatal(err)
	}
	if err := parsed.Verify(priv.Public().(ed25519.PublicKey)); err != nil {
		t.Fatal(err)
	}
	if parsed.Inventory == nil || parsed.Inventory.KeyCount != 2 || parsed.SourceObjectSHA256 != m.SourceObjectSHA256 {
		t.Fatalf("parsed %+v", parsed)
	}
	// The inventory is signed: changing it breaks the signature.
	parsed.Inventory.Keys[0] = "1:000000"
	if err := parsed.Verify(priv.Public().(ed25519.PublicKey)); !errors.Is(err, ErrManifest) {
		t.Fatalf("changed inventory verified: %v", err)
	}
}
