package device

import (
	"bufio"
	"fmt"
	"io"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/strictjson"
)

// Contents, version 1 (docs/FORMATS.md 2.3.1): JSON lines, as images and
// sealed state were written before version 2. They are only read: every
// image and sealed state taken before still imports and opens.

const (
	contentsFormat1 = "hsmcore-contents/1"
	maxRecordLine   = 64 << 10 // one JSON line
)

// jsonRecords reads contents version 1 for readContents.
type jsonRecords struct {
	sc   *bufio.Scanner
	line int
}

func newJSONRecords(r io.Reader) *jsonRecords {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxRecordLine)
	return &jsonRecords{sc: sc}
}

func (j *jsonRecords) record() int { return j.line }

func (j *jsonRecords) next(v any) error {
	j.line++
	if !j.sc.Scan() {
		if err := j.sc.Err(); err != nil {
			return fmt.Errorf("record %d: %w", j.line, err)
		}
		return fmt.Errorf("record %d: unexpected end: %w", j.line, hsmcore.ErrMalformed)
	}
	if err := strictjson.Unmarshal(j.sc.Bytes(), v); err != nil {
		return fmt.Errorf("record %d: %w: %w", j.line, err, hsmcore.ErrMalformed)
	}
	return nil
}

func (j *jsonRecords) header(h *contentsHeader) error {
	if err := j.next(h); err != nil {
		return err
	}
	if h.Format != contentsFormat1 {
		return fmt.Errorf("contents format %q: %w", h.Format, hsmcore.ErrUnsupportedVersion)
	}
	return nil
}

func (j *jsonRecords) user(u *userRecord) error   { return j.next(u) }
func (j *jsonRecords) key(k *keyRecord) error     { return j.next(k) }
func (j *jsonRecords) change(m *changeMeta) error { return j.next(m) }

func (j *jsonRecords) end() error {
	if j.sc.Scan() {
		return fmt.Errorf("record %d: data after the last record: %w", j.line+1, hsmcore.ErrMalformed)
	}
	if err := j.sc.Err(); err != nil {
		return fmt.Errorf("record %d: %w", j.line+1, err)
	}
	return nil
}
