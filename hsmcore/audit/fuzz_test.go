package audit

import (
	"bytes"
	"slices"
	"testing"
)

// FuzzDecodeVerify checks that Decode and Verify never panic, and that
// whatever decodes re-encodes to bytes that decode to the same entries and
// encode to the same bytes again.
func FuzzDecodeVerify(f *testing.F) {
	entries, _ := testLog(f, 6)
	f.Add(encode(f, entries...))
	f.Add(encode(f, entries[:1]...))
	f.Add(encode(f, entries[3:]...))
	f.Add([]byte{})
	f.Add([]byte("\n"))
	f.Add([]byte(`{"seq":1,"time":"2025-01-01T00:00:00Z","actor":"a\u00e9\ud800","op":"x","result":"ok"}` + "\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := Decode(bytes.NewReader(data))
		if err != nil {
			return
		}
		_ = Verify(got, nil)
		if len(got) > 0 {
			first, last := got[0], got[len(got)-1]
			_ = VerifyFrom(Head{Seq: first.Seq - 1, Hash: first.Prev}, got, &Head{Seq: last.Seq, Hash: last.Hash})
		}

		var buf bytes.Buffer
		if err := Encode(&buf, got...); err != nil {
			t.Fatalf("decoded entries do not encode: %v", err)
		}
		again, err := Decode(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatalf("re-encoded entries do not decode: %v\n%s", err, buf.Bytes())
		}
		if !slices.Equal(again, got) {
			t.Fatalf("re-encoded entries decode differently:\n%s", buf.Bytes())
		}
		if b := encode(t, again...); !bytes.Equal(b, buf.Bytes()) {
			t.Fatalf("encoding is not stable:\n%s\n%s", buf.Bytes(), b)
		}
	})
}

// FuzzVerifyMutations edits a valid encoded log and checks that no edit the
// chain accepts changes what the log says: with the trusted Head the entries
// must be the originals, and without it a prefix of them.
//
// The fuzz input is a list of 4-byte edits: op, offset (2 bytes, big-endian,
// modulo the length), value. Op modulo 3 sets, deletes or inserts a byte.
func FuzzVerifyMutations(f *testing.F) {
	orig, head := testLog(f, 5)
	data := encode(f, orig...)

	f.Add([]byte{})
	f.Add([]byte{0, 0, 30, 'X'})                               // set a byte in the first line
	f.Add([]byte{1, 0, 100, 0})                                // delete a byte
	f.Add([]byte{2, 0, 12, '0', 2, 0, 12, '1'})                // insert "10"
	f.Add([]byte{0, byte(len(data) >> 8), byte(len(data)), 0}) // at the end
	f.Fuzz(func(t *testing.T, edits []byte) {
		b := bytes.Clone(data)
		for ; len(edits) >= 4; edits = edits[4:] {
			off := (int(edits[1])<<8 | int(edits[2])) % (len(b) + 1)
			switch edits[0] % 3 {
			case 0:
				if off < len(b) {
					b[off] = edits[3]
				}
			case 1:
				if off < len(b) {
					b = slices.Delete(b, off, off+1)
				}
			case 2:
				b = slices.Insert(b, off, edits[3])
			}
		}

		got, err := Decode(bytes.NewReader(b))
		if err != nil {
			return
		}
		if Verify(got, nil) == nil && (len(got) > len(orig) || !slices.Equal(got, orig[:len(got)])) {
			t.Fatalf("Verify accepted changed entries:\n%s", b)
		}
		if Verify(got, &head) == nil && !slices.Equal(got, orig) {
			t.Fatalf("Verify with head accepted changed entries:\n%s", b)
		}
	})
}
