package device

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// sha1KCV is the check value hsmcore gave every generic secret before
// short ones lost theirs.
func sha1KCV(material []byte) string {
	h := sha1.Sum(material)
	return hex.EncodeToString(h[:3])
}

// asLegacy returns d's contents with its short generic secrets given the
// check value version 1 images and sealed state carried for them.
func asLegacy(d *Device) *contents {
	d.mu.Lock()
	defer d.mu.Unlock()
	next := d.st.clone()
	for h, k := range next.Keys.All() {
		if k.Type == hsmcore.GenericSecret && k.Bits < minCheckedSecretBits {
			nk := k.clone()
			nk.KCV = sha1KCV(k.Material)
			next.Keys.Set(h, nk)
		}
	}
	return next
}

// Images and sealed state written before short generic secrets lost their
// check value still import and open; the old value is dropped.
func TestLegacyShortSecretCheckValueImports(t *testing.T) {
	src := newDevice(t, stdHW)
	co, cu := initDevice(t, src)
	initCluster(t, src, "cluster-a")
	keys, err := cu.GenerateKeys([]hsmcore.KeySpec{
		{Type: hsmcore.GenericSecret, Bits: 8},
		{Type: hsmcore.GenericSecret, Bits: 120},
		{Type: hsmcore.GenericSecret, Bits: 128},
	})
	if err != nil {
		t.Fatal(err)
	}
	legacy := asLegacy(src)
	img := imageV1(t, src, legacy)
	co.Logout()

	check := func(what string, d *Device) {
		t.Helper()
		got, err := login(t, d, "alice").Keys()
		if err != nil || len(got) != len(keys) {
			t.Fatalf("%s: %d keys, %v", what, len(got), err)
		}
		for i, k := range got {
			if k.KCV != keys[i].KCV {
				t.Errorf("%s: %d-bit secret: check value %q, want %q", what, k.Bits, k.KCV, keys[i].KCV)
			}
		}
	}
	dst := newDevice(t, stdHW)
	if _, err := dst.claimImport(context.Background(), bytes.NewReader(img)); err != nil {
		t.Fatalf("import of an image with old check values: %v", err)
	}
	check("imported", dst)

	src.Close()
	sealV1(t, src, legacy)
	reopened, err := Open(src.dir, TestOptions())
	if err != nil {
		t.Fatalf("open of sealed state with old check values: %v", err)
	}
	defer reopened.Close()
	check("reopened", reopened)
}

// A short generic secret's record with any other check value than its
// old one (or none) is refused, as any mismatching check value.
func TestShortSecretWrongCheckValueRefused(t *testing.T) {
	c := newContents()
	c.NextHandle = 2
	c.Users["alice"] = &userRecord{Name: "alice", Role: hsmcore.CryptoUser}
	for _, kcv := range []string{"000000", "00", sha1KCV([]byte{2})} {
		k := &keyRecord{KeyInfo: hsmcore.KeyInfo{Handle: 1, Type: hsmcore.GenericSecret, Bits: 8, Token: true, Sensitive: true, Owner: "alice", KCV: kcv}, Material: []byte{1}}
		if sha1KCV([]byte{1}) == kcv {
			t.Fatal("test values collide")
		}
		if err := k.check(c); err == nil {
			t.Errorf("check value %q accepted for a secret whose old value is %q", kcv, sha1KCV([]byte{1}))
		}
	}
	for _, kcv := range []string{"", sha1KCV([]byte{1})} {
		k := &keyRecord{KeyInfo: hsmcore.KeyInfo{Handle: 1, Type: hsmcore.GenericSecret, Bits: 8, Token: true, Sensitive: true, Owner: "alice", KCV: kcv}, Material: []byte{1}}
		if err := k.check(c); err != nil || k.KCV != "" {
			t.Errorf("check value %q: %v, kcv now %q", kcv, err, k.KCV)
		}
	}
}
