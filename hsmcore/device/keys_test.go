package device

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/testenv"
)

// keyMaterial returns the material of key h, read from inside the device.
func keyMaterial(t testing.TB, d *Device, h uint64) []byte {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	k := d.st.Keys.Get(h)
	if k == nil {
		t.Fatalf("no key %d in the device", h)
	}
	return slices.Clone(k.Material)
}

// hasKey reports whether the device holds key h at all, whoever owns it.
func hasKey(d *Device, h uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st.Keys.Get(h) != nil
}

func keyCount(d *Device) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st.Keys.Len()
}

func mustGenerateKey(t testing.TB, s *Session, spec hsmcore.KeySpec) hsmcore.KeyInfo {
	t.Helper()
	k, err := s.GenerateKey(spec)
	if err != nil {
		t.Fatalf("generate %s key: %v", spec.Type, err)
	}
	return k
}

var kcvPattern = regexp.MustCompile(`^[0-9a-f]{6}$`)

func TestGenerateKeySupportedTypes(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	tests := []struct {
		name      string
		spec      hsmcore.KeySpec
		class     hsmcore.KeyClass
		bits      int
		curve     string
		publicKey bool
	}{
		{"aes-128", hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true, Decrypt: true}, hsmcore.SecretKey, 128, "", false},
		{"aes-192", hsmcore.KeySpec{Type: hsmcore.AES, Bits: 192, Encrypt: true, Extractable: true}, hsmcore.SecretKey, 192, "", false},
		{"aes-256", hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Wrap: true, Unwrap: true, WrapWithTrusted: true}, hsmcore.SecretKey, 256, "", false},
		{"ec-p256", hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-256", Sign: true, Verify: true}, hsmcore.PrivateKey, 256, "P-256", true},
		{"ec-p384", hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-384", Sign: true, Extractable: true}, hsmcore.PrivateKey, 384, "P-384", true},
		{"rsa-2048", hsmcore.KeySpec{Type: hsmcore.RSA, Bits: 2048, Sign: true, Verify: true}, hsmcore.PrivateKey, 2048, "", true},
		{"rsa-3072", hsmcore.KeySpec{Type: hsmcore.RSA, Bits: 3072, Verify: true, Extractable: true}, hsmcore.PrivateKey, 3072, "", true},
		{"generic-secret-256", hsmcore.KeySpec{Type: hsmcore.GenericSecret, Bits: 256}, hsmcore.SecretKey, 256, "", false},
		{"generic-secret-8", hsmcore.KeySpec{Type: hsmcore.GenericSecret, Bits: 8, Extractable: true}, hsmcore.SecretKey, 8, "", false},
		{"label-128", hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Label: strings.Repeat("l", 128), ID: bytes.Repeat([]byte{7}, 64)}, hsmcore.SecretKey, 128, "", false},
	}
	handles := map[uint64]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := tt.spec
			if spec.Label == "" {
				spec.Label = tt.name
			}
			k, err := cu.GenerateKey(spec)
			if err != nil {
				t.Fatal(err)
			}
			if k.Handle == 0 || handles[k.Handle] {
				t.Fatalf("handle %d is zero or reused", k.Handle)
			}
			handles[k.Handle] = true
			if k.Type != spec.Type || k.Class != tt.class || k.Bits != tt.bits || k.Curve != tt.curve {
				t.Fatalf("type/class/bits/curve = %s/%s/%d/%q, want %s/%s/%d/%q", k.Type, k.Class, k.Bits, k.Curve, spec.Type, tt.class, tt.bits, tt.curve)
			}
			if !k.Local || !k.Sensitive || !k.Token {
				t.Fatalf("local/sensitive/token = %v/%v/%v, want all true", k.Local, k.Sensitive, k.Token)
			}
			if k.Extractable != spec.Extractable || k.NeverExtractable != !spec.Extractable {
				t.Fatalf("extractable/never-extractable = %v/%v for a spec with extractable %v", k.Extractable, k.NeverExtractable, spec.Extractable)
			}
			if k.Owner != "alice" || len(k.SharedWith) != 0 || k.Trusted {
				t.Fatalf("owner %q, shared with %q, trusted %v", k.Owner, k.SharedWith, k.Trusted)
			}
			if k.Label != spec.Label || !bytes.Equal(k.ID, spec.ID) {
				t.Fatalf("label/id = %q/%x, want %q/%x", k.Label, k.ID, spec.Label, spec.ID)
			}
			gotOps := [7]bool{k.Encrypt, k.Decrypt, k.Sign, k.Verify, k.Wrap, k.Unwrap, k.WrapWithTrusted}
			wantOps := [7]bool{spec.Encrypt, spec.Decrypt, spec.Sign, spec.Verify, spec.Wrap, spec.Unwrap, spec.WrapWithTrusted}
			if gotOps != wantOps {
				t.Fatalf("usage attributes %v, want %v", gotOps, wantOps)
			}

			material := keyMaterial(t, d, k.Handle)
			if spec.Type == hsmcore.GenericSecret && spec.Bits < 128 {
				if k.KCV != "" {
					t.Fatalf("%d-bit generic secret: KCV %q, want none", spec.Bits, k.KCV)
				}
			} else if !kcvPattern.MatchString(k.KCV) {
				t.Fatalf("KCV %q is not 6 lower-case hex digits", k.KCV)
			}
			var wantKCV []byte
			switch spec.Type {
			case hsmcore.AES:
				b, err := aes.NewCipher(material)
				if err != nil {
					t.Fatal(err)
				}
				wantKCV = make([]byte, 16)
				b.Encrypt(wantKCV, wantKCV)
			case hsmcore.GenericSecret:
				h := sha1.Sum(material)
				wantKCV = h[:]
			default:
				h := sha1.Sum(k.PublicKey)
				wantKCV = h[:]
			}
			if k.KCV != "" && k.KCV != hex.EncodeToString(wantKCV[:3]) {
				t.Fatalf("KCV %s, want %x", k.KCV, wantKCV[:3])
			}

			if !tt.publicKey {
				if k.PublicKey != nil {
					t.Fatalf("secret key has a public key")
				}
				if len(material)*8 != tt.bits {
					t.Fatalf("%d bytes of material for a %d-bit key", len(material), tt.bits)
				}
			} else {
				pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
				if err != nil {
					t.Fatalf("public key: %v", err)
				}
				switch p := pub.(type) {
				case *ecdsa.PublicKey:
					if spec.Type != hsmcore.EC || p.Curve.Params().Name != tt.curve {
						t.Fatalf("public key is EC %s for a %s %s key", p.Curve.Params().Name, spec.Type, tt.curve)
					}
				case *rsa.PublicKey:
					if spec.Type != hsmcore.RSA || p.N.BitLen() != tt.bits {
						t.Fatalf("public key is RSA-%d for a %s-%d key", p.N.BitLen(), spec.Type, tt.bits)
					}
				default:
					t.Fatalf("public key of type %T", pub)
				}
			}

			got, err := cu.Key(k.Handle)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, k) {
				t.Fatalf("Key(%d) = %+v\nGenerateKey returned %+v", k.Handle, got, k)
			}
		})
	}
}

func TestGenerateKeyRejectsInvalidSpecs(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	tests := []struct {
		name string
		spec hsmcore.KeySpec
	}{
		{"aes 100 bits", hsmcore.KeySpec{Type: hsmcore.AES, Bits: 100, Encrypt: true}},
		{"aes 0 bits", hsmcore.KeySpec{Type: hsmcore.AES}},
		{"aes 512 bits", hsmcore.KeySpec{Type: hsmcore.AES, Bits: 512}},
		{"aes sign", hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Sign: true}},
		{"aes verify", hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Verify: true}},
		{"ec P-521", hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-521", Sign: true}},
		{"ec no curve", hsmcore.KeySpec{Type: hsmcore.EC, Sign: true}},
		{"ec lower-case curve", hsmcore.KeySpec{Type: hsmcore.EC, Curve: "p-256", Sign: true}},
		{"ec encrypt", hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-256", Encrypt: true}},
		{"ec wrap", hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-256", Wrap: true}},
		{"rsa 1024", hsmcore.KeySpec{Type: hsmcore.RSA, Bits: 1024, Sign: true}},
		{"rsa 2047", hsmcore.KeySpec{Type: hsmcore.RSA, Bits: 2047, Sign: true}},
		{"rsa decrypt", hsmcore.KeySpec{Type: hsmcore.RSA, Bits: 2048, Decrypt: true}},
		{"generic secret 0 bits", hsmcore.KeySpec{Type: hsmcore.GenericSecret}},
		{"generic secret 12 bits", hsmcore.KeySpec{Type: hsmcore.GenericSecret, Bits: 12}},
		{"generic secret 4104 bits", hsmcore.KeySpec{Type: hsmcore.GenericSecret, Bits: 4104}},
		{"generic secret encrypt", hsmcore.KeySpec{Type: hsmcore.GenericSecret, Bits: 256, Encrypt: true}},
		{"label 129 bytes", hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: strings.Repeat("l", 129)}},
		{"id 65 bytes", hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, ID: make([]byte, 65)}},
		{"unknown type", hsmcore.KeySpec{Type: hsmcore.KeyType("des3"), Bits: 192}},
		{"empty type", hsmcore.KeySpec{Bits: 256}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sealed, contents := snapshot(t, d)
			if _, err := cu.GenerateKey(tt.spec); !errors.Is(err, hsmcore.ErrInvalid) {
				t.Fatalf("GenerateKey(%+v) = %v, want ErrInvalid", tt.spec, err)
			}
			assertUnchanged(t, d, sealed, contents)
			if n := keyCount(d); n != 0 {
				t.Fatalf("%d keys after a refused spec", n)
			}
		})
	}
}

// The AES key check value is the classic one: the first 3 bytes of the
// key's encryption of a zero block, checked against OpenSSL.
func TestAESKCVKnownAnswer(t *testing.T) {
	const keyHex = "2b7e151628aed2a6abf7158809cf4f3c"
	cmd := exec.Command(testenv.LookPath(t, "openssl"), "enc", "-aes-128-ecb", "-K", keyHex, "-nopad")
	cmd.Stdin = bytes.NewReader(make([]byte, 16))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl: %v: %s", err, stderr.Bytes())
	}
	if len(out) != 16 {
		t.Fatalf("openssl wrote %d bytes, want one 16-byte block", len(out))
	}
	want := hex.EncodeToString(out[:3])

	key, _ := hex.DecodeString(keyHex)
	if got := kcv(hsmcore.AES, key, nil); got != want {
		t.Fatalf("kcv(AES, %s) = %s, want %s (OpenSSL)", keyHex, got, want)
	}
}

func TestEncryptDecryptRoundTrip(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	for _, bits := range []int{128, 192, 256} {
		k := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: bits, Encrypt: true, Decrypt: true})
		for _, n := range []int{0, 1, 15, 16, 17, 4096} {
			for _, aad := range [][]byte{nil, []byte("header v1")} {
				t.Run(fmt.Sprintf("aes%d/len%d/aad%d", bits, n, len(aad)), func(t *testing.T) {
					plain := bytes.Repeat([]byte{byte(n)}, n)
					ct, err := cu.Encrypt(k.Handle, plain, aad)
					if err != nil {
						t.Fatal(err)
					}
					if len(ct) != 12+n+16 {
						t.Fatalf("ciphertext of %d bytes for %d bytes of plaintext, want nonce+data+tag", len(ct), n)
					}
					got, err := cu.Decrypt(k.Handle, ct, aad)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, plain) {
						t.Fatal("round trip changed the plaintext")
					}
				})
			}
		}
	}
}

func TestDecryptDetectsTampering(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	k := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true})
	other := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true})
	aad := []byte("context")
	ct, err := cu.Encrypt(k.Handle, []byte("attack at dawn"), aad)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		c := slices.Clone(ct)
		c[i] ^= 1
		return c
	}
	tests := []struct {
		name string
		key  uint64
		ct   []byte
		aad  []byte
	}{
		{"wrong aad", k.Handle, ct, []byte("contexT")},
		{"missing aad", k.Handle, ct, nil},
		{"flipped nonce", k.Handle, flip(0), aad},
		{"flipped ciphertext", k.Handle, flip(12), aad},
		{"flipped tag", k.Handle, flip(len(ct) - 1), aad},
		{"truncated", k.Handle, ct[:len(ct)-1], aad},
		{"too short", k.Handle, ct[:27], aad},
		{"empty", k.Handle, nil, aad},
		{"other key", other.Handle, ct, aad},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if pt, err := cu.Decrypt(tt.key, tt.ct, tt.aad); !errors.Is(err, hsmcore.ErrTampered) || pt != nil {
				t.Fatalf("Decrypt = %q, %v; want nil, ErrTampered", pt, err)
			}
		})
	}
}

func TestEncryptNeedsEncryptAttribute(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	decOnly := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Decrypt: true})
	encOnly := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true})
	wrapOnly := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Wrap: true})
	ecKey := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-256", Sign: true})
	for _, h := range []uint64{decOnly.Handle, wrapOnly.Handle, ecKey.Handle} {
		if _, err := cu.Encrypt(h, []byte("x"), nil); !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("Encrypt with key %d = %v, want ErrPermission", h, err)
		}
	}
	ct, err := cu.Encrypt(encOnly.Handle, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cu.Decrypt(encOnly.Handle, ct, nil); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("Decrypt with an encrypt-only key = %v, want ErrPermission", err)
	}
}

func TestSignVerify(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	tests := []struct {
		name string
		spec hsmcore.KeySpec
		hash crypto.Hash
	}{
		{"ec-p256", hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-256", Sign: true, Verify: true}, crypto.SHA256},
		{"ec-p384", hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-384", Sign: true, Verify: true}, crypto.SHA384},
		{"rsa-2048", hsmcore.KeySpec{Type: hsmcore.RSA, Bits: 2048, Sign: true, Verify: true}, crypto.SHA256},
	}
	msg := []byte("the quick brown fox")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := mustGenerateKey(t, cu, tt.spec)
			sig, err := cu.Sign(k.Handle, msg)
			if err != nil {
				t.Fatal(err)
			}
			if err := cu.Verify(k.Handle, msg, sig); err != nil {
				t.Fatalf("Session.Verify: %v", err)
			}
			if err := hsmcore.VerifySignature(k, msg, sig); err != nil {
				t.Fatalf("VerifySignature: %v", err)
			}

			// The documented algorithms, checked with the standard library.
			var digest []byte
			if tt.hash == crypto.SHA384 {
				h := sha512.Sum384(msg)
				digest = h[:]
			} else {
				h := sha256.Sum256(msg)
				digest = h[:]
			}
			pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			switch p := pub.(type) {
			case *ecdsa.PublicKey:
				if !ecdsa.VerifyASN1(p, digest, sig) {
					t.Fatalf("signature is not ECDSA over %v", tt.hash)
				}
			case *rsa.PublicKey:
				if err := rsa.VerifyPSS(p, tt.hash, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}); err != nil {
					t.Fatalf("signature is not RSA-PSS over %v: %v", tt.hash, err)
				}
			}

			badMsg := slices.Clone(msg)
			badMsg[0] ^= 1
			badSig := slices.Clone(sig)
			badSig[len(badSig)/2] ^= 1
			for _, c := range []struct {
				what     string
				msg, sig []byte
			}{{"flipped message", badMsg, sig}, {"flipped signature", msg, badSig}, {"empty signature", msg, nil}} {
				if err := cu.Verify(k.Handle, c.msg, c.sig); !errors.Is(err, hsmcore.ErrTampered) {
					t.Fatalf("Session.Verify with a %s = %v, want ErrTampered", c.what, err)
				}
				if err := hsmcore.VerifySignature(k, c.msg, c.sig); !errors.Is(err, hsmcore.ErrTampered) {
					t.Fatalf("VerifySignature with a %s = %v, want ErrTampered", c.what, err)
				}
			}
		})
	}
}

func TestSignNeedsSignAttribute(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	verifyOnly := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-256", Verify: true})
	signOnly := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-256", Sign: true})
	if _, err := cu.Sign(verifyOnly.Handle, []byte("m")); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("Sign with a verify-only key = %v, want ErrPermission", err)
	}
	sig, err := cu.Sign(signOnly.Handle, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cu.Verify(signOnly.Handle, []byte("m"), sig); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("Session.Verify with a sign-only key = %v, want ErrPermission", err)
	}
	if err := hsmcore.VerifySignature(signOnly, []byte("m"), sig); err != nil {
		t.Fatalf("VerifySignature needs no attribute: %v", err)
	}
}

func TestKeyAccessNeedsShare(t *testing.T) {
	d := newDevice(t, stdHW)
	co, alice := initDevice(t, d)
	bob := addCU(t, co, "bob")
	addCU(t, co, "carol")
	k := mustGenerateKey(t, alice, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true})
	ct, err := alice.Encrypt(k.Handle, []byte("secret"), nil)
	if err != nil {
		t.Fatal(err)
	}
	no := false

	bobSees := func(t *testing.T) bool {
		t.Helper()
		keys, err := bob.Keys()
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(keys, func(i hsmcore.KeyInfo) bool { return i.Handle == k.Handle })
	}
	// Every use bob might try, and what it needs.
	uses := []struct {
		op        string
		ownerOnly bool
		do        func() error
	}{
		{"Key", false, func() error { _, err := bob.Key(k.Handle); return err }},
		{"Encrypt", false, func() error { _, err := bob.Encrypt(k.Handle, []byte("x"), nil); return err }},
		{"Decrypt", false, func() error {
			pt, err := bob.Decrypt(k.Handle, ct, nil)
			if err == nil && string(pt) != "secret" {
				return fmt.Errorf("decrypted %q", pt)
			}
			return err
		}},
		{"DeleteKey", true, func() error { return bob.DeleteKey(k.Handle) }},
		{"SetAttributes", true, func() error { return bob.SetAttributes(k.Handle, hsmcore.AttributeChange{Encrypt: &no}) }},
		{"ShareKey", true, func() error { return bob.ShareKey(k.Handle, "carol", true) }},
		{"UnshareKey", true, func() error { return bob.ShareKey(k.Handle, "bob", false) }},
	}
	check := func(t *testing.T, shared bool) {
		t.Helper()
		if bobSees(t) != shared {
			t.Fatalf("bob's Keys() lists the key: %v, want %v", !shared, shared)
		}
		for _, u := range uses {
			sealed, contents := snapshot(t, d)
			err := u.do()
			switch {
			case !shared:
				if !errors.Is(err, hsmcore.ErrNotFound) {
					t.Fatalf("bob %s on an unshared key = %v, want ErrNotFound", u.op, err)
				}
			case u.ownerOnly:
				if !errors.Is(err, hsmcore.ErrPermission) {
					t.Fatalf("bob %s on a shared key = %v, want ErrPermission", u.op, err)
				}
			default:
				if err != nil {
					t.Fatalf("bob %s on a shared key: %v", u.op, err)
				}
			}
			if err != nil {
				assertUnchanged(t, d, sealed, contents)
			}
		}
	}

	t.Run("before sharing", func(t *testing.T) { check(t, false) })
	if err := alice.ShareKey(k.Handle, "bob", true); err != nil {
		t.Fatal(err)
	}
	if info, _ := alice.Key(k.Handle); !slices.Equal(info.SharedWith, []string{"bob"}) {
		t.Fatalf("SharedWith = %q after sharing with bob", info.SharedWith)
	}
	t.Run("shared", func(t *testing.T) { check(t, true) })
	if err := alice.ShareKey(k.Handle, "bob", false); err != nil {
		t.Fatal(err)
	}
	t.Run("unshared", func(t *testing.T) { check(t, false) })

	// Sharing is with another crypto user only.
	for _, u := range []string{"alice", "admin", "nobody", "bad name"} {
		sealed, contents := snapshot(t, d)
		if err := alice.ShareKey(k.Handle, u, true); !errors.Is(err, hsmcore.ErrInvalid) {
			t.Fatalf("sharing with %q = %v, want ErrInvalid", u, err)
		}
		assertUnchanged(t, d, sealed, contents)
	}
}

func TestSetAttributes(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	yes, no := true, false
	k := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true, Extractable: true})

	refused := []struct {
		name   string
		change hsmcore.AttributeChange
	}{
		{"extractable true to false", hsmcore.AttributeChange{Extractable: &no}},
		{"sign on an aes key", hsmcore.AttributeChange{Sign: &yes}},
		{"label over 128 bytes", hsmcore.AttributeChange{Label: ptr(strings.Repeat("x", 129))}},
		{"valid change with extractable", hsmcore.AttributeChange{Encrypt: &no, Extractable: &no}},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			sealed, contents := snapshot(t, d)
			if err := cu.SetAttributes(k.Handle, tt.change); !errors.Is(err, hsmcore.ErrInvalid) {
				t.Fatalf("SetAttributes = %v, want ErrInvalid", err)
			}
			assertUnchanged(t, d, sealed, contents)
		})
	}

	nx := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true})
	sealed, contents := snapshot(t, d)
	if err := cu.SetAttributes(nx.Handle, hsmcore.AttributeChange{Extractable: &yes}); !errors.Is(err, hsmcore.ErrInvalid) {
		t.Fatalf("making a key extractable = %v, want ErrInvalid", err)
	}
	assertUnchanged(t, d, sealed, contents)

	t.Run("wrap with trusted", func(t *testing.T) {
		if err := cu.SetAttributes(k.Handle, hsmcore.AttributeChange{WrapWithTrusted: &yes}); err != nil {
			t.Fatalf("wrap-with-trusted false to true: %v", err)
		}
		if info, _ := cu.Key(k.Handle); !info.WrapWithTrusted {
			t.Fatal("wrap-with-trusted not set")
		}
		if err := cu.SetAttributes(k.Handle, hsmcore.AttributeChange{WrapWithTrusted: &yes}); err != nil {
			t.Fatalf("wrap-with-trusted true to true: %v", err)
		}
		sealed, contents := snapshot(t, d)
		if err := cu.SetAttributes(k.Handle, hsmcore.AttributeChange{WrapWithTrusted: &no}); !errors.Is(err, hsmcore.ErrInvalid) {
			t.Fatalf("wrap-with-trusted true to false = %v, want ErrInvalid", err)
		}
		assertUnchanged(t, d, sealed, contents)
	})

	t.Run("toggle encrypt", func(t *testing.T) {
		if err := cu.SetAttributes(k.Handle, hsmcore.AttributeChange{Encrypt: &no}); err != nil {
			t.Fatal(err)
		}
		if info, _ := cu.Key(k.Handle); info.Encrypt {
			t.Fatal("encrypt still set")
		}
		if _, err := cu.Encrypt(k.Handle, []byte("x"), nil); !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("Encrypt after clearing encrypt = %v, want ErrPermission", err)
		}
		if err := cu.SetAttributes(k.Handle, hsmcore.AttributeChange{Encrypt: &yes}); err != nil {
			t.Fatal(err)
		}
		if _, err := cu.Encrypt(k.Handle, []byte("x"), nil); err != nil {
			t.Fatalf("Encrypt after setting encrypt again: %v", err)
		}
	})

	t.Run("label and id", func(t *testing.T) {
		before, _ := cu.Key(k.Handle)
		if err := cu.SetAttributes(k.Handle, hsmcore.AttributeChange{Label: ptr("renamed"), ID: []byte{1, 2}, Extractable: &yes}); err != nil {
			t.Fatal(err)
		}
		after, _ := cu.Key(k.Handle)
		if after.Label != "renamed" || !bytes.Equal(after.ID, []byte{1, 2}) {
			t.Fatalf("label/id = %q/%x", after.Label, after.ID)
		}
		after.Label, after.ID = before.Label, before.ID
		if !reflect.DeepEqual(after, before) {
			t.Fatalf("other attributes changed:\n%+v\n%+v", before, after)
		}
	})
}

func ptr[T any](v T) *T { return &v }

func TestSetTrustedAndWrapWithTrusted(t *testing.T) {
	d := newDevice(t, stdHW)
	co, cu := initDevice(t, d)
	wk := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Wrap: true, Unwrap: true})
	target := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true, Extractable: true, WrapWithTrusted: true})

	sealed, contents := snapshot(t, d)
	if err := cu.SetTrusted(wk.Handle, true); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("crypto user SetTrusted = %v, want ErrPermission", err)
	}
	assertUnchanged(t, d, sealed, contents)
	if err := co.SetTrusted(9999, true); !errors.Is(err, hsmcore.ErrNotFound) {
		t.Fatalf("SetTrusted on a missing key = %v, want ErrNotFound", err)
	}

	sealed, contents = snapshot(t, d)
	if _, err := cu.WrapKey(wk.Handle, target.Handle, hsmcore.AESKWP); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("wrapping a wrap-with-trusted key with an untrusted key = %v, want ErrPermission", err)
	}
	assertUnchanged(t, d, sealed, contents)

	if err := co.SetTrusted(wk.Handle, true); err != nil {
		t.Fatalf("crypto officer SetTrusted: %v", err)
	}
	if info, _ := cu.Key(wk.Handle); !info.Trusted {
		t.Fatal("key not trusted after SetTrusted")
	}
	wrapped, err := cu.WrapKey(wk.Handle, target.Handle, hsmcore.AESKWP)
	if err != nil {
		t.Fatalf("wrapping a wrap-with-trusted key with a trusted key: %v", err)
	}
	u, err := cu.UnwrapKey(wk.Handle, hsmcore.AESKWP, wrapped, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	if u.KCV != target.KCV {
		t.Fatal("unwrapped key differs")
	}

	if err := co.SetTrusted(wk.Handle, false); err != nil {
		t.Fatal(err)
	}
	if _, err := cu.WrapKey(wk.Handle, target.Handle, hsmcore.AESKWP); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("wrapping with a key no longer trusted = %v, want ErrPermission", err)
	}
}

func TestWrapUnwrap(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	wk := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Wrap: true, Unwrap: true})
	aesKey := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true, Decrypt: true, Extractable: true})
	ecKey := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-256", Sign: true, Verify: true, Extractable: true})

	t.Run("aes", func(t *testing.T) {
		ct, err := cu.Encrypt(aesKey.Handle, []byte("wrapped and back"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		wrapped, err := cu.WrapKey(wk.Handle, aesKey.Handle, hsmcore.AESKWP)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(wrapped, keyMaterial(t, d, aesKey.Handle)) {
			t.Fatal("wrapped key contains the key material")
		}
		u, err := cu.UnwrapKey(wk.Handle, hsmcore.AESKWP, wrapped, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Decrypt: true, Label: "copy"})
		if err != nil {
			t.Fatal(err)
		}
		if u.Handle == aesKey.Handle || u.Local || u.KCV != aesKey.KCV || u.Label != "copy" || u.Owner != "alice" {
			t.Fatalf("unwrapped key %+v", u)
		}
		if u.Extractable || u.NeverExtractable || !u.Sensitive || !u.Token {
			t.Fatalf("unwrapped key extractable/never-extractable/sensitive/token = %v/%v/%v/%v, want false/false/true/true", u.Extractable, u.NeverExtractable, u.Sensitive, u.Token)
		}
		pt, err := cu.Decrypt(u.Handle, ct, []byte("aad"))
		if err != nil || string(pt) != "wrapped and back" {
			t.Fatalf("unwrapped key decrypts %q, %v", pt, err)
		}
	})

	t.Run("ec", func(t *testing.T) {
		wrapped, err := cu.WrapKey(wk.Handle, ecKey.Handle, hsmcore.AESKWP)
		if err != nil {
			t.Fatal(err)
		}
		u, err := cu.UnwrapKey(wk.Handle, hsmcore.AESKWP, wrapped, hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-256", Sign: true, Extractable: true})
		if err != nil {
			t.Fatal(err)
		}
		if u.Local || u.KCV != ecKey.KCV || !bytes.Equal(u.PublicKey, ecKey.PublicKey) || u.Class != hsmcore.PrivateKey || u.Bits != 256 {
			t.Fatalf("unwrapped key %+v", u)
		}
		if !u.Extractable || u.NeverExtractable {
			t.Fatal("unwrapped key with an extractable spec is not extractable")
		}
		msg := []byte("signed by the copy")
		sig, err := cu.Sign(u.Handle, msg)
		if err != nil {
			t.Fatal(err)
		}
		if err := hsmcore.VerifySignature(ecKey, msg, sig); err != nil {
			t.Fatalf("original public key rejects the copy's signature: %v", err)
		}
		if err := cu.Verify(ecKey.Handle, msg, sig); err != nil {
			t.Fatalf("original key rejects the copy's signature: %v", err)
		}
	})

	t.Run("spec must match the material", func(t *testing.T) {
		wrapped, err := cu.WrapKey(wk.Handle, aesKey.Handle, hsmcore.AESKWP)
		if err != nil {
			t.Fatal(err)
		}
		for _, spec := range []hsmcore.KeySpec{
			{Type: hsmcore.AES, Bits: 256, Decrypt: true},
			{Type: hsmcore.EC, Curve: "P-256", Sign: true},
			{Type: hsmcore.AES, Bits: 128, Sign: true},
		} {
			sealed, contents := snapshot(t, d)
			if _, err := cu.UnwrapKey(wk.Handle, hsmcore.AESKWP, wrapped, spec); !errors.Is(err, hsmcore.ErrInvalid) {
				t.Fatalf("unwrap as %+v = %v, want ErrInvalid", spec, err)
			}
			assertUnchanged(t, d, sealed, contents)
		}
	})
}

func TestWrapKeyRefusals(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	wk := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Wrap: true, Unwrap: true})
	noWrap := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Unwrap: true})
	target := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true, Extractable: true})
	fixed := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true})
	fixedEC := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-384", Sign: true})

	tests := []struct {
		name             string
		wrapping, target uint64
	}{
		{"non-extractable aes target", wk.Handle, fixed.Handle},
		{"non-extractable ec target", wk.Handle, fixedEC.Handle},
		{"wrapping key without wrap", noWrap.Handle, target.Handle},
		{"ec wrapping key", fixedEC.Handle, target.Handle},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sealed, contents := snapshot(t, d)
			if w, err := cu.WrapKey(tt.wrapping, tt.target, hsmcore.AESKWP); !errors.Is(err, hsmcore.ErrPermission) || w != nil {
				t.Fatalf("WrapKey = %x, %v; want nil, ErrPermission", w, err)
			}
			assertUnchanged(t, d, sealed, contents)
		})
	}

	t.Run("tampered wrapped key", func(t *testing.T) {
		wrapped, err := cu.WrapKey(wk.Handle, target.Handle, hsmcore.AESKWP)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range []int{0, len(wrapped) / 2, len(wrapped) - 1} {
			bad := slices.Clone(wrapped)
			bad[i] ^= 0x80
			sealed, contents := snapshot(t, d)
			if _, err := cu.UnwrapKey(wk.Handle, hsmcore.AESKWP, bad, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true}); !errors.Is(err, hsmcore.ErrTampered) {
				t.Fatalf("unwrap with byte %d flipped = %v, want ErrTampered", i, err)
			}
			assertUnchanged(t, d, sealed, contents)
		}
		// Under the wrong unwrapping key, too.
		other := mustGenerateKey(t, cu, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Unwrap: true})
		sealed, contents := snapshot(t, d)
		if _, err := cu.UnwrapKey(other.Handle, hsmcore.AESKWP, wrapped, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true}); !errors.Is(err, hsmcore.ErrTampered) {
			t.Fatalf("unwrap under another key = %v, want ErrTampered", err)
		}
		assertUnchanged(t, d, sealed, contents)
	})
}

func TestSessionKeys(t *testing.T) {
	d := newDevice(t, stdHW)
	co, s1 := initDevice(t, d)
	s2 := login(t, d, "alice")
	sealed := stateBytes(t, d)

	const label = "session-key-label"
	k, err := s1.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true, Session: true, Label: label})
	if err != nil {
		t.Fatal(err)
	}
	if k.Token {
		t.Fatal("session key has token set")
	}
	// Not in the sealed state, nor in what an image would carry.
	if !bytes.Equal(stateBytes(t, d), sealed) {
		t.Fatal("creating a session key changed the sealed state file")
	}
	if bytes.Contains(contentsBytes(t, d), []byte(label)) {
		t.Fatal("session key is in the serialized contents")
	}

	ct, err := s1.Encrypt(k.Handle, []byte("short-lived"), nil)
	if err != nil {
		t.Fatalf("creating session cannot use its session key: %v", err)
	}
	if _, err := s1.Decrypt(k.Handle, ct, nil); err != nil {
		t.Fatal(err)
	}
	if keys, _ := s1.Keys(); !slices.ContainsFunc(keys, func(i hsmcore.KeyInfo) bool { return i.Handle == k.Handle }) {
		t.Fatal("creating session does not list its session key")
	}

	if _, err := s2.Key(k.Handle); !errors.Is(err, hsmcore.ErrNotFound) {
		t.Fatalf("another session's Key = %v, want ErrNotFound", err)
	}
	if _, err := s2.Decrypt(k.Handle, ct, nil); !errors.Is(err, hsmcore.ErrNotFound) {
		t.Fatalf("another session's Decrypt = %v, want ErrNotFound", err)
	}
	if err := s2.DeleteKey(k.Handle); !errors.Is(err, hsmcore.ErrNotFound) {
		t.Fatalf("another session's DeleteKey = %v, want ErrNotFound", err)
	}
	for _, s := range []*Session{s2, co} {
		keys, err := s.Keys()
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(keys, func(i hsmcore.KeyInfo) bool { return i.Handle == k.Handle }) {
			t.Fatalf("%s's other session lists the session key", s.User().Name)
		}
	}
	if _, err := co.Key(k.Handle); !errors.Is(err, hsmcore.ErrNotFound) {
		t.Fatalf("crypto officer Key on a session key = %v, want ErrNotFound", err)
	}

	s1.Logout()
	if hasKey(d, k.Handle) {
		t.Fatal("session key still held after Logout")
	}
	if _, err := login(t, d, "alice").Key(k.Handle); !errors.Is(err, hsmcore.ErrNotFound) {
		t.Fatalf("Key after Logout = %v, want ErrNotFound", err)
	}
	if !bytes.Equal(stateBytes(t, d), sealed) {
		t.Fatal("Logout changed the sealed state file")
	}
	// Logging out one session leaves the other's keys alone.
	k2 := mustGenerateKey(t, s2, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true, Session: true})
	login(t, d, "alice").Logout()
	if !hasKey(d, k2.Handle) {
		t.Fatal("logging out one session destroyed another session's key")
	}
}

// newDeviceWithCapacity is newDevice with a key capacity.
func newDeviceWithCapacity(t testing.TB, capacity int) *Device {
	t.Helper()
	d, _, err := Manufacture(filepath.Join(t.TempDir(), "hsm"), ManufactureConfig{
		Class: stdHW.class, Firmware: stdHW.firmware, Capacity: capacity,
		Manufacturer: authority(t, stdHW.mfr), Operator: authority(t, stdHW.op),
	}, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestCapacity(t *testing.T) {
	d := newDeviceWithCapacity(t, 5)
	if d.Capacity() != 5 {
		t.Fatalf("Capacity() = %d, want 5", d.Capacity())
	}
	_, cu := initDevice(t, d)
	spec := hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true}
	if _, err := cu.GenerateKeys([]hsmcore.KeySpec{spec, spec, spec, spec}); err != nil {
		t.Fatal(err)
	}
	sealed, contents := snapshot(t, d)
	if _, err := cu.GenerateKeys([]hsmcore.KeySpec{spec, spec}); !errors.Is(err, hsmcore.ErrFull) {
		t.Fatalf("batch past capacity = %v, want ErrFull", err)
	}
	assertUnchanged(t, d, sealed, contents)
	mustGenerateKey(t, cu, spec)

	sealed, contents = snapshot(t, d)
	for _, s := range []hsmcore.KeySpec{spec, {Type: hsmcore.AES, Bits: 128, Encrypt: true, Session: true}} {
		if _, err := cu.GenerateKey(s); !errors.Is(err, hsmcore.ErrFull) {
			t.Fatalf("6th key (session %v) = %v, want ErrFull", s.Session, err)
		}
		assertUnchanged(t, d, sealed, contents)
	}
	if n := keyCount(d); n != 5 {
		t.Fatalf("%d keys, want 5", n)
	}

	// Capacity survives a restart.
	d.Close()
	d2, err := Open(d.dir, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if _, err := login(t, d2, "alice").GenerateKey(spec); !errors.Is(err, hsmcore.ErrFull) {
		t.Fatalf("6th key after restart = %v, want ErrFull", err)
	}
}

func TestGenerateKeysAllOrNothing(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	good := hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true}
	for _, bad := range []int{0, 1, 2} {
		specs := []hsmcore.KeySpec{good, {Type: hsmcore.EC, Curve: "P-256", Sign: true}, good}
		specs[bad] = hsmcore.KeySpec{Type: hsmcore.AES, Bits: 100}
		sealed, contents := snapshot(t, d)
		if infos, err := cu.GenerateKeys(specs); !errors.Is(err, hsmcore.ErrInvalid) || infos != nil {
			t.Fatalf("batch with spec %d invalid = %v, %v; want nil, ErrInvalid", bad, infos, err)
		}
		assertUnchanged(t, d, sealed, contents)
		if n := keyCount(d); n != 0 {
			t.Fatalf("%d keys created by a refused batch", n)
		}
	}
	infos, err := cu.GenerateKeys([]hsmcore.KeySpec{good, good, good})
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range infos {
		if k.Handle != infos[0].Handle+uint64(i) {
			t.Fatalf("batch handles %d, %d, %d are not consecutive", infos[0].Handle, infos[1].Handle, infos[2].Handle)
		}
	}
}

func TestGenerateKeysEmptyBatch(t *testing.T) {
	d := newDevice(t, stdHW)
	_, cu := initDevice(t, d)
	var (
		infos []hsmcore.KeyInfo
		err   error
	)
	noPanic(t, "GenerateKeys(nil) (keys.go handleRange indexes recs[0] of an empty batch)", func() {
		infos, err = cu.GenerateKeys(nil)
	})
	if err != nil && !errors.Is(err, hsmcore.ErrInvalid) {
		t.Fatalf("GenerateKeys(nil) = %v, want success or ErrInvalid", err)
	}
	if len(infos) != 0 || keyCount(d) != 0 {
		t.Fatal("an empty batch created keys")
	}
}

func TestKeysSurviveRestart(t *testing.T) {
	d := newDevice(t, stdHW)
	co, alice := initDevice(t, d)
	addCU(t, co, "bob")
	aesKey := mustGenerateKey(t, alice, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true, Label: "data"})
	ecKey := mustGenerateKey(t, alice, hsmcore.KeySpec{Type: hsmcore.EC, Curve: "P-384", Sign: true, Verify: true})
	gen := mustGenerateKey(t, alice, hsmcore.KeySpec{Type: hsmcore.GenericSecret, Bits: 512, Extractable: true})
	wk := mustGenerateKey(t, alice, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Wrap: true, Unwrap: true})
	if err := alice.ShareKey(aesKey.Handle, "bob", true); err != nil {
		t.Fatal(err)
	}
	if err := co.SetTrusted(wk.Handle, true); err != nil {
		t.Fatal(err)
	}
	wrapped, err := alice.WrapKey(wk.Handle, gen.Handle, hsmcore.AESKWP)
	if err != nil {
		t.Fatal(err)
	}
	unwrapped, err := alice.UnwrapKey(wk.Handle, hsmcore.AESKWP, wrapped, hsmcore.KeySpec{Type: hsmcore.GenericSecret, Bits: 512})
	if err != nil {
		t.Fatal(err)
	}
	session := mustGenerateKey(t, alice, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true, Session: true})
	ct, err := alice.Encrypt(aesKey.Handle, []byte("before restart"), nil)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("signed before restart")
	sig, err := alice.Sign(ecKey.Handle, msg)
	if err != nil {
		t.Fatal(err)
	}
	before, err := alice.Keys()
	if err != nil {
		t.Fatal(err)
	}
	before = slices.DeleteFunc(before, func(k hsmcore.KeyInfo) bool { return !k.Token })
	if len(before) != 5 {
		t.Fatalf("%d token keys before restart, want 5", len(before))
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	d2, err := Open(d.dir, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.Close() })
	alice2 := login(t, d2, "alice")
	after, err := alice2.Keys()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(after, before) {
		t.Fatalf("keys after restart:\n%+v\nwant\n%+v", after, before)
	}
	if _, err := alice2.Key(session.Handle); !errors.Is(err, hsmcore.ErrNotFound) {
		t.Fatalf("session key after restart: %v, want ErrNotFound", err)
	}
	for _, h := range []uint64{aesKey.Handle, gen.Handle, unwrapped.Handle} {
		if !bytes.Equal(keyMaterial(t, d2, h), keyMaterial(t, d, h)) {
			t.Fatalf("key %d material changed across restart", h)
		}
	}

	if pt, err := alice2.Decrypt(aesKey.Handle, ct, nil); err != nil || string(pt) != "before restart" {
		t.Fatalf("decrypt after restart: %q, %v", pt, err)
	}
	if pt, err := login(t, d2, "bob").Decrypt(aesKey.Handle, ct, nil); err != nil || string(pt) != "before restart" {
		t.Fatalf("shared key after restart: %q, %v", pt, err)
	}
	if err := alice2.Verify(ecKey.Handle, msg, sig); err != nil {
		t.Fatalf("verify after restart: %v", err)
	}
	sig2, err := alice2.Sign(ecKey.Handle, msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := hsmcore.VerifySignature(ecKey, msg, sig2); err != nil {
		t.Fatalf("signature made after restart: %v", err)
	}
	if _, err := alice2.WrapKey(wk.Handle, gen.Handle, hsmcore.AESKWP); err != nil {
		t.Fatalf("trusted wrapping key after restart: %v", err)
	}
	// New handles continue after the old ones.
	k := mustGenerateKey(t, alice2, hsmcore.KeySpec{Type: hsmcore.AES, Bits: 128, Encrypt: true})
	for _, old := range before {
		if k.Handle <= old.Handle {
			t.Fatalf("new key handle %d reuses or precedes %d", k.Handle, old.Handle)
		}
	}
}

// Run with -race: sessions generating, using and listing keys at once.
func TestConcurrentKeyOperations(t *testing.T) {
	d := newDevice(t, stdHW)
	co, _ := initDevice(t, d)
	const workers, rounds = 8, 5
	sessions := make([]*Session, workers)
	for i := range sessions {
		if i%2 == 0 {
			sessions[i] = login(t, d, "alice")
		} else {
			sessions[i] = addCU(t, co, fmt.Sprintf("user-%d", i))
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers+1)
	for i, s := range sessions {
		wg.Go(func() {
			for r := range rounds {
				k, err := s.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true, Session: r%2 == 1, Label: fmt.Sprintf("w%d-r%d", i, r)})
				if err != nil {
					errs <- fmt.Errorf("worker %d: generate: %w", i, err)
					return
				}
				msg := fmt.Appendf(nil, "worker %d round %d", i, r)
				ct, err := s.Encrypt(k.Handle, msg, nil)
				if err != nil {
					errs <- fmt.Errorf("worker %d: encrypt: %w", i, err)
					return
				}
				pt, err := s.Decrypt(k.Handle, ct, nil)
				if err != nil || !bytes.Equal(pt, msg) {
					errs <- fmt.Errorf("worker %d: decrypt: %q, %v", i, pt, err)
					return
				}
				keys, err := s.Keys()
				if err != nil {
					errs <- fmt.Errorf("worker %d: list: %w", i, err)
					return
				}
				if !slices.ContainsFunc(keys, func(x hsmcore.KeyInfo) bool { return x.Handle == k.Handle }) {
					errs <- fmt.Errorf("worker %d: key %d not listed", i, k.Handle)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range rounds * 2 {
			if _, err := co.Keys(); err != nil {
				errs <- fmt.Errorf("officer: list: %w", err)
				return
			}
			if _, _, err := d.AuditLog(); err != nil {
				errs <- fmt.Errorf("officer: audit log: %w", err)
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := keyCount(d); n != workers*rounds {
		t.Fatalf("%d keys, want %d", n, workers*rounds)
	}
	// Handles are unique and every token key is in the sealed state.
	tokens, err := co.Keys()
	if err != nil {
		t.Fatal(err)
	}
	if want := workers * ((rounds + 1) / 2); len(tokens) != want {
		t.Fatalf("%d token keys listed, want %d", len(tokens), want)
	}
	d.Close()
	d2, err := Open(d.dir, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	after, err := login(t, d2, "admin").Keys()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(after, tokens) {
		t.Fatal("sealed state after concurrent commits differs from memory")
	}
}
