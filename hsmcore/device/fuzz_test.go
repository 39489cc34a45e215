package device

import (
	"bytes"
	"context"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// FuzzReadImageHeader: any input parses or fails cleanly, and what parses
// re-encodes to the same bytes.
func FuzzReadImageHeader(f *testing.F) {
	d := newDevice(f, stdHW)
	co, _ := initDevice(f, d)
	img := exportImage(f, co)
	_, raw, err := hsmcore.ReadImageHeader(bytes.NewReader(img))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add(raw[:20])
	f.Add([]byte("HSMIMG\r\n\x01\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, raw, err := hsmcore.ReadImageHeader(bytes.NewReader(data))
		if err != nil {
			return
		}
		again, err := h.Marshal()
		if err != nil {
			t.Fatalf("parsed header does not marshal: %v", err)
		}
		if !bytes.Equal(again, raw) {
			t.Fatalf("header re-encodes differently:\n%x\n%x", raw, again)
		}
	})
}

// FuzzReadContents: the image plaintext parser never panics, and accepted
// contents re-serialize to input that parses to the same contents.
func FuzzReadContents(f *testing.F) {
	d := newDevice(f, stdHW)
	_, cu := initDevice(f, d)
	initCluster(f, d, "c-1")
	fillKeys(f, cu, 45)
	f.Add(contentsBytes(f, d))
	f.Add([]byte(`{"format":"hsmcore-contents/1","cluster_id":"","next_handle":1,"users":0,"keys":0}` + "\n"))
	f.Add([]byte(richV1(f).ContentsV1))
	f.Fuzz(func(t *testing.T, data []byte) {
		for version := 1; version <= 2; version++ {
			c, err := readContents(bytes.NewReader(data), version, 100)
			if err != nil {
				continue
			}
			var once, twice bytes.Buffer
			if err := writeContents(&once, c); err != nil {
				t.Fatal(err)
			}
			c2, err := readContents(bytes.NewReader(once.Bytes()), 2, 100)
			if err != nil {
				t.Fatalf("re-serialized contents do not parse: %v", err)
			}
			if version == 2 && !sameContents(c, c2) {
				t.Fatal("contents change when written and read again")
			}
			writeContents(&twice, c2)
			if !bytes.Equal(once.Bytes(), twice.Bytes()) {
				t.Fatal("contents do not round-trip")
			}
			if version == 2 && !bytes.Equal(data, once.Bytes()) {
				t.Fatal("version 2 contents accepted in a form the encoder does not write: two encodings of one state")
			}
		}
	})
}

// FuzzImportImage feeds mutated images to a matching, uninitialized HSM:
// nothing panics, and nothing but the genuine image is accepted.
func FuzzImportImage(f *testing.F) {
	src := newDevice(f, stdHW)
	co, cu := initDevice(f, src)
	fillKeys(f, cu, 45)
	img := exportImage(f, co)
	target := newDevice(f, stdHW)
	f.Add(img)
	f.Add(img[:len(img)/2])
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := target.claimImport(context.Background(), bytes.NewReader(data))
		if err == nil {
			if !bytes.Equal(data, img) {
				t.Fatal("a modified image was accepted")
			}
			// Accepted: the target now has users; make it empty again.
			target.mu.Lock()
			target.st = newContents()
			target.mu.Unlock()
		}
	})
}

// FuzzImportChange: any bytes offered as a change record are refused
// cleanly or applied, never panic, and a refusal leaves the member as it
// was; the parser accepts only records within its limits.
func FuzzImportChange(f *testing.F) {
	a, b, _, cuA, _, _ := twoMembers(f)
	if _, err := cuA.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256}); err != nil {
		f.Fatal(err)
	}
	rec := changesFor(f, a, b)[0]
	f.Add(rec)
	f.Add(rec[:len(rec)/2])
	f.Add([]byte(`{"body":"e30=","signature":""}`))
	cuB := login(f, b, "alice")
	f.Fuzz(func(t *testing.T, data []byte) {
		if body, _, err := parseChange(data); err == nil && len(data) > maxRecordLine {
			t.Fatalf("a record of %d bytes parsed: %+v", len(data), body)
		}
		before := b.StateDigest()
		if err := cuB.ImportChange(data); err != nil && b.StateDigest() != before {
			t.Fatalf("a refused change (%v) changed the member", err)
		}
	})
}

// FuzzParseSpent: the spent-token file's parser never panics, and what it
// accepts re-encodes to input that parses to the same tokens.
func FuzzParseSpent(f *testing.F) {
	f.Add([]byte(`{"format":"hsmcore-spent/1","tokens":[{"id":"000102030405060708090a0b0c0d0e0f","expires":"2025-03-14T15:19:26.535897932Z"}]}`))
	f.Add([]byte(`{"format":"hsmcore-spent/1","tokens":[]}`))
	f.Add([]byte(`{"format":"hsmcore-spent/1","tokens":[{"id":"00","expires":"2025-03-14T15:19:26Z"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		spent, err := parseSpent(data)
		if err != nil {
			return
		}
		once, err := encodeSpent(spent)
		if err != nil {
			t.Fatalf("parsed tokens do not encode: %v", err)
		}
		again, err := parseSpent(once)
		if err != nil {
			t.Fatalf("re-encoded tokens do not parse: %v\n%s", err, once)
		}
		if len(again) != len(spent) {
			t.Fatalf("%d tokens after a round trip, want %d", len(again), len(spent))
		}
		for i := range spent {
			if again[i].ID != spent[i].ID || !again[i].Expires.Equal(spent[i].Expires) {
				t.Fatalf("token %d changed in a round trip: %+v, want %+v", i, again[i], spent[i])
			}
		}
	})
}

// FuzzApplyDelta feeds mutated journal deltas (the plaintext of entries,
// which only the HSM seals) to a state: nothing panics, and a state that
// takes one still encodes and reads back as itself.
func FuzzApplyDelta(f *testing.F) {
	d := newDevice(f, stdHW)
	co, cu := initDevice(f, d)
	fillKeys(f, cu, 5)
	base := d.st
	k, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true})
	if err != nil {
		f.Fatal(err)
	}
	delta, ok, err := encodeDelta(base, d.st)
	if err != nil || !ok {
		f.Fatalf("delta: %v %v", ok, err)
	}
	f.Add(delta)
	before := d.st
	if err := co.CreateUser("bob", hsmcore.CryptoUser, testPassword); err != nil {
		f.Fatal(err)
	}
	if err := cu.ShareKey(k.Handle, "bob", true); err != nil {
		f.Fatal(err)
	}
	delta, _, _ = encodeDelta(before, d.st)
	f.Add(delta)
	var baseBytes bytes.Buffer
	if err := writeContents(&baseBytes, base); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := readContents(bytes.NewReader(baseBytes.Bytes()), 2, 100)
		if err != nil {
			t.Fatal(err)
		}
		if applyDelta(c, data, 100) != nil {
			return
		}
		var once bytes.Buffer
		if err := writeContents(&once, c); err != nil {
			t.Fatalf("a state a delta made does not encode: %v", err)
		}
		if _, err := readContents(bytes.NewReader(once.Bytes()), 2, 100); err != nil {
			t.Fatalf("a state a delta made does not read back: %v", err)
		}
	})
}
