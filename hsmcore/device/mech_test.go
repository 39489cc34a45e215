package device

import (
	"bytes"
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hpke"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/keywrap"
	"github.com/hsmbackup/hsmbackup/internal/testenv"
)

// mechWrappingKey is the wrapping key each mechanism uses in these tests.
func mechWrappingKey(mech hsmcore.Mechanism) hsmcore.KeySpec {
	switch mech.WrappingKeyType() {
	case hsmcore.RSA:
		return hsmcore.KeySpec{Type: hsmcore.RSA, Bits: 2048, Wrap: true, Unwrap: true}
	case hsmcore.HPKE:
		return hsmcore.KeySpec{Type: hsmcore.HPKE, Bits: 768, Wrap: true, Unwrap: true}
	}
	return hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Wrap: true, Unwrap: true}
}

// wrappingKeys are one wrapping key of each type, made by s.
type wrappingKeys map[hsmcore.KeyType]hsmcore.KeyInfo

func newWrappingKeys(t testing.TB, s *Session) wrappingKeys {
	t.Helper()
	ks := wrappingKeys{}
	for _, m := range []hsmcore.Mechanism{hsmcore.AESKWP, hsmcore.RSAAES, hsmcore.HPKEWrap} {
		ks[m.WrappingKeyType()] = mustGenerateKey(t, s, mechWrappingKey(m))
	}
	return ks
}

func (ks wrappingKeys) of(m hsmcore.Mechanism) hsmcore.KeyInfo { return ks[m.WrappingKeyType()] }

// Each mechanism round-trips each kind of key it can carry, and the key
// unwrapped still works with what the original made: it decrypts the
// original's ciphertext, or its signature verifies under the original.
func TestMechanismsRoundTrip(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	targets := map[string]hsmcore.KeySpec{
		"aes-256":    {Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true, Extractable: true},
		"aes-128":    {Type: hsmcore.AES, Bits: 128, Encrypt: true, Decrypt: true, Extractable: true},
		"ec-p256":    {Type: hsmcore.EC, Curve: "P-256", Sign: true, Verify: true, Extractable: true},
		"rsa-2048":   {Type: hsmcore.RSA, Bits: 2048, Sign: true, Verify: true, Extractable: true},
		"secret-192": {Type: hsmcore.GenericSecret, Bits: 192, Extractable: true},
	}
	// What does not fit: direct OAEP carries no private key, and AES-KW
	// only multiples of 8 bytes (every PKCS#8 DER here is not one, or is by
	// chance: it is left to the layout test).
	fits := func(mech hsmcore.Mechanism, spec hsmcore.KeySpec) bool {
		switch mech {
		case hsmcore.RSAOAEP, hsmcore.RSAOAEPSHA1:
			return spec.Type == hsmcore.AES || spec.Type == hsmcore.GenericSecret
		case hsmcore.AESKW:
			return spec.Type == hsmcore.AES || spec.Type == hsmcore.GenericSecret
		}
		return true
	}
	for _, mech := range hsmcore.Mechanisms {
		wk := mustGenerateKey(t, cu, mechWrappingKey(mech))
		for name, spec := range targets {
			if !fits(mech, spec) {
				continue
			}
			t.Run(fmt.Sprintf("%s/%s", mech, name), func(t *testing.T) {
				orig := mustGenerateKey(t, cu, spec)
				wrapped, err := cu.WrapKey(wk.Handle, orig.Handle, mech)
				if err != nil {
					t.Fatal(err)
				}
				back := spec
				back.Label = "unwrapped"
				u, err := cu.UnwrapKey(wk.Handle, mech, wrapped, back)
				if err != nil {
					t.Fatal(err)
				}
				if u.KCV != orig.KCV || u.Local || u.NeverExtractable {
					t.Fatalf("unwrapped %+v, want the check value %s, not local, not never-extractable", u, orig.KCV)
				}
				assertSameKey(t, cu, orig, u)
			})
		}
	}
}

// assertSameKey shows that b works as a: it opens a's ciphertext, or its
// signature verifies with a.
func assertSameKey(t *testing.T, s *Session, a, b hsmcore.KeyInfo) {
	t.Helper()
	msg := []byte("moved without ever being exposed")
	switch a.Type {
	case hsmcore.AES:
		ct, err := s.Encrypt(a.Handle, msg, nil)
		if err != nil {
			t.Fatal(err)
		}
		pt, err := s.Decrypt(b.Handle, ct, nil)
		if err != nil || !bytes.Equal(pt, msg) {
			t.Fatalf("the unwrapped key does not decrypt the original's ciphertext: %v", err)
		}
	case hsmcore.EC, hsmcore.RSA:
		sig, err := s.Sign(b.Handle, msg)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Verify(a.Handle, msg, sig); err != nil {
			t.Fatalf("the original does not verify the unwrapped key's signature: %v", err)
		}
	}
}

// Every refusal leaves the HSM as it was: a key that is not extractable,
// a wrap-with-trusted key under an untrusted key, a wrapping key of the
// wrong type or without wrap, a crypto user that neither owns nor shares
// the key, and tampered or truncated wrapped bytes.
func TestMechanismRefusals(t *testing.T) {
	d := newDevice(t, stdHW)
	co, cu := initDevice(t, d)
	if err := co.CreateUser("bob", hsmcore.CryptoUser, testPassword); err != nil {
		t.Fatal(err)
	}
	bob := login(t, d, "bob")
	aes := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Wrap: true, Unwrap: true})
	rsaKey := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.RSA, Bits: 2048, Wrap: true, Unwrap: true})
	noWrap := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true})
	fixed := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true})
	wwt := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true, WrapWithTrusted: true})
	movable := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	bobs := mustGenerateKey(t, bob, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})

	for _, tc := range []struct {
		name             string
		s                *Session
		wrapping, target uint64
		mech             hsmcore.Mechanism
		want             error
	}{
		{"not extractable", cu, aes.Handle, fixed.Handle, hsmcore.AESKWP, hsmcore.ErrPermission},
		{"wrap-with-trusted under an untrusted key", cu, aes.Handle, wwt.Handle, hsmcore.RSAAES, hsmcore.ErrPermission},
		{"wrap-with-trusted under an untrusted RSA key", cu, rsaKey.Handle, wwt.Handle, hsmcore.RSAAES, hsmcore.ErrPermission},
		{"an AES mechanism with an RSA key", cu, rsaKey.Handle, movable.Handle, hsmcore.AESGCM, hsmcore.ErrPermission},
		{"an RSA mechanism with an AES key", cu, aes.Handle, movable.Handle, hsmcore.RSAOAEP, hsmcore.ErrPermission},
		{"a wrapping key without wrap", cu, noWrap.Handle, movable.Handle, hsmcore.AESKWP, hsmcore.ErrPermission},
		{"another user's key", cu, aes.Handle, bobs.Handle, hsmcore.AESKWP, hsmcore.ErrNotFound},
		{"with another user's wrapping key", bob, aes.Handle, bobs.Handle, hsmcore.AESKWP, hsmcore.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sealed, contents := snapshot(t, d)
			w, err := tc.s.WrapKey(tc.wrapping, tc.target, tc.mech)
			if !errors.Is(err, tc.want) || w != nil {
				t.Fatalf("got %x, %v; want %v", w, err, tc.want)
			}
			assertUnchanged(t, d, sealed, contents)
		})
	}

	spec := hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true}
	wks := newWrappingKeys(t, cu)
	for _, mech := range hsmcore.Mechanisms {
		wk := wks.of(mech)
		good, err := cu.WrapKey(wk.Handle, movable.Handle, mech)
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range [][]byte{
			flip(good, 0), flip(good, len(good)/2), flip(good, len(good)-1),
			good[:len(good)-1], append(bytes.Clone(good), 0), {}, nil,
		} {
			sealed, contents := snapshot(t, d)
			if _, err := cu.UnwrapKey(wk.Handle, mech, bad, spec); !errors.Is(err, hsmcore.ErrTampered) && !errors.Is(err, hsmcore.ErrInvalid) {
				t.Fatalf("%s: damaged wrapped key (%d bytes): got %v, want ErrTampered", mech, len(bad), err)
			}
			assertUnchanged(t, d, sealed, contents)
		}
		if _, err := bob.UnwrapKey(wk.Handle, mech, good, spec); !errors.Is(err, hsmcore.ErrNotFound) {
			t.Fatalf("%s: unwrap with another user's key: got %v, want ErrNotFound", mech, err)
		}
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

// Each wrap is audited with its mechanism and the key's check value.
func TestWrapAudited(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	wk := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Wrap: true, Unwrap: true})
	k := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true, Extractable: true})
	w, err := cu.WrapKey(wk.Handle, k.Handle, hsmcore.AESGCM)
	if err != nil {
		t.Fatal(err)
	}
	u, err := cu.UnwrapKey(wk.Handle, hsmcore.AESGCM, w, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	entries, _, err := d.AuditLog()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"key.wrap":   fmt.Sprintf("aes-gcm %d/%d kcv=%s", wk.Handle, k.Handle, k.KCV),
		"key.unwrap": fmt.Sprintf("%d aes-gcm from %d kcv=%s", u.Handle, wk.Handle, k.KCV),
	}
	for _, e := range entries {
		if obj, ok := want[e.Op]; ok && e.Object == obj && e.Actor == "alice" && e.Result == "ok" {
			delete(want, e.Op)
		}
	}
	if len(want) != 0 {
		t.Fatalf("no audit entries %v", want)
	}
}

// The layouts are the ones outside tools read: OpenSSL unwraps aes-kwp
// and aes-kw exports with -id-aes256-wrap-pad and -id-aes256-wrap, opens
// the two parts of an rsa-aes export (pkeyutl -decrypt with the OAEP
// options, then the KWP unwrap) and decrypts an rsa-oaep export, each
// giving the key's bytes: the raw AES key, or its PKCS#8 DER. The RSA
// wrapping key's private half is read out of the device here only to hand
// it to OpenSSL, as the destination's HSM would hold it.
func TestMechanismsOpenSSL(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	dir := t.TempDir()
	material := func(h uint64) []byte {
		d.mu.Lock()
		defer d.mu.Unlock()
		return bytes.Clone(d.st.Keys.Get(h).Material)
	}
	run := func(in []byte, args ...string) []byte {
		t.Helper()
		cmd := exec.Command(openssl, args...)
		cmd.Stdin = bytes.NewReader(in)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("openssl %s: %v: %s", strings.Join(args, " "), err, stderr.Bytes())
		}
		return out
	}
	aesWK := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Wrap: true})
	rsaWK := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.RSA, Bits: 3072, Wrap: true})
	kek := hex.EncodeToString(material(aesWK.Handle))
	rsaPEM := filepath.Join(dir, "kek.pem")
	if err := os.WriteFile(rsaPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: material(rsaWK.Handle)}), 0o600); err != nil {
		t.Fatal(err)
	}
	oaep := func(hash string) []string {
		return []string{"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:" + hash, "-pkeyopt", "rsa_mgf1_md:" + hash}
	}
	aesKey := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	ecKey := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-256", Sign: true, Extractable: true})
	for _, tc := range []struct {
		mech   hsmcore.Mechanism
		target hsmcore.KeyInfo
		open   func(wrapped []byte) []byte
	}{
		{hsmcore.AESKWP, ecKey, func(w []byte) []byte {
			return run(w, "enc", "-d", "-id-aes256-wrap-pad", "-iv", "A65959A6", "-K", kek)
		}},
		{hsmcore.AESKW, aesKey, func(w []byte) []byte {
			return run(w, "enc", "-d", "-id-aes256-wrap", "-iv", "A6A6A6A6A6A6A6A6", "-K", kek)
		}},
		{hsmcore.RSAOAEP, aesKey, func(w []byte) []byte {
			return run(w, append([]string{"pkeyutl", "-decrypt", "-inkey", rsaPEM}, oaep("sha256")...)...)
		}},
		{hsmcore.RSAOAEPSHA1, aesKey, func(w []byte) []byte {
			return run(w, append([]string{"pkeyutl", "-decrypt", "-inkey", rsaPEM}, oaep("sha1")...)...)
		}},
		{hsmcore.RSAAES, ecKey, func(w []byte) []byte { return openRSAAES(t, run, rsaPEM, oaep("sha256"), w) }},
		{hsmcore.RSAAESSHA1, ecKey, func(w []byte) []byte { return openRSAAES(t, run, rsaPEM, oaep("sha1"), w) }},
	} {
		t.Run(string(tc.mech), func(t *testing.T) {
			w, err := cu.WrapKey(map[bool]uint64{true: rsaWK.Handle, false: aesWK.Handle}[tc.mech.WrappingKeyType() == hsmcore.RSA], tc.target.Handle, tc.mech)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := tc.open(w), material(tc.target.Handle); !bytes.Equal(got, want) {
				t.Fatalf("OpenSSL opened %x, want the key's bytes %x", got, want)
			}
		})
	}
}

// openRSAAES splits an rsa-aes export (a 3072-bit key's 384-byte OAEP
// part, then the KWP part) and opens it with OpenSSL.
func openRSAAES(t *testing.T, run func([]byte, ...string) []byte, kek string, oaep []string, w []byte) []byte {
	t.Helper()
	const n = 384
	if len(w) <= n {
		t.Fatalf("rsa-aes export of %d bytes", len(w))
	}
	k := run(w[:n], append([]string{"pkeyutl", "-decrypt", "-inkey", kek}, oaep...)...)
	if len(k) != 32 {
		t.Fatalf("the OAEP part holds %d bytes, want an AES-256 key", len(k))
	}
	return run(w[n:], "enc", "-d", "-id-aes256-wrap-pad", "-iv", "A65959A6", "-K", hex.EncodeToString(k))
}

// FuzzUnwrap: any bytes offered as a wrapped key, under any mechanism, are
// refused cleanly or imported, never panic, and a refusal leaves the HSM
// as it was.
func FuzzUnwrap(f *testing.F) {
	d := newDevice(f, stdHW)
	_, cu := initDevice(f, d)
	wks := newWrappingKeys(f, cu)
	k := mustGenerateKey(f, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	for i, mech := range hsmcore.Mechanisms {
		wk := wks.of(mech)
		w, err := cu.WrapKey(wk.Handle, k.Handle, mech)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), w)
	}
	f.Fuzz(func(t *testing.T, m uint8, wrapped []byte) {
		mech := hsmcore.Mechanisms[int(m)%len(hsmcore.Mechanisms)]
		wk := wks.of(mech)
		before := d.StateDigest()
		if _, err := cu.UnwrapKey(wk.Handle, mech, wrapped, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Session: true}); err != nil && d.StateDigest() != before {
			t.Fatalf("a refused unwrap (%v) changed the HSM", err)
		}
	})
}

// An outside public key wraps only what may leave to an untrusted key:
// extractable keys without wrap-with-trusted, with an RSA mechanism; the
// wrap opens with the outside private key; refusals change nothing.
func TestWrapKeyToPublic(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	outside, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&outside.PublicKey)
	movable := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	w, err := cu.WrapKeyToPublic(pub, movable.Handle, hsmcore.RSAAES)
	if err != nil {
		t.Fatal(err)
	}
	k, err := rsa.DecryptOAEP(sha256.New(), nil, outside, w[:256], nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := keywrap.Unwrap(k, w[256:])
	if err != nil || kcv(hsmcore.AES, got, nil) != movable.KCV {
		t.Fatalf("the outside key opens %x (%v), not the key", got, err)
	}

	wwt := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true, WrapWithTrusted: true})
	fixed := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true})
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecPub, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	for _, tc := range []struct {
		name   string
		pub    []byte
		target uint64
		mech   hsmcore.Mechanism
	}{
		{"wrap-with-trusted", pub, wwt.Handle, hsmcore.RSAAES},
		{"not extractable", pub, fixed.Handle, hsmcore.RSAAES},
		{"an AES mechanism", pub, movable.Handle, hsmcore.AESKWP},
		{"an EC public key", ecPub, movable.Handle, hsmcore.RSAAES},
		{"no key", []byte("nothing"), movable.Handle, hsmcore.RSAAES},
	} {
		sealed, contents := snapshot(t, d)
		if w, err := cu.WrapKeyToPublic(tc.pub, tc.target, tc.mech); !errors.Is(err, hsmcore.ErrPermission) || w != nil {
			t.Errorf("%s: got %x, %v; want ErrPermission", tc.name, w, err)
		}
		assertUnchanged(t, d, sealed, contents)
	}
}

// An unwrap template on the unwrapping key bounds every key it unwraps:
// an unwrap asking for more is refused with nothing changed, wrap-with-
// trusted is forced on, and the key can never be widened afterwards (the
// record check refuses such a key in a change record or an image too); a
// key unwrapped there that unwraps in turn is bound as tightly.
func TestUnwrapTemplate(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	tpl := &hsmcore.UnwrapTemplate{Encrypt: true, Decrypt: true, Unwrap: true, WrapWithTrusted: true}
	wk := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Wrap: true, Unwrap: true, UnwrapTemplate: tpl})
	if wk.UnwrapTemplate == nil || *wk.UnwrapTemplate != *tpl {
		t.Fatalf("template %+v, want %+v", wk.UnwrapTemplate, tpl)
	}
	k := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	w, err := cu.WrapKey(wk.Handle, k.Handle, hsmcore.AESKWP)
	if err != nil {
		t.Fatal(err)
	}
	for name, spec := range map[string]hsmcore.KeySpec{
		"wrap":        {Type: hsmcore.AES, Bits: 256, Wrap: true},
		"extractable": {Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true},
		"wider template": {Type: hsmcore.AES, Bits: 256, Unwrap: true,
			UnwrapTemplate: &hsmcore.UnwrapTemplate{Encrypt: true, Sign: true, WrapWithTrusted: true}},
	} {
		sealed, contents := snapshot(t, d)
		if _, err := cu.UnwrapKey(wk.Handle, hsmcore.AESKWP, w, spec); !errors.Is(err, hsmcore.ErrPermission) {
			t.Errorf("%s: got %v, want ErrPermission", name, err)
		}
		assertUnchanged(t, d, sealed, contents)
	}
	u, err := cu.UnwrapKey(wk.Handle, hsmcore.AESKWP, w, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Decrypt: true, Unwrap: true})
	if err != nil {
		t.Fatal(err)
	}
	if !u.WrapWithTrusted || u.Bound == nil || *u.Bound != *tpl || u.UnwrapTemplate == nil || *u.UnwrapTemplate != *tpl {
		t.Fatalf("unwrapped %+v: want wrap-with-trusted forced, bound and template %+v", u, tpl)
	}
	yes := true
	sealed, contents := snapshot(t, d)
	if err := cu.SetAttributes(u.Handle, hsmcore.AttributeChange{Wrap: &yes}); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("widening an unwrapped key: got %v, want ErrPermission", err)
	}
	assertUnchanged(t, d, sealed, contents)
	if err := cu.SetAttributes(u.Handle, hsmcore.AttributeChange{Encrypt: &yes}); err != nil {
		t.Fatalf("a usage the template allows: %v", err)
	}
}

// An hpke key is kept as any other: after a restart (the sealed state read
// again, the key pair derived from its stored seed) it has the same public
// half and check value, and opens what it wrapped before.
func TestHPKEKeySurvivesReopen(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	wk := mustGenerateKey(t, cu, mechWrappingKey(hsmcore.HPKEWrap))
	if len(wk.PublicKey) != 1216 || wk.Bits != 768 || wk.Class != hsmcore.PrivateKey {
		t.Fatalf("hpke key %+v: want a 1216-byte public half, 768 bits, a private key", wk)
	}
	k := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Extractable: true})
	w, err := cu.WrapKey(wk.Handle, k.Handle, hsmcore.HPKEWrap)
	if err != nil {
		t.Fatal(err)
	}
	if len(w) != 1120+32+16 {
		t.Fatalf("hpke wrap of a 32-byte key is %d bytes, want 1120 + 32 + 16", len(w))
	}
	d = reopen(t, d, TestOptions())
	cu = login(t, d, "alice")
	again, err := cu.Key(wk.Handle)
	if err != nil || !bytes.Equal(again.PublicKey, wk.PublicKey) || again.KCV != wk.KCV {
		t.Fatalf("after a restart: %+v, %v", again, err)
	}
	u, err := cu.UnwrapKey(wk.Handle, hsmcore.HPKEWrap, w, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Decrypt: true})
	if err != nil || u.KCV != k.KCV {
		t.Fatalf("unwrap after a restart: %+v, %v", u, err)
	}
}

// The hpke layout is the one FORMATS.md gives: a key sealed outside the HSM
// by Go's crypto/hpke with those parameters, under the public half the HSM
// shows, unwraps to that key (check value of the AES key computed here).
func TestHPKEWrapOpensWithStandardHPKE(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	wk := mustGenerateKey(t, cu, mechWrappingKey(hsmcore.HPKEWrap))
	pk, err := hpke.MLKEM768X25519().NewPublicKey(wk.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	secret := bytes.Repeat([]byte{0x5a}, 32)
	w, err := hpke.Seal(pk, hpke.HKDFSHA256(), hpke.AES256GCM(), []byte("hsmbackup hpke key wrap v1"), secret)
	if err != nil {
		t.Fatal(err)
	}
	u, err := cu.UnwrapKey(wk.Handle, hsmcore.HPKEWrap, w, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Decrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := aes.NewCipher(secret)
	zero := make([]byte, 16)
	b.Encrypt(zero, zero)
	if want := hex.EncodeToString(zero[:3]); u.KCV != want {
		t.Fatalf("unwrapped check value %s, want %s (the key sealed outside)", u.KCV, want)
	}
	// Another info string is another key schedule: refused as tampered.
	w2, _ := hpke.Seal(pk, hpke.HKDFSHA256(), hpke.AES256GCM(), []byte("other"), secret)
	if _, err := cu.UnwrapKey(wk.Handle, hsmcore.HPKEWrap, w2, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256}); !errors.Is(err, hsmcore.ErrTampered) {
		t.Fatalf("sealed with another info: %v, want tampered", err)
	}
}

// The aes-gcm layout, pinned by a published vector: Test Case 14 of "The
// Galois/Counter Mode of Operation" (McGrew and Viega, the vectors NIST's
// GCM specification points to): key 0^256, IV 0^96, plaintext 0^128,
// empty aad. Laid out as FORMATS.md §10 says, IV ‖ ciphertext ‖ tag, it
// unwraps to the 16 zero bytes of an AES-128 key.
func TestAESGCMLayoutKnownAnswer(t *testing.T) {
	wrapped, _ := hex.DecodeString("000000000000000000000000" + "cea7403d4d606b6e074ec5d3baf39d18" + "d0d1c8a799996bf0265b98b5d48ab919")
	w := &keyRecord{KeyInfo: hsmcore.KeyInfo{Type: hsmcore.AES, Bits: 256}, Material: make([]byte, 32)}
	got, err := unwrapMaterial(hsmcore.AESGCM, w, wrapped)
	if err != nil || !bytes.Equal(got, make([]byte, 16)) {
		t.Fatalf("unwrap of the published vector: %x, %v", got, err)
	}
	wrapped[20] ^= 1
	if _, err := unwrapMaterial(hsmcore.AESGCM, w, wrapped); !errors.Is(err, errUnwrap) {
		t.Fatalf("a flipped byte: %v", err)
	}
}

// wycheproofOAEP is a case of testdata/wycheproof/rsa_oaep.json.
type wycheproofOAEP struct {
	File, Mechanism, Comment, Result string
	TcID                             int
	PrivateKeyPkcs8, Msg, Ct, Label  string
}

func loadWycheproofOAEP(t *testing.T) []wycheproofOAEP {
	t.Helper()
	b, err := os.ReadFile("testdata/wycheproof/rsa_oaep.json")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Source string
		Cases  []wycheproofOAEP
	}
	if err := json.Unmarshal(b, &f); err != nil || len(f.Cases) == 0 {
		t.Fatalf("vectors: %v", err)
	}
	return f.Cases
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rsa-oaep and rsa-oaep-sha1 unwrap Wycheproof's published OAEP cases
// (RSA-2048; SHA-256 with MGF1-SHA-256, and SHA-1 with MGF1-SHA-1; empty
// label) to their messages, and refuse its invalid paddings as tampered.
func TestRSAOAEPWycheproof(t *testing.T) {
	for _, c := range loadWycheproofOAEP(t) {
		w := &keyRecord{KeyInfo: hsmcore.KeyInfo{Type: hsmcore.RSA, Bits: 2048}, Material: unhex(t, c.PrivateKeyPkcs8)}
		got, err := unwrapMaterial(hsmcore.Mechanism(c.Mechanism), w, unhex(t, c.Ct))
		switch c.Result {
		case "valid":
			if err != nil || !bytes.Equal(got, unhex(t, c.Msg)) {
				t.Errorf("%s tcId %d: %x, %v; want %s", c.File, c.TcID, got, err, c.Msg)
			}
		default:
			if !errors.Is(err, errUnwrap) {
				t.Errorf("%s tcId %d (%s): %v, want the one tampered error", c.File, c.TcID, c.Comment, err)
			}
		}
	}
}

// rsa-aes and rsa-aes-sha1 are RSAES-OAEP of an AES-256 key E followed by
// KWP(E, T). No published vector of CKM_RSA_AES_KEY_WRAP is known; this
// one joins Wycheproof's OAEP case 7, whose message is the 32 bytes
// e0…ff, taken as E, to the KWP of T = 00112233…ff under that E as
// OpenSSL writes it:
//
//	printf '\x00\x11…\xff' | openssl enc -id-aes256-wrap-pad -iv A65959A6 -K e0e1…feff | xxd -p
//
// (docs/FORMATS.md §10).
func TestRSAAESKnownAnswer(t *testing.T) {
	kwp := unhex(t, "8a02417dd9ca9a98c2a50a89a54a4ca0acc0ea1814d93388")
	want := unhex(t, "00112233445566778899aabbccddeeff")
	mechs := map[string]hsmcore.Mechanism{"rsa-oaep": hsmcore.RSAAES, "rsa-oaep-sha1": hsmcore.RSAAESSHA1}
	n := 0
	for _, c := range loadWycheproofOAEP(t) {
		if c.TcID != 7 || c.Result != "valid" {
			continue
		}
		if !bytes.Equal(unhex(t, c.Msg), unhex(t, "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")) {
			t.Fatalf("%s tcId 7 is not the E this vector was made with", c.File)
		}
		w := &keyRecord{KeyInfo: hsmcore.KeyInfo{Type: hsmcore.RSA, Bits: 2048}, Material: unhex(t, c.PrivateKeyPkcs8)}
		wrapped := append(unhex(t, c.Ct), kwp...)
		got, err := unwrapMaterial(mechs[c.Mechanism], w, wrapped)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %x, %v", mechs[c.Mechanism], got, err)
		}
		wrapped[len(wrapped)-1] ^= 1
		if _, err := unwrapMaterial(mechs[c.Mechanism], w, wrapped); !errors.Is(err, errUnwrap) {
			t.Errorf("%s, a flipped byte: %v", mechs[c.Mechanism], err)
		}
		n++
	}
	if n != 2 {
		t.Fatalf("%d vectors, want 2", n)
	}
}

// An hpke key's material is the 32-byte seed of draft-ietf-hpke-pq's
// MLKEM768-X25519 (KEM 0x647a): the published vector's private key gives
// its public key as a key record of this HSM, and opens its published
// ciphertext under the KEM and KDF (HKDF-SHA256) the hpke layout uses.
// (The vector's AEAD is ChaCha20-Poly1305; the layout's AES-256-GCM is
// checked by TestHPKEWrapOpensWithStandardHPKE.)
func TestHPKEKeyKnownAnswer(t *testing.T) {
	b, err := os.ReadFile("testdata/hpke/mlkem768x25519.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		SkRm, PkRm, Enc, Info string
		Encryption            struct{ Aad, Ct, Pt string }
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	k := &keyRecord{KeyInfo: hsmcore.KeyInfo{Type: hsmcore.HPKE, Bits: 768}, Material: unhex(t, v.SkRm)}
	if err := k.derive(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.PublicKey, unhex(t, v.PkRm)) {
		t.Fatal("the published private key does not give the published public key")
	}
	sk, err := hpke.MLKEM768X25519().NewPrivateKey(k.Material)
	if err != nil {
		t.Fatal(err)
	}
	r, err := hpke.NewRecipient(unhex(t, v.Enc), sk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), unhex(t, v.Info))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := r.Open(unhex(t, v.Encryption.Aad), unhex(t, v.Encryption.Ct))
	if err != nil || !bytes.Equal(pt, unhex(t, v.Encryption.Pt)) {
		t.Fatalf("the published ciphertext: %x, %v", pt, err)
	}
}
