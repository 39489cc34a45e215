package quorum

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

const katJSON = `{"id":"000102030405060708090a0b0c0d0e0f","op":"user.delete","object":"bob",` +
	`"issued":"2025-03-14T15:09:26.535897932Z","expires":"2025-03-14T15:19:26.535897932Z"}`

// tokensEqual reports whether a and b are the same token, in the same form.
func tokensEqual(a, b Token) bool {
	return a.ID == b.ID && a.Op == b.Op && a.Object == b.Object &&
		a.Issued.Equal(b.Issued) && a.Expires.Equal(b.Expires) &&
		a.Issued.Location() == b.Issued.Location() && a.Expires.Location() == b.Expires.Location()
}

func TestTokenJSONKnownAnswer(t *testing.T) {
	got, err := json.Marshal(katToken(t))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != katJSON {
		t.Errorf("Marshal\n got %s\nwant %s", got, katJSON)
	}
	var tok Token
	if err := json.Unmarshal([]byte(katJSON), &tok); err != nil {
		t.Fatal(err)
	}
	if !tokensEqual(tok, katToken(t)) {
		t.Errorf("Unmarshal = %+v, want %+v", tok, katToken(t))
	}
}

// replace returns katJSON with old replaced by new, which must occur.
func replace(tb testing.TB, old, new string) string {
	tb.Helper()
	if !strings.Contains(katJSON, old) {
		tb.Fatalf("%q not in katJSON", old)
	}
	return strings.Replace(katJSON, old, new, 1)
}

func TestTokenUnmarshal(t *testing.T) {
	const (
		id      = `"id":"000102030405060708090a0b0c0d0e0f"`
		op      = `"op":"user.delete"`
		object  = `"object":"bob"`
		issued  = `"issued":"2025-03-14T15:09:26.535897932Z"`
		expires = `"expires":"2025-03-14T15:19:26.535897932Z"`
	)
	long := strings.Repeat("é", MaxObjectLen/2)
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"canonical", katJSON, true},
		{"other member order", "{" + strings.Join([]string{expires, object, id, issued, op}, ",") + "}", true},
		{"white space", " {\n\t" + strings.Join([]string{id, op, object, issued, expires}, " ,\n ") + "\n} ", true},
		{"escaped object", replace(t, `"bob"`, `"\u0062ob"`), true},
		{"empty object", replace(t, `"bob"`, `""`), true},
		{"object 256 bytes", replace(t, `"bob"`, `"`+long+`"`), true},
		{"no fraction", replace(t, `26.535897932Z`, `26Z`), true},
		{"short fraction", replace(t, `26.535897932Z`, `26.5Z`), true},

		{"empty", ``, false},
		{"null", `null`, false},
		{"array", `[]`, false},
		{"string", `"x"`, false},
		{"empty JSON object", `{}`, false},
		{"truncated", katJSON[:len(katJSON)-1], false},
		{"trailing object", katJSON + `{}`, false},
		{"trailing garbage", katJSON + `x`, false},
		{"too long", katJSON[:len(katJSON)-1] + strings.Repeat(" ", MaxTokenJSON) + "}", false},
		{"missing id", "{" + strings.Join([]string{op, object, issued, expires}, ",") + "}", false},
		{"missing object", "{" + strings.Join([]string{id, op, issued, expires}, ",") + "}", false},
		{"missing expires", "{" + strings.Join([]string{id, op, object, issued}, ",") + "}", false},
		{"duplicate op", "{" + strings.Join([]string{id, op, `"op":"key.trust"`, object, issued, expires}, ",") + "}", false},
		{"duplicate same value", "{" + strings.Join([]string{id, op, op, object, issued, expires}, ",") + "}", false},
		{"unknown member", replace(t, `{`, `{"extra":"x",`), false},
		{"case-folded name", replace(t, `"id"`, `"ID"`), false},
		{"null member", replace(t, `"bob"`, `null`), false},
		{"number member", replace(t, `"bob"`, `42`), false},
		{"object member", replace(t, `"bob"`, `{}`), false},
		{"upper-case ID", replace(t, `0a0b0c0d0e0f`, `0A0B0C0D0E0F`), false},
		{"short ID", replace(t, `0e0f"`, `0e"`), false},
		{"long ID", replace(t, `0e0f"`, `0e0f10"`), false},
		{"zero ID", replace(t, `000102030405060708090a0b0c0d0e0f`, strings.Repeat("0", 32)), false},
		{"bad op", replace(t, `user.delete`, `User.Delete`), false},
		{"empty op", replace(t, `"user.delete"`, `""`), false},
		{"object 257 bytes", replace(t, `"bob"`, `"`+long+`x"`), false},
		{"object control character", replace(t, `"bob"`, `"b\u0007b"`), false},
		{"object newline", replace(t, `"bob"`, `"b\nb"`), false},
		{"object C1 control", replace(t, `"bob"`, `"b\u009bb"`), false},
		{"object bidi override", replace(t, `"bob"`, `"b\u202eb"`), false},
		{"object zero-width space", replace(t, `"bob"`, `"b\u200bb"`), false},
		{"offset time", replace(t, `15:09:26.535897932Z`, `15:09:26.535897932+00:00`), false},
		{"non-zero offset", replace(t, `15:09:26.535897932Z`, `16:09:26.535897932+01:00`), false},
		{"lower-case z", replace(t, `15:09:26.535897932Z`, `15:09:26.535897932z`), false},
		{"lower-case t", replace(t, `14T15:09:26`, `14t15:09:26`), false},
		{"trailing zero", replace(t, `26.535897932Z`, `26.5358979320Z`), false},
		{"zero fraction", replace(t, `26.535897932Z`, `26.0Z`), false},
		{"date only", replace(t, `2025-03-14T15:09:26.535897932Z`, `2025-03-14`), false},
		{"out of range", replace(t, `2025-03-14T15:19`, `2263-03-14T15:19`), false},
		{"expires equals issued", replace(t, `15:19:26`, `15:09:26`), false},
		{"expires before issued", replace(t, `15:19:26`, `15:08:26`), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := Token{Op: "sentinel"}
			err := tok.UnmarshalJSON([]byte(tt.in))
			if (err == nil) != tt.ok {
				t.Fatalf("UnmarshalJSON(%s) = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if err != nil {
				if tok.Op != "sentinel" {
					t.Error("failed UnmarshalJSON changed the token")
				}
				if !strings.HasPrefix(err.Error(), "quorum: ") {
					t.Errorf("error %q lacks the package prefix", err)
				}
				return
			}
			// What parses re-marshals to canonical form and parses back equal.
			out, err := json.Marshal(tok)
			if err != nil {
				t.Fatal(err)
			}
			var again Token
			if err := json.Unmarshal(out, &again); err != nil {
				t.Fatal(err)
			}
			if !tokensEqual(tok, again) {
				t.Errorf("round trip: %+v != %+v", again, tok)
			}
		})
	}
}

// A Token nests inside other JSON documents, as in API messages.
func TestTokenJSONNested(t *testing.T) {
	type msg struct {
		Token     Token      `json:"token"`
		Approvals []Approval `json:"approvals"`
	}
	in := `{"token": ` + katJSON + `, "approvals": [{"officer":"alice","signature":"AAEC"}]}`
	var m msg
	if err := json.Unmarshal([]byte(in), &m); err != nil {
		t.Fatal(err)
	}
	if !tokensEqual(m.Token, katToken(t)) || m.Approvals[0].Officer != "alice" || !bytes.Equal(m.Approvals[0].Signature, []byte{0, 1, 2}) {
		t.Errorf("got %+v", m)
	}
	bad := `{"token": ` + replace(t, `"bob"`, `null`) + `}`
	if err := json.Unmarshal([]byte(bad), &m); err == nil {
		t.Error("nested bad token accepted")
	}
}

func TestTokenMarshalRefuses(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Token)
	}{
		{"zero token", func(k *Token) { *k = Token{} }},
		{"zero ID", func(k *Token) { k.ID = [16]byte{} }},
		{"bad op", func(k *Token) { k.Op = "no spaces" }},
		{"invalid UTF-8 object", func(k *Token) { k.Object = "b\xffb" }},
		{"long object", func(k *Token) { k.Object = strings.Repeat("x", MaxObjectLen+1) }},
		{"local time", func(k *Token) { k.Issued = k.Issued.In(time.FixedZone("X", 0)) }},
		{"out of range", func(k *Token) { k.Expires = time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"expires first", func(k *Token) { k.Expires = k.Issued }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := katToken(t)
			tt.mutate(&tok)
			if b, err := json.Marshal(tok); err == nil {
				t.Errorf("Marshal = %s, want error", b)
			}
		})
	}
}
