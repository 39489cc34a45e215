package quorum

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// tokenJSON is the JSON form of a Token, in member order.
type tokenJSON struct {
	ID      string `json:"id"`
	Op      string `json:"op"`
	Object  string `json:"object"`
	Issued  string `json:"issued"`
	Expires string `json:"expires"`
}

// MarshalJSON encodes t as described in the package documentation. It
// refuses a token that UnmarshalJSON would not read back unchanged.
func (t Token) MarshalJSON() ([]byte, error) {
	if err := t.validate(); err != nil {
		return nil, fmt.Errorf("quorum: marshal token: %w", err)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	err := enc.Encode(tokenJSON{
		ID:      hex.EncodeToString(t.ID[:]),
		Op:      t.Op,
		Object:  t.Object,
		Issued:  t.Issued.Format(time.RFC3339Nano),
		Expires: t.Expires.Format(time.RFC3339Nano),
	})
	if err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// UnmarshalJSON decodes a token strictly: it rejects input of more than
// MaxTokenJSON bytes, anything but one JSON object, a missing, duplicate or
// unknown member (names are case-sensitive), a member that is not a string,
// an ID that is not 32 lower-case hex digits, a time that is not in the
// canonical form MarshalJSON writes, and a token that breaks the limits in
// the package documentation. On error it leaves t unchanged.
func (t *Token) UnmarshalJSON(b []byte) error {
	tok, err := parseToken(b)
	if err != nil {
		return fmt.Errorf("quorum: parse token: %w", err)
	}
	*t = tok
	return nil
}

func parseToken(b []byte) (Token, error) {
	var tok Token
	if len(b) > MaxTokenJSON {
		return tok, fmt.Errorf("longer than %d bytes", MaxTokenJSON)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if d, err := dec.Token(); err != nil || d != json.Delim('{') {
		return tok, errors.New("not a JSON object")
	}
	seen := make(map[string]bool, 5)
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return tok, err
		}
		name, _ := k.(string) // object keys are always strings
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return tok, err
		}
		var s string
		if len(raw) == 0 || raw[0] != '"' {
			return tok, fmt.Errorf("member %q is not a string", name)
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return tok, err
		}
		if seen[name] {
			return tok, fmt.Errorf("duplicate member %q", name)
		}
		seen[name] = true
		switch name {
		case "id":
			err = parseID(&tok.ID, s)
		case "op":
			tok.Op = s
		case "object":
			tok.Object = s
		case "issued":
			tok.Issued, err = parseTime(s)
		case "expires":
			tok.Expires, err = parseTime(s)
		default:
			return tok, fmt.Errorf("unknown member %q", name)
		}
		if err != nil {
			return tok, fmt.Errorf("member %q: %w", name, err)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return tok, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return tok, errors.New("trailing data after token")
	}
	for _, name := range [...]string{"id", "op", "object", "issued", "expires"} {
		if !seen[name] {
			return tok, fmt.Errorf("missing member %q", name)
		}
	}
	if err := tok.validate(); err != nil {
		return tok, err
	}
	return tok, nil
}

// parseID accepts exactly 32 lower-case hex digits.
func parseID(id *[16]byte, s string) error {
	if len(s) != hex.EncodedLen(len(id)) {
		return errors.New("not 32 lower-case hex digits")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return errors.New("not 32 lower-case hex digits")
		}
	}
	_, err := hex.Decode(id[:], []byte(s))
	return err
}

// parseTime accepts only what Format(time.RFC3339Nano) writes for a UTC
// time, so that each time has one encoding.
func parseTime(s string) (time.Time, error) {
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || tm.Location() != time.UTC || tm.Format(time.RFC3339Nano) != s {
		return time.Time{}, errors.New("not an RFC 3339 time in canonical UTC form")
	}
	return tm, nil
}
