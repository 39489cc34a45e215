package audit

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func encode(tb testing.TB, entries ...Entry) []byte {
	tb.Helper()
	var buf bytes.Buffer
	if err := Encode(&buf, entries...); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func TestEncodeDecode(t *testing.T) {
	entries, head := testLog(t, 50)
	data := encode(t, entries...)
	if n := bytes.Count(data, []byte("\n")); n != 50 || data[len(data)-1] != '\n' {
		t.Fatalf("encoded %d lines, want 50 each ending in newline", n)
	}
	got, err := Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, entries) {
		t.Fatal("decoded entries differ from encoded ones")
	}
	checkErr(t, Verify(got, &head), "")

	// Short reads and reads that return data with io.EOF change nothing.
	for name, r := range map[string]func() []Entry{
		"one byte": func() []Entry { es, _ := Decode(iotest.OneByteReader(bytes.NewReader(data))); return es },
		"data+EOF": func() []Entry { es, _ := Decode(iotest.DataErrReader(bytes.NewReader(data))); return es },
	} {
		if !slices.Equal(r(), entries) {
			t.Errorf("%s reader: decoded entries differ", name)
		}
	}

	// An empty log is no bytes.
	if b := encode(t); len(b) != 0 {
		t.Errorf("Encode() wrote %q", b)
	}
	if es, err := Decode(bytes.NewReader(nil)); err != nil || len(es) != 0 {
		t.Errorf("Decode(empty) = %v, %v", es, err)
	}
}

func TestEncodeFormat(t *testing.T) {
	e := Entry{
		Seq:    1,
		Time:   time.Date(2025, 3, 14, 15, 9, 26, 535897900, time.UTC),
		Actor:  "<alice>",
		Op:     "login",
		Result: "ok",
	}
	e.Hash = e.ComputeHash()
	got := string(encode(t, e))
	want := `{"seq":1,"time":"2025-03-14T15:09:26.5358979Z","actor":"<alice>","op":"login","result":"ok",` +
		`"prev":"0000000000000000000000000000000000000000000000000000000000000000",` +
		`"hash":"` + e.Hash.String() + `"}` + "\n"
	if got != want {
		t.Errorf("Encode =\n%s\nwant\n%s", got, want)
	}
}

func TestEncodeRejects(t *testing.T) {
	ok := Entry{Seq: 1, Time: time.Unix(1, 0).UTC(), Op: "login", Result: "ok"}
	tests := []struct {
		name string
		edit func(*Entry)
		want string
	}{
		{"invalid UTF-8", func(e *Entry) { e.Actor = "\xff" }, "not valid UTF-8"},
		{"local time", func(e *Entry) { e.Time = e.Time.In(time.FixedZone("X", 60)) }, "not in UTC"},
		{"time out of range", func(e *Entry) { e.Time = time.Time{} }, "out of range"},
		{"line too long", func(e *Entry) { e.Object = strings.Repeat("\x01", 700) }, "longer than 4096"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := ok
			tt.edit(&e)
			var buf bytes.Buffer
			err := Encode(&buf, ok, e)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "audit: encode entry 1: ") {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
			if buf.Len() != len(encode(t, ok)) {
				t.Errorf("wrote %d bytes, want only the good entry", buf.Len())
			}
		})
	}

	werr := errors.New("disk full")
	err := Encode(errWriter{werr}, ok)
	if !errors.Is(err, werr) {
		t.Errorf("write error: err = %v, want it wrapped", err)
	}
}

type errWriter struct{ err error }

func (w errWriter) Write([]byte) (int, error) { return 0, w.err }

func TestDecodeRejects(t *testing.T) {
	entries, _ := testLog(t, 2)
	good := string(encode(t, entries[0]))
	line := strings.TrimSuffix(good, "\n")
	second := string(encode(t, entries[1]))

	tests := []struct {
		name, input, want string
	}{
		{"line 4097 bytes", good + strings.Repeat(" ", MaxLineLen+1) + "\n", "line 2: longer than 4096 bytes"},
		{"line 4096 bytes", good + strings.Repeat(" ", MaxLineLen) + "\n", "line 2: not a JSON object"},
		{"long line without newline", strings.Repeat("x", 10000), "line 1: longer than 4096 bytes"},
		{"unknown field", good + strings.Replace(second, `"seq"`, `"extra":1,"seq"`, 1), "line 2: json: unknown field \"extra\""},
		{"hash upper case", strings.Replace(good, `"hash":"`+entries[0].Hash.String(), `"hash":"`+strings.ToUpper(entries[0].Hash.String()), 1), "line 1: audit: hash is not"},
		{"hash short", strings.Replace(good, entries[0].Hash.String(), entries[0].Hash.String()[2:], 1), "line 1: audit: hash is not"},
		{"hash not hex", strings.Replace(good, `"hash":"`+entries[0].Hash.String()[:1], `"hash":"z`, 1), "line 1: audit: hash is not"},
		{"prev null", strings.Replace(good, `"prev":"`+Hash{}.String()+`"`, `"prev":null`, 1), "line 1: audit: hash is not"},
		{"seq negative", strings.Replace(good, `"seq":1`, `"seq":-1`, 1), "line 1: json: cannot unmarshal"},
		{"seq string", strings.Replace(good, `"seq":1`, `"seq":"1"`, 1), "line 1: json: cannot unmarshal"},
		{"time not UTC", strings.Replace(good, `Z"`, `+00:00"`, 1), "line 1: time is not in UTC"},
		{"time missing", strings.Replace(good, `"time":`, `"actor":`, 1), "line 1: time out of range"},
		{"time before 1678", strings.Replace(good, `"2025-`, `"1677-`, 1), "line 1: time out of range"},
		{"empty line first", "\n" + good, "line 1: empty line"},
		{"empty line between", good + "\n" + second, "line 2: empty line"},
		{"empty line last", good + second + "\n", "line 3: empty line"},
		{"no final newline", good + strings.TrimSuffix(second, "\n"), "line 2: missing newline"},
		{"CRLF", line + "\r\n", "line 1: trailing data"},
		{"trailing space", line + " \n", "line 1: trailing data"},
		{"trailing garbage", line + "x\n", "line 1: "},
		{"two objects", line + line + "\n", "line 1: trailing data"},
		{"leading space", " " + good, "line 1: not a JSON object"},
		{"null", "null\n", "line 1: not a JSON object"},
		{"array", "[" + line + "]\n", "line 1: not a JSON object"},
		{"truncated object", line[:len(line)-1] + "\n", "line 1: unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			es, err := Decode(strings.NewReader(tt.input))
			if err == nil || !strings.HasPrefix(err.Error(), "audit: "+tt.want) {
				t.Errorf("err = %v, want prefix %q", err, "audit: "+tt.want)
			}
			if es != nil {
				t.Errorf("returned %d entries with the error", len(es))
			}
		})
	}
}

// The real MaxEntries would need a million lines, so this checks the same
// code with a smaller limit.
func TestDecodeTooMany(t *testing.T) {
	entries, _ := testLog(t, 4)
	data := encode(t, entries...)
	if es, _, _, err := decode(bytes.NewReader(data), 4, false); err != nil || len(es) != 4 {
		t.Fatalf("4 entries with limit 4: %d entries, %v", len(es), err)
	}
	_, _, _, err := decode(bytes.NewReader(data), 3, false)
	want := "audit: line 4: more than 3 entries"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

func TestDecodeReadError(t *testing.T) {
	entries, _ := testLog(t, 1)
	rerr := errors.New("connection reset")
	r := io.MultiReader(bytes.NewReader(encode(t, entries...)), iotest.ErrReader(rerr))
	es, err := Decode(r)
	if !errors.Is(err, rerr) || !strings.HasPrefix(err.Error(), "audit: line 2: ") || es != nil {
		t.Fatalf("Decode = %d entries, %v; want line 2 and the read error", len(es), err)
	}
}

// DecodeTorn takes bytes after the last newline, at most a line's worth,
// as a torn last entry, and refuses whatever Decode refuses elsewhere.
func TestDecodeTorn(t *testing.T) {
	entries, _ := testLog(t, 3)
	data := encode(t, entries...)
	whole := int64(len(data))
	for _, tt := range []struct {
		name string
		tail string
	}{
		{"none", ""},
		{"half an entry", string(data[:len(data)/6])},
		{"an entry without its newline", strings.TrimSuffix(string(encode(t, entries[0])), "\n")},
		{"zeros", strings.Repeat("\x00", 100)},
		{"a line's worth", strings.Repeat("x", MaxLineLen)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			es, complete, torn, err := DecodeTorn(strings.NewReader(string(data) + tt.tail))
			if err != nil || len(es) != 3 || complete != whole || torn != len(tt.tail) {
				t.Fatalf("DecodeTorn = %d entries, complete %d, torn %d, %v; want 3, %d, %d", len(es), complete, torn, err, whole, len(tt.tail))
			}
			if _, err := Decode(strings.NewReader(string(data) + tt.tail)); (err == nil) != (tt.tail == "") {
				t.Fatalf("Decode with the tail: %v", err)
			}
		})
	}
	for _, tt := range []struct{ name, input, want string }{
		{"more than a line", string(data) + strings.Repeat("x", MaxLineLen+1), "audit: line 4: longer than"},
		{"torn in the middle", string(data[:len(data)-10]) + "\n" + string(encode(t, entries[0])), "audit: line 3: "},
		{"empty line at the end", string(data) + "\n", "audit: line 4: empty line"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			es, _, _, err := DecodeTorn(strings.NewReader(tt.input))
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) || es != nil {
				t.Fatalf("DecodeTorn = %d entries, %v; want an error starting %q", len(es), err, tt.want)
			}
		})
	}
}
