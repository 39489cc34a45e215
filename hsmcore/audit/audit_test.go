package audit

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// testLog returns a valid log of n entries with varied fields, and its Head.
func testLog(tb testing.TB, n int) ([]Entry, Head) {
	tb.Helper()
	ops := []string{"login", "user.create", "key.create", "key.attr", "key.wrap", "image.export"}
	base := time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)
	l := New(Head{})
	entries := make([]Entry, 0, n)
	for i := range n {
		actor, object, result := "alice", "", "ok"
		switch i % 5 {
		case 0:
			actor = "" // the device itself
		case 1:
			object = "0x" + strings.Repeat("0", i%7) + "2a"
		case 3:
			actor, result = "mallory", "denied"
		}
		now := base.Add(time.Duration(i)*time.Second + time.Duration(i*i))
		entries = append(entries, l.Append(now, actor, ops[i%len(ops)], object, result))
	}
	return entries, l.Head()
}

// The hashes below were computed from the format description alone, with
// Python's hashlib, not with this package. They must never change: a change
// makes every stored log unverifiable.
func TestComputeHashKnownAnswer(t *testing.T) {
	var counting Hash
	for i := range counting {
		counting[i] = byte(i)
	}
	tests := []struct {
		name  string
		entry Entry
		want  string
	}{
		{
			name: "user",
			entry: Entry{
				Seq:    17,
				Time:   time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC),
				Actor:  "alice",
				Op:     "key.create",
				Object: "0x0000002a",
				Result: "ok",
				Prev:   counting, // 00 01 02 … 1f
			},
			want: "20a48b810efde01503e8522809a3acafbcdd66fbe0e33f3eb1df0b542dfe3c2b",
		},
		{
			name: "device, empty fields, time before 1970",
			entry: Entry{
				Seq:    1,
				Time:   time.Date(1969, 7, 20, 20, 17, 40, 0, time.UTC),
				Op:     "image.import",
				Result: "denied",
			},
			want: "9c0b3ced78aae3c1c8d62b9a29de9edb4e20be2463289f9d50268ef6c655f152",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.entry.ComputeHash().String(); got != tt.want {
				t.Errorf("ComputeHash = %s, want %s", got, tt.want)
			}
			// Hash is not an input of itself, and the time zone is not either.
			e := tt.entry
			e.Hash = Hash{0xff}
			e.Time = e.Time.In(time.FixedZone("X", 3600))
			if got := e.ComputeHash().String(); got != tt.want {
				t.Errorf("ComputeHash with Hash set and zone moved = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestHashJSON(t *testing.T) {
	var h Hash
	for i := range h {
		h[i] = byte(0xa0 + i)
	}
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	want := `"a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"`
	if string(b) != want {
		t.Fatalf("Marshal = %s, want %s", b, want)
	}
	var got Hash
	if err := json.Unmarshal(b, &got); err != nil || got != h {
		t.Fatalf("Unmarshal = %x, %v; want %x", got, err, h)
	}

	hexs := want[1 : len(want)-1]
	for _, bad := range []string{
		`null`,
		`""`,
		`"` + hexs[:62] + `"`,                      // 31 bytes
		`"` + hexs + `00"`,                         // 33 bytes
		`"` + strings.ToUpper(hexs) + `"`,          // upper case
		`"` + hexs[:63] + `g"`,                     // not hex
		`"` + hexs[:63] + `\u0066"`,                // escaped last digit
		`[` + strings.Repeat("0,", 31) + `0]`,      // array
		`"0x` + hexs[2:] + `"`,                     // prefix
		`"` + hexs[:31] + ` ` + hexs[32:] + `"`,    // space
		strings.Repeat("0", 66),                    // number
		`"` + strings.Repeat("\u00e9", 32) + `"`,   // 64 bytes, not hex
		`"` + hexs[:32] + "\x00" + hexs[33:] + `"`, // NUL
	} {
		var h Hash
		if err := json.Unmarshal([]byte(bad), &h); err == nil {
			t.Errorf("Unmarshal(%s) succeeded", bad)
		}
	}
}
