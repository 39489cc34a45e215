package wrap

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/cryptotest"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors from the fixed inputs in writeVectors")

// vector is one file of testdata/vectors (docs/FORMATS.md 8.9).
type vector struct {
	Description string `json:"description"`
	// Identity to open the envelope with: exactly one of a keyring file,
	// an HPKE private key file, or the fake HSM's key id and KEK.
	Keyring  string `json:"keyring,omitempty"`
	HPKEKey  string `json:"hpke_private_key,omitempty"`
	HSMKeyID string `json:"hsm_key_id,omitempty"`
	HSMKEK   string `json:"hsm_kek,omitempty"`
	DEK      string `json:"dek,omitempty"`       // hex, for the implementer
	ObjectID string `json:"object_id,omitempty"` // hex
	// Derived from dek and the header core, for the implementer:
	MACKey     string `json:"header_mac_key,omitempty"`
	BodyKey    string `json:"body_key,omitempty"`
	BodyNonce  string `json:"body_nonce,omitempty"`
	Plaintext  string `json:"plaintext,omitempty"` // hex; or:
	PatternLen int    `json:"plaintext_pattern_length,omitempty"`
	Envelope   string `json:"envelope"` // hex
	// Reproducible says that encrypting the plaintext with dek and
	// object_id to the identity (a keyring's current key, the HSM key)
	// gives the envelope byte for byte. HPKE encapsulation is randomized,
	// so HPKE vectors are decrypt-only.
	Reproducible bool `json:"reproducible"`
	// RewrapOf names a vector whose envelope, rewrapped with this
	// vector's identity to the same, gives this envelope.
	RewrapOf string `json:"rewrap_of,omitempty"`
	Expect   string `json:"expect"`          // "ok" or a sentinel's name
	Where    string `json:"where,omitempty"` // "header" or "body", for failures
}

var vectorErrors = map[string]error{
	"ErrUnknownKey":         ErrUnknownKey,
	"ErrTampered":           ErrTampered,
	"ErrTruncated":          ErrTruncated,
	"ErrMalformed":          ErrMalformed,
	"ErrUnsupportedVersion": ErrUnsupportedVersion,
}

// vectorPattern is the plaintext of plaintext_pattern_length: byte i is
// i mod 251.
func vectorPattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

func (v *vector) plaintext(tb testing.TB) []byte {
	if v.PatternLen > 0 {
		return vectorPattern(v.PatternLen)
	}
	return mustHex(tb, v.Plaintext)
}

func mustHex(tb testing.TB, s string) []byte {
	tb.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// identity builds the vector's identity; for a keyring or HSM it is also
// the recipient that reproduces the envelope.
func (v *vector) identity(tb testing.TB) (Identity, Recipient) {
	tb.Helper()
	switch {
	case v.Keyring != "":
		k, err := parseKeyring([]byte(v.Keyring))
		if err != nil {
			tb.Fatal(err)
		}
		return k, k
	case v.HPKEKey != "":
		id, err := parseHPKEIdentity([]byte(v.HPKEKey))
		if err != nil {
			tb.Fatal(err)
		}
		return id, nil
	case v.HSMKeyID != "":
		r := mustHSMRecipient(tb, &fakeHSM{id: v.HSMKeyID, kek: mustHex(tb, v.HSMKEK)})
		return r, r
	}
	tb.Fatal("vector without an identity")
	return nil, nil
}

// TestVectors runs every file of testdata/vectors.
func TestVectors(t *testing.T) {
	if *update {
		writeVectors(t)
	}
	files, err := filepath.Glob("testdata/vectors/*.json")
	if err != nil || len(files) < 20 {
		t.Fatalf("%d vectors in testdata/vectors: %v", len(files), err)
	}
	envelopes := map[string][]byte{}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			v := readVector(t, file)
			env := mustHex(t, v.Envelope)
			envelopes[filepath.Base(file)] = env
			id, rcpt := v.identity(t)
			got, herr, berr := open(env, id)
			if v.Expect == "ok" {
				if herr != nil || berr != nil {
					t.Fatalf("%s: %v, %v", v.Description, herr, berr)
				}
				if !bytes.Equal(got, v.plaintext(t)) {
					t.Fatalf("%s: plaintext differs", v.Description)
				}
			} else {
				want := vectorErrors[v.Expect]
				if want == nil {
					t.Fatalf("unknown expectation %q", v.Expect)
				}
				err := map[string]error{"header": herr, "body": berr}[v.Where]
				if !errors.Is(err, want) {
					t.Fatalf("%s: got %v, %v; want %s in the %s", v.Description, herr, berr, v.Expect, v.Where)
				}
			}
			if v.MACKey != "" {
				mk, bk, bn := deriveAll(mustHex(t, v.DEK), env)
				if hex.EncodeToString(mk) != v.MACKey || hex.EncodeToString(bk) != v.BodyKey || hex.EncodeToString(bn) != v.BodyNonce {
					t.Fatal("derived keys differ from the vector's")
				}
			}
			if v.Reproducible {
				var id [ObjectIDSize]byte
				copy(id[:], mustHex(t, v.ObjectID))
				var buf bytes.Buffer
				w, err := encrypt(context.Background(), &buf, mustHex(t, v.DEK), id, []Recipient{rcpt})
				if err != nil {
					t.Fatal(err)
				}
				w.Write(v.plaintext(t))
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf.Bytes(), env) {
					t.Fatalf("%s: encrypting again gives\n%x", v.Description, buf.Bytes())
				}
			}
			if v.RewrapOf != "" {
				src := mustHex(t, readVector(t, filepath.Join("testdata/vectors", v.RewrapOf)).Envelope)
				var buf bytes.Buffer
				if err := Rewrap(context.Background(), bytes.NewReader(src), &buf, []Identity{id}, rcpt); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf.Bytes(), env) {
					t.Fatalf("rewrapping %s gives another envelope", v.RewrapOf)
				}
				if !bytes.Equal(src[headerLen(t, src):], env[headerLen(t, env):]) {
					t.Fatal("the rewrapped body differs")
				}
			}
		})
	}
}

// deriveAll returns the header MAC key, body key and DARE random value of
// an envelope whose data key is dek.
func deriveAll(dek, env []byte) (mac, body, nonce []byte) {
	core := env[:coreSize]
	k, n := deriveBody(dek, core)
	return deriveMAC(dek, core), k, n[:]
}

func readVector(tb testing.TB, file string) *vector {
	tb.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		tb.Fatal(err)
	}
	var v vector
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		tb.Fatalf("%s: %v", file, err)
	}
	return &v
}

// Fixed inputs of the vectors.
var (
	vecKey1   = bytes.Repeat([]byte{0x11}, 32) // keyring "vector" v1
	vecKey2   = bytes.Repeat([]byte{0x22}, 32) // keyring "vector" v2
	vecHSMKEK = bytes.Repeat([]byte{0x44}, 32)
	vecDEK    = mustHexString("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
	vecObject = mustHexString("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
	vecText   = []byte("hsmbackup outer envelope, test vector\n")
	vecHPKE   = bytes.Repeat([]byte{0x33}, 32) // the HPKE private key (seed)
)

func mustHexString(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// vectorKeyringText is a keyring file holding the given versions of key
// "vector", the last current.
func vectorKeyringText(versions ...int) string {
	keys := map[int][]byte{1: vecKey1, 2: vecKey2}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\ncurrent vector %d\n", keyringMagic, versions[len(versions)-1])
	for _, v := range versions {
		fmt.Fprintf(&b, "key vector %d %s %s\n", v, testTime.Format(createdLayout), base64.StdEncoding.EncodeToString(keys[v]))
	}
	return b.String()
}

// writeVectors regenerates testdata/vectors. Everything but HPKE is
// deterministic; HPKE's randomness is fixed with cryptotest so that a
// regeneration changes nothing unless the format or crypto/hpke does.
func writeVectors(t *testing.T) {
	cryptotest.SetGlobalRandom(t, 1)
	dir := "testdata/vectors"
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var oid [ObjectIDSize]byte
	copy(oid[:], vecObject)
	make1 := func(rcpts []Recipient, plaintext []byte) []byte {
		var buf bytes.Buffer
		w, err := encrypt(context.Background(), &buf, bytes.Clone(vecDEK), oid, rcpts)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(plaintext)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	hexs := hex.EncodeToString
	save := func(name string, v vector) {
		if v.Expect == "" {
			v.Expect = "ok"
			mk, bk, bn := deriveAll(vecDEK, mustHex(t, v.Envelope))
			v.MACKey, v.BodyKey, v.BodyNonce = hexs(mk), hexs(bk), hexs(bn)
		}
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".json"), append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	flip := func(env []byte, i int, mask byte) []byte {
		b := bytes.Clone(env)
		b[i] ^= mask
		return b
	}

	kr1 := vectorKeyringText(1)
	k1, _ := parseKeyring([]byte(kr1))
	kr12 := vectorKeyringText(1, 2)
	k12, _ := parseKeyring([]byte(kr12))
	kr2 := vectorKeyringText(2)

	base := func(desc string, env []byte) vector {
		return vector{Description: desc, Keyring: kr1, DEK: hexs(vecDEK), ObjectID: hexs(vecObject), Plaintext: hexs(vecText), Envelope: hexs(env)}
	}
	env1 := make1([]Recipient{k1}, vecText)
	hl := headerLen(t, env1)
	v := base("keyring recipient: a short plaintext, one DARE package", env1)
	v.Reproducible = true
	save("01-keyring", v)

	env2 := make1([]Recipient{k1}, vectorPattern(PackageSize+1))
	v = base("keyring recipient: 65537 bytes, a full package and a 1-byte final package", env2)
	v.Plaintext, v.PatternLen, v.Reproducible = "", PackageSize+1, true
	save("02-keyring-two-packages", v)

	env3 := make1([]Recipient{k1}, nil)
	v = base("keyring recipient: empty plaintext, flag 0x01, no body", env3)
	v.Plaintext, v.Reproducible = "", true
	save("03-keyring-empty", v)

	kem, _, _ := hpkeSuite()
	sk, err := kem.NewPrivateKey(vecHPKE)
	if err != nil {
		t.Fatal(err)
	}
	hid := newHPKEIdentity(sk)
	hpem, _ := hid.marshal()
	env4 := make1([]Recipient{hid.Recipient()}, vecText)
	save("04-hpke", vector{Description: "HPKE MLKEM768-X25519 recipient, decrypt-only (encapsulation is randomized)",
		HPKEKey: string(hpem), DEK: hexs(vecDEK), ObjectID: hexs(vecObject), Plaintext: hexs(vecText), Envelope: hexs(env4)})

	hsm := mustHSMRecipient(t, &fakeHSM{id: "cluster-1/key-1", kek: vecHSMKEK})
	env5 := make1([]Recipient{hsm}, vecText)
	save("05-hsm", vector{Description: "HSM recipient; the test fake wraps with AES-KWP under hsm_kek",
		HSMKeyID: "cluster-1/key-1", HSMKEK: hexs(vecHSMKEK), DEK: hexs(vecDEK), ObjectID: hexs(vecObject),
		Plaintext: hexs(vecText), Envelope: hexs(env5), Reproducible: true})

	env6 := make1([]Recipient{k12}, vecText)
	v = base("01 rewrapped to keyring version 2 after a rotation: same body, new stanza and MAC", env6)
	v.Keyring, v.Reproducible, v.RewrapOf = kr12, true, "01-keyring.json"
	save("06-keyring-rewrapped", v)

	env7 := make1([]Recipient{k1, hid.Recipient(), hsm}, vecText)
	v = base("three recipients; opened with the keyring", env7)
	save("07-three-recipients", v)

	fail := func(name, desc string, env []byte, expect, where string) {
		v := base(desc, env)
		v.Expect, v.Where = expect, where
		save(name, v)
	}
	fail("08-object-id-flipped", "01 with an object id byte flipped: header MAC fails", flip(env1, 9, 0x01), "ErrTampered", "header")
	fail("09-mac-flipped", "01 with the last MAC byte flipped", flip(env1, hl-1, 0x01), "ErrTampered", "header")
	fail("10-stanza-body-flipped", "01 with a byte of the wrapped DEK flipped: AES-KWP fails", flip(env1, hl-macSize-1, 0x01), "ErrTampered", "header")
	fail("11-body-flipped", "01 with a body ciphertext byte flipped", flip(env1, hl+20, 0x01), "ErrTampered", "body")
	fail("12-body-missing", "01 cut after the header: no final package", env1[:hl], "ErrTruncated", "body")
	fail("13-header-cut", "01 cut inside the header", env1[:hl-10], "ErrTruncated", "header")
	fail("14-trailing-byte", "01 with a zero byte appended", append(bytes.Clone(env1), 0), "ErrTampered", "body")
	fail("15-bad-magic", "01 with a magic byte changed", flip(env1, 0, 0x01), "ErrMalformed", "header")
	fail("16-version-2", "01 with version 2", flip(env1, 8, 0x03), "ErrUnsupportedVersion", "header")
	fail("17-reserved-flag", "01 with flag 0x02 set", flip(env1, 25, 0x02), "ErrMalformed", "header")
	v = base("01 opened with a keyring that holds only version 2", env1)
	v.Keyring, v.Expect, v.Where = kr2, "ErrUnknownKey", "header"
	save("18-unknown-version", v)
	fail("19-empty-flag-cleared", "03 with its empty flag cleared: header MAC fails", flip(env3, 25, 0x01), "ErrTampered", "header")
	v = base("02 without its final package: cut at the package boundary", env2[:headerLen(t, env2)+16+PackageSize+16])
	v.Plaintext, v.PatternLen, v.Expect, v.Where = "", PackageSize+1, "ErrTruncated", "body"
	save("20-final-package-dropped", v)
	h4 := headerLen(t, env4)
	save("21-hpke-stanza-flipped", vector{Description: "04 with a byte of the HPKE encapsulation flipped",
		HPKEKey: string(hpem), Plaintext: hexs(vecText), Envelope: hexs(flip(env4, h4-macSize-hpkeStanzaSize, 0x01)),
		Expect: "ErrTampered", Where: "header"})
	fail("22-suite-2", "01 with body suite 2", flip(env1, 26, 0x03), "ErrUnsupportedVersion", "header")
}
