package wrap

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

// fuzzKeyring holds the key the fuzz seeds are wrapped under, so that the
// fuzzer starts from envelopes that open.
func fuzzKeyring(tb testing.TB) *Keyring {
	return keyringWith(tb, "fuzz", 1, bytes.Repeat([]byte{0x5a}, 32))
}

func addEnvelopeSeeds(f *testing.F) {
	k := fuzzKeyring(f)
	id := testIdentity(f)
	hsm := mustHSMRecipient(f, newFakeHSM(f, "hsm-key"))
	for _, n := range []int{0, 1, 100} {
		f.Add(seal(f, pattern(n), k))
	}
	f.Add(seal(f, pattern(10), k, id.Recipient(), hsm))
	f.Add(seal(f, pattern(10), stanzaRecipient{Type: "x", Args: []string{"a", "b"}, Body: []byte{1, 2, 3}}))
	env := seal(f, pattern(10), k)
	for _, i := range []int{8, 25, 26, 27, 28, 29} {
		bad := bytes.Clone(env)
		bad[i] ^= 0x01
		f.Add(bad)
	}
	f.Add([]byte(magic))
	f.Add([]byte{})
}

// FuzzReadHeader: ReadHeader never panics, fails only with the format's
// sentinels, reads exactly the header, and what it parses re-serializes to
// the same bytes.
func FuzzReadHeader(f *testing.F) {
	addEnvelopeSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		h, err := ReadHeader(r)
		if err != nil {
			if h != nil {
				t.Fatal("a header and an error")
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrUnsupportedVersion) {
				t.Fatalf("error of no known kind: %v", err)
			}
			return
		}
		consumed := len(data) - r.Len()
		again, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary of a parsed header: %v", err)
		}
		if !bytes.Equal(again, data[:consumed]) {
			t.Fatalf("re-serialized\n%x\nparsed from\n%x", again, data[:consumed])
		}
	})
}

// FuzzDecrypt: decrypting anything never panics, and every failure is one
// of the package's errors.
func FuzzDecrypt(f *testing.F) {
	addEnvelopeSeeds(f)
	k := fuzzKeyring(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Decrypt(context.Background(), bytes.NewReader(data), k)
		if err == nil {
			_, err = io.Copy(io.Discard, r)
		}
		if err != nil && !isAny(err, []error{ErrMalformed, ErrTruncated, ErrUnsupportedVersion, ErrTampered, ErrUnknownKey}) {
			t.Fatalf("error of no known kind: %v", err)
		}
	})
}

// FuzzParseKeyring: the keyring parser never panics and what it accepts
// marshals back byte for byte.
func FuzzParseKeyring(f *testing.F) {
	k := testKeyring(f, "prod", 3)
	f.Add(k.marshal())
	f.Add(fuzzKeyring(f).marshal())
	f.Add([]byte(keyringMagic + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := parseKeyring(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error of no known kind: %v", err)
			}
			return
		}
		if again := k.marshal(); !bytes.Equal(again, data) {
			t.Fatalf("marshal =\n%q\nparsed from\n%q", again, data)
		}
	})
}

// FuzzParseHPKEKeys: the key file parsers never panic and what they accept
// marshals back byte for byte.
func FuzzParseHPKEKeys(f *testing.F) {
	id := testIdentity(f)
	pub, _ := id.Recipient().MarshalText()
	priv, _ := id.marshal()
	f.Add(pub)
	f.Add(priv)
	f.Fuzz(func(t *testing.T, data []byte) {
		if r, err := ParseHPKERecipient(data); err == nil {
			if again, _ := r.MarshalText(); !bytes.Equal(again, data) {
				t.Fatal("public key re-encodes differently")
			}
		} else if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error of no known kind: %v", err)
		}
		if id, err := parseHPKEIdentity(data); err == nil {
			if again, _ := id.marshal(); !bytes.Equal(again, data) {
				t.Fatal("private key re-encodes differently")
			}
		} else if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error of no known kind: %v", err)
		}
	})
}
