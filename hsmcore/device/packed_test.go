package device

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// TestPackedRecordsLossless: every key and change record of the rich
// fixture (keys of every type, shared, trusted, under templates; changes
// with approvals and previous stamps) reads back from the packed maps
// exactly as its version 1 JSON line says, with what the check derives
// from the material; Stamps yields what the records hold.
func TestPackedRecordsLossless(t *testing.T) {
	f := richV1(t)
	c := richContents(t, f)
	keys, changes := 0, 0
	for _, line := range strings.Split(strings.TrimSpace(f.ContentsV1), "\n")[1:] {
		var probe map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &probe); err != nil {
			t.Fatal(err)
		}
		switch {
		case probe["handle"] != nil:
			var want keyRecord
			if err := json.Unmarshal([]byte(line), &want); err != nil {
				t.Fatal(err)
			}
			if err := want.derive(); err != nil {
				t.Fatal(err)
			}
			if got := c.Keys.Get(want.Handle); !reflect.DeepEqual(got, &want) {
				t.Errorf("key %d:\n got %+v\nwant %+v", want.Handle, got, &want)
			}
			keys++
		case probe["object"] != nil:
			var want changeMeta
			if err := json.Unmarshal([]byte(line), &want); err != nil {
				t.Fatal(err)
			}
			if got := c.Changes.Get(want.Object); !reflect.DeepEqual(got, &want) {
				t.Errorf("change of %s:\n got %+v\nwant %+v", want.Object, got, &want)
			}
			changes++
		}
	}
	if keys != c.Keys.Len() || changes != c.Changes.Len() || keys < 40 || changes < 40 {
		t.Fatalf("compared %d keys and %d changes of %d and %d", keys, changes, c.Keys.Len(), c.Changes.Len())
	}
	n := 0
	for o, s := range c.Changes.Stamps() {
		if m := c.Changes.Get(o); m == nil || m.Stamp != s {
			t.Errorf("Stamps gives %s %+v, the record %+v", o, s, m)
		}
		n++
	}
	if n != changes {
		t.Fatalf("Stamps yields %d of %d", n, changes)
	}
	n = 0
	for h, kcv := range c.Keys.CheckValues() {
		if k := c.Keys.Get(h); k == nil || k.KCV != kcv {
			t.Errorf("CheckValues gives %d %q, the record %+v", h, kcv, k)
		}
		n++
	}
	if n != keys {
		t.Fatalf("CheckValues yields %d of %d", n, keys)
	}
}

// TestKeyMap: session keys are kept as they are set and never packed; a
// clone is independent of its original; a key too large to store is
// refused and changes nothing.
func TestKeyMap(t *testing.T) {
	m := newKeyMap()
	tok, err := newKeyRecord(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true}, make([]byte, 16), "cu", true)
	if err != nil {
		t.Fatal(err)
	}
	tok.Handle, tok.ID = 1, []byte("id-1")
	sess := tok.clone()
	sess.Token, sess.Handle, sess.session = false, firstSessionHandle+1, &Session{}
	for _, k := range []*keyRecord{tok, sess} {
		if err := m.Set(k.Handle, k); err != nil {
			t.Fatal(err)
		}
	}
	if m.Get(sess.Handle) != sess || m.Tokens() != 1 || m.Len() != 2 || !m.Has(1) || !m.Has(sess.Handle) {
		t.Fatalf("session key not kept as set, or counts off: %d tokens, %d keys", m.Tokens(), m.Len())
	}
	if got := m.Get(1); got == tok || !reflect.DeepEqual(got, tok) {
		t.Fatal("a token key reads back as other than a copy of what was set")
	}
	// A record read shares one buffer among its byte strings: growing one
	// must not write over another, nor over what the map holds.
	got := m.Get(1)
	material := bytes.Clone(got.Material)
	got.ID = append(got.ID, bytes.Repeat([]byte{0xff}, 64)...)
	if !bytes.Equal(got.Material, material) || !reflect.DeepEqual(m.Get(1), tok) {
		t.Fatal("appending to a read record's id overwrote its material or the stored key")
	}

	c := m.clone()
	c.Delete(sess.Handle)
	c.Delete(1)
	if m.Len() != 2 || c.Len() != 0 {
		t.Fatalf("deleting from a clone: original holds %d, clone %d", m.Len(), c.Len())
	}

	big := tok.clone()
	for i := range 2000 {
		big.SharedWith = append(big.SharedWith, strings.Repeat("u", 30)+string(rune('a'+i%26))+strings.Repeat("x", i%7))
	}
	if err := m.Set(1, big); err == nil {
		t.Fatal("a record over the size limit was stored")
	}
	if got := m.Get(1); !reflect.DeepEqual(got, tok) {
		t.Fatal("a refused Set changed the key")
	}
}

// TestSortedRecords: the radix sort orders values by their keys, for
// handles over the whole range and for names that share prefixes of every
// length (shorter than, as long as and longer than the 8 bytes the radix
// pass sees).
func TestSortedRecords(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	keys := cowMap[uint64, string]{shard: func(h uint64) uint8 { return uint8(h) }}
	var handles []uint64
	for range 5000 {
		h := rng.Uint64() >> rng.IntN(64)
		if keys.Get(h) == "" {
			keys.Set(h, fmt.Sprint(h))
			handles = append(handles, h)
		}
	}
	slices.Sort(handles)
	want := make([]string, len(handles))
	for i, h := range handles {
		want[i] = fmt.Sprint(h)
	}
	if got := sortedRecords(&keys, func(h uint64) uint64 { return h }, cmp.Compare[uint64]); !slices.Equal(got, want) {
		t.Fatal("handles out of order")
	}

	names := cowMap[string, string]{shard: func(o string) uint8 { return uint8(len(o)) }}
	var objects []string
	for range 5000 {
		o := strings.Repeat("key:", rng.IntN(4)) + fmt.Sprint(rng.IntN(100000))
		if rng.IntN(10) == 0 {
			o += "\x00"
		}
		if names.Get(o) == "" {
			names.Set(o, "v"+o)
			objects = append(objects, o)
		}
	}
	slices.Sort(objects)
	for i, o := range objects {
		objects[i] = "v" + o
	}
	if got := sortedRecords(&names, namePrefix, strings.Compare); !slices.Equal(got, objects) {
		t.Fatal("names out of order")
	}
}
