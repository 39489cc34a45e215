package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"
)

// Encode writes entries to w as JSON Lines, one Write call per entry, so a
// file opened with O_APPEND receives whole lines. It writes nothing for an
// entry that Decode would not read back unchanged: a field that is not valid
// UTF-8, a Time not in UTC or out of range, or a line over MaxLineLen. It
// does not verify the chain.
func Encode(w io.Writer, entries ...Entry) error {
	for i := range entries {
		line, err := marshalLine(&entries[i])
		if err != nil {
			return fmt.Errorf("audit: encode entry %d: %w", entries[i].Seq, err)
		}
		if _, err := w.Write(line); err != nil {
			return fmt.Errorf("audit: write entry %d: %w", entries[i].Seq, err)
		}
	}
	return nil
}

// marshalLine returns e as one JSON line, with its "\n".
func marshalLine(e *Entry) ([]byte, error) {
	for _, s := range [...]string{e.Actor, e.Op, e.Object, e.Result} {
		if !utf8.ValidString(s) {
			return nil, errors.New("field is not valid UTF-8")
		}
	}
	if e.Time.Location() != time.UTC {
		return nil, errors.New("time is not in UTC")
	}
	if !timeInRange(e.Time) {
		return nil, errors.New("time out of range")
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(e); err != nil {
		return nil, err
	}
	if buf.Len()-1 > MaxLineLen {
		return nil, fmt.Errorf("encoded entry longer than %d bytes", MaxLineLen)
	}
	return buf.Bytes(), nil
}

// Decode reads a log written by Encode. It only parses; call Verify to check
// the chain. It rejects, naming the line:
//   - a line longer than MaxLineLen bytes, or more than MaxEntries lines;
//   - an empty line, or a last line without its "\n";
//   - a line that is not exactly one JSON object, without surrounding
//     space, or has an unknown field;
//   - a Hash that is not 64 lower-case hex digits;
//   - a Time not in UTC ("Z") or out of range.
//
// Decode holds every entry in memory: at most MaxEntries of them.
func Decode(r io.Reader) ([]Entry, error) {
	entries, _, _, err := decode(r, MaxEntries, false)
	return entries, err
}

// DecodeTorn reads a log as Decode does, but takes a torn last line: bytes
// after the last "\n" (or the only bytes, if there is none), at most
// MaxLineLen of them, are what a write cut short leaves (a crash, a full
// disk) and are returned as a count rather than refused. Complete is the
// length of the whole lines before them, where a writer truncates the log
// to resume; torn is the number of bytes after. Every other defect, a
// longer tail included, is refused as Decode refuses it: only the very end
// of a log can be torn.
func DecodeTorn(r io.Reader) (entries []Entry, complete int64, torn int, err error) {
	return decode(r, MaxEntries, true)
}

// decode is Decode and DecodeTorn with the entry limit as a parameter, for
// tests.
func decode(r io.Reader, maxEntries int, tornOK bool) ([]Entry, int64, int, error) {
	br := bufio.NewReaderSize(r, MaxLineLen+1)
	var entries []Entry
	var off int64
	for n := 1; ; n++ {
		line, err := br.ReadSlice('\n')
		switch {
		case err == io.EOF && len(line) == 0:
			return entries, off, 0, nil
		case err == io.EOF && tornOK && len(line) <= MaxLineLen:
			return entries, off, len(line), nil
		case err == io.EOF:
			return nil, 0, 0, fmt.Errorf("audit: line %d: missing newline (truncated)", n)
		case err == bufio.ErrBufferFull:
			return nil, 0, 0, fmt.Errorf("audit: line %d: longer than %d bytes", n, MaxLineLen)
		case err != nil:
			return nil, 0, 0, fmt.Errorf("audit: line %d: %w", n, err)
		}
		if len(entries) == maxEntries {
			return nil, 0, 0, fmt.Errorf("audit: line %d: more than %d entries", n, maxEntries)
		}
		e, err := parseLine(line[:len(line)-1])
		if err != nil {
			return nil, 0, 0, fmt.Errorf("audit: line %d: %w", n, err)
		}
		entries = append(entries, e)
		off += int64(len(line))
	}
}

// parseLine parses one line without its "\n".
func parseLine(line []byte) (Entry, error) {
	var e Entry
	if len(line) == 0 {
		return e, errors.New("empty line")
	}
	if line[0] != '{' {
		return e, errors.New("not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return e, err
	}
	if dec.InputOffset() != int64(len(line)) {
		return e, errors.New("trailing data after entry")
	}
	if e.Time.Location() != time.UTC {
		return e, errors.New("time is not in UTC")
	}
	if !timeInRange(e.Time) {
		return e, errors.New("time out of range")
	}
	return e, nil
}
