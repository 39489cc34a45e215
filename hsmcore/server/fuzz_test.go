package server

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
)

// FuzzDecodeRequests feeds arbitrary bodies to the request decoder for
// every request type the daemon takes: nothing panics, and what decodes
// re-encodes to a body that decodes to the same value (compared by its
// encoding: an empty and a missing byte string are the same on the wire).
func FuzzDecodeRequests(f *testing.F) {
	types := []func() any{
		func() any { return new(api.AttestRequest) },
		func() any { return new(api.CSRRequest) },
		func() any { return new(api.ClusterInitRequest) },
		func() any { return new(api.Credentials) },
		func() any { return new(api.CreateUserRequest) },
		func() any { return new(api.GenerateKeysRequest) },
		func() any { return new(hsmcore.AttributeChange) },
		func() any { return new(api.ShareRequest) },
		func() any { return new(api.CryptoRequest) },
		func() any { return new(api.UnwrapRequest) },
		func() any { return new(api.ChangesRequest) },
		func() any { return new(api.MemberRequest) },
		func() any { return new(api.Record) },
	}
	f.Add(uint8(3), []byte(`{"user":"admin","password":"correct horse battery"}`))
	f.Add(uint8(5), []byte(`{"keys":[{"type":"aes","bits":256,"encrypt":true}]}`))
	f.Add(uint8(6), []byte(`{"label":"x","encrypt":false}`))
	f.Add(uint8(8), []byte(`{"data":"aGVsbG8=","aad":""}`))
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		newV := types[int(which)%len(types)]
		v := newV()
		if err := decode(httptest.NewRequest("POST", "/", bytes.NewReader(body)), v); err != nil {
			return
		}
		again, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		w := newV()
		if err := decode(httptest.NewRequest("POST", "/", bytes.NewReader(again)), w); err != nil {
			t.Fatalf("re-encoded body does not decode: %v\n%s", err, again)
		}
		third, _ := json.Marshal(w)
		if !bytes.Equal(again, third) {
			t.Fatalf("round trip changed the value:\n%s\n%s", again, third)
		}
	})
}
