package quorum

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzTokenJSON checks that parsing never panics, and that whatever parses
// marshals to a canonical form that parses back to the same token and
// re-marshals to the same bytes, with the same SigningBytes.
func FuzzTokenJSON(f *testing.F) {
	f.Add([]byte(katJSON))
	f.Add([]byte(`{"expires":"2025-01-01T00:10:00Z","object":"","id":"ffffffffffffffffffffffffffffffff","issued":"2025-01-01T00:00:00Z","op":"image.import"}`))
	f.Add([]byte(` {"id":"000102030405060708090a0b0c0d0e0f", "op":"key.trust","object":"\u00e9\ud83d\ude00\ufffd","issued":"1678-01-01T00:00:00.1Z","expires":"2262-04-11T23:47:16.854775807Z"} `))
	f.Add([]byte(`{"id":"000102030405060708090a0b0c0d0e0f","op":"user.delete","op":"x","object":"bob","issued":"2025-03-14T15:09:26Z","expires":"2025-03-14T15:19:26Z"}`))
	f.Add([]byte(`{"id":null}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, in []byte) {
		var tok Token
		if err := tok.UnmarshalJSON(in); err != nil {
			return
		}
		out, err := json.Marshal(tok)
		if err != nil {
			t.Fatalf("parsed token does not marshal: %v", err)
		}
		var again Token
		if err := json.Unmarshal(out, &again); err != nil {
			t.Fatalf("marshalled token does not parse: %v\n%s", err, out)
		}
		if !tokensEqual(tok, again) {
			t.Fatalf("round trip changed the token: %+v != %+v", again, tok)
		}
		out2, err := json.Marshal(again)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, out2) {
			t.Fatalf("marshal not canonical:\n%s\n%s", out, out2)
		}
		if !bytes.Equal(tok.SigningBytes(), again.SigningBytes()) {
			t.Fatal("round trip changed SigningBytes")
		}
	})
}
