//go:build cgo

package softhsm

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/hsmbackup/hsmbackup/internal/testenv"
)

// defaultModule is where Debian's softhsm2 package puts the PKCS#11
// module; SOFTHSM2_MODULE overrides it.
const defaultModule = "/usr/lib/softhsm/libsofthsm2.so"

const (
	soPIN   = "1234"
	userPIN = "5678"
)

// token is a logged-in read-write session on a fresh SoftHSMv2 token.
type token struct {
	ctx *pkcs11.Ctx
	s   pkcs11.SessionHandle
}

// openToken loads the SoftHSMv2 module with a configuration of tb's own
// (so tb must not run in parallel), initializes a token and logs its user
// in. It skips tb (testenv.Skip) when the module is missing.
func openToken(tb testing.TB) *token {
	tb.Helper()
	module := defaultModule
	if m := os.Getenv("SOFTHSM2_MODULE"); m != "" {
		module = m
	}
	if _, err := os.Stat(module); err != nil {
		testenv.Skip(tb, "skipped: no SoftHSMv2 PKCS#11 module: %v (make tools installs the Debian package softhsm2; SOFTHSM2_MODULE names another module)", err)
	}
	dir := tb.TempDir()
	conf := filepath.Join(dir, "softhsm2.conf")
	text := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", filepath.Join(dir, "tokens"))
	if err := os.Mkdir(filepath.Join(dir, "tokens"), 0o700); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		tb.Fatal(err)
	}
	tb.Setenv("SOFTHSM2_CONF", conf)

	ctx := pkcs11.New(module)
	if ctx == nil {
		tb.Fatalf("softhsm: cannot load the PKCS#11 module %s", module)
	}
	must := func(step string, err error) {
		tb.Helper()
		if err != nil {
			tb.Fatalf("softhsm: %s: %v", step, err)
		}
	}
	must("C_Initialize", ctx.Initialize())
	tb.Cleanup(func() {
		err := ctx.Finalize()
		ctx.Destroy()
		if err != nil {
			tb.Errorf("softhsm: C_Finalize: %v", err)
		}
	})
	slots, err := ctx.GetSlotList(true)
	must("C_GetSlotList", err)
	if len(slots) == 0 {
		tb.Fatal("softhsm: no slot")
	}
	slot := slots[0] // the free slot of a new token directory
	must("C_InitToken", ctx.InitToken(slot, soPIN, "t"))
	s, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	must("C_OpenSession", err)
	must("C_Login (SO)", ctx.Login(s, pkcs11.CKU_SO, soPIN))
	must("C_InitPIN", ctx.InitPIN(s, userPIN))
	must("C_Logout (SO)", ctx.Logout(s))
	must("C_Login (user)", ctx.Login(s, pkcs11.CKU_USER, userPIN))
	return &token{ctx: ctx, s: s}
}

// mechanism is a PKCS#11 mechanism with its name, for errors.
type mechanism struct {
	name string
	m    []*pkcs11.Mechanism
}

var (
	// aesKeyWrapPad is RFC 5649, the cluster's aes-kwp.
	aesKeyWrapPad = mechanism{"CKM_AES_KEY_WRAP_PAD", []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}}
	// rsaOAEPSHA1 is RSA-OAEP with SHA-1, MGF1-SHA-1 and an empty label,
	// the cluster's rsa-oaep-sha1, and the only OAEP SoftHSM 2.6.1 has.
	rsaOAEPSHA1 = mechanism{"CKM_RSA_PKCS_OAEP (SHA-1)", []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP,
		pkcs11.NewOAEPParams(pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, pkcs11.CKZ_DATA_SPECIFIED, nil))}}
)

// aesTemplate is a session AES key, sensitive, extractable or not, that
// may do what uses lists (CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP, CKA_UNWRAP)
// and nothing else.
func aesTemplate(extractable bool, uses ...uint) []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, extractable),
	}
	for _, a := range []uint{pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP} {
		t = append(t, pkcs11.NewAttribute(a, slices.Contains(uses, a)))
	}
	return t
}

// generateAES makes an AES-256 session key (see aesTemplate).
func (k *token) generateAES(extractable bool, uses ...uint) (pkcs11.ObjectHandle, error) {
	h, err := k.ctx.GenerateKey(k.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
		append(aesTemplate(extractable, uses...), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32)))
	if err != nil {
		return 0, fmt.Errorf("softhsm: C_GenerateKey (AES-256): %w", err)
	}
	return h, nil
}

// generateRSA makes an RSA-2048 session key pair whose public half wraps
// and whose private half unwraps.
func (k *token) generateRSA() (pub, priv pkcs11.ObjectHandle, err error) {
	pub, priv, err = k.ctx.GenerateKeyPair(k.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 2048),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		})
	if err != nil {
		return 0, 0, fmt.Errorf("softhsm: C_GenerateKeyPair (RSA-2048): %w", err)
	}
	return pub, priv, nil
}

// publicKeyDER is RSA key h's public half as PKIX DER (h may be either
// half: both hold the modulus and public exponent).
func (k *token) publicKeyDER(h pkcs11.ObjectHandle) ([]byte, error) {
	attrs, err := k.ctx.GetAttributeValue(k.s, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
	})
	if err != nil {
		return nil, fmt.Errorf("softhsm: read RSA public key: %w", err)
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(attrs[0].Value), E: int(new(big.Int).SetBytes(attrs[1].Value).Int64())}
	return x509.MarshalPKIXPublicKey(pub)
}

// importRSAPublic makes a session public key object, for wrapping, of
// der, an RSA public key in PKIX DER (as KeyInfo.PublicKey).
func (k *token) importRSAPublic(der []byte) (pkcs11.ObjectHandle, error) {
	pk, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return 0, fmt.Errorf("softhsm: import public key: %w", err)
	}
	pub, ok := pk.(*rsa.PublicKey)
	if !ok {
		return 0, fmt.Errorf("softhsm: import public key: %T is not RSA", pk)
	}
	h, err := k.ctx.CreateObject(k.s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, pub.N.Bytes()),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, big.NewInt(int64(pub.E)).Bytes()),
	})
	if err != nil {
		return 0, fmt.Errorf("softhsm: import public key: C_CreateObject: %w", err)
	}
	return h, nil
}

// wrap wraps key under wrapping with m.
func (k *token) wrap(m mechanism, wrapping, key pkcs11.ObjectHandle) ([]byte, error) {
	out, err := k.ctx.WrapKey(k.s, m.m, wrapping, key)
	if err != nil {
		return nil, fmt.Errorf("softhsm: C_WrapKey (%s): %w", m.name, err)
	}
	return out, nil
}

// unwrapAES unwraps an AES key wrapped with m under unwrapping, as a
// session key (see aesTemplate).
func (k *token) unwrapAES(m mechanism, unwrapping pkcs11.ObjectHandle, wrapped []byte, extractable bool, uses ...uint) (pkcs11.ObjectHandle, error) {
	h, err := k.ctx.UnwrapKey(k.s, m.m, unwrapping, wrapped, aesTemplate(extractable, uses...))
	if err != nil {
		return 0, fmt.Errorf("softhsm: C_UnwrapKey (%s): %w", m.name, err)
	}
	return h, nil
}

// wrapRSAAES wraps key for the RSA public key pub as the cluster's
// rsa-aes-sha1 (CKM_RSA_AES_KEY_WRAP with SHA-1, which SoftHSM 2.6.1 does
// not have) lays it out, in two steps: a fresh AES-256 key E wrapped with
// RSA-OAEP-SHA1 under pub, then key wrapped with AES-KWP under E.
func (k *token) wrapRSAAES(pub, key pkcs11.ObjectHandle) ([]byte, error) {
	e, err := k.generateAES(true, pkcs11.CKA_WRAP)
	if err != nil {
		return nil, fmt.Errorf("rsa-aes wrap: ephemeral key: %w", err)
	}
	defer k.ctx.DestroyObject(k.s, e)
	first, err := k.wrap(rsaOAEPSHA1, pub, e)
	if err != nil {
		return nil, fmt.Errorf("rsa-aes wrap: ephemeral key: %w", err)
	}
	second, err := k.wrap(aesKeyWrapPad, e, key)
	if err != nil {
		return nil, fmt.Errorf("rsa-aes wrap: target: %w", err)
	}
	return append(first, second...), nil
}

// unwrapRSAAES opens an rsa-aes-sha1 blob under the RSA private key priv
// in two steps (see wrapRSAAES): the first modulus-length bytes unwrap to
// E, the rest to an AES key under E.
func (k *token) unwrapRSAAES(priv pkcs11.ObjectHandle, blob []byte, extractable bool, uses ...uint) (pkcs11.ObjectHandle, error) {
	attrs, err := k.ctx.GetAttributeValue(k.s, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil)})
	if err != nil {
		return 0, fmt.Errorf("rsa-aes unwrap: read modulus: %w", err)
	}
	n := len(attrs[0].Value)
	if len(blob) <= n {
		return 0, fmt.Errorf("rsa-aes unwrap: %d bytes, no more than the %d-byte modulus", len(blob), n)
	}
	e, err := k.unwrapAES(rsaOAEPSHA1, priv, blob[:n], false, pkcs11.CKA_UNWRAP)
	if err != nil {
		return 0, fmt.Errorf("rsa-aes unwrap: ephemeral key: %w", err)
	}
	defer k.ctx.DestroyObject(k.s, e)
	h, err := k.unwrapAES(aesKeyWrapPad, e, blob[n:], extractable, uses...)
	if err != nil {
		return 0, fmt.Errorf("rsa-aes unwrap: target: %w", err)
	}
	return h, nil
}

// kcv is AES key h's check value as the cluster writes it: the hex of the
// first 3 bytes of AES-ECB of a zero block. SoftHSM 2.6.1 keeps it as
// CKA_CHECK_VALUE on keys it generates but leaves that empty on keys it
// unwraps: for those SoftHSM computes it with C_Encrypt (CKM_AES_ECB),
// which needs CKA_ENCRYPT.
func (k *token) kcv(h pkcs11.ObjectHandle) (string, error) {
	attrs, err := k.ctx.GetAttributeValue(k.s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CHECK_VALUE, nil)})
	if err != nil {
		return "", fmt.Errorf("softhsm: check value: read CKA_CHECK_VALUE: %w", err)
	}
	if v := attrs[0].Value; len(v) > 0 {
		return hex.EncodeToString(v), nil
	}
	m := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)}
	if err := k.ctx.EncryptInit(k.s, m, h); err != nil {
		return "", fmt.Errorf("softhsm: check value: C_EncryptInit (CKM_AES_ECB): %w", err)
	}
	block, err := k.ctx.Encrypt(k.s, make([]byte, 16))
	if err != nil {
		return "", fmt.Errorf("softhsm: check value: C_Encrypt (CKM_AES_ECB): %w", err)
	}
	return hex.EncodeToString(block[:3]), nil
}

// gcmMechanism is CKM_AES_GCM with a 128-bit tag; the caller frees it.
func gcmMechanism(iv, aad []byte) (*pkcs11.GCMParams, []*pkcs11.Mechanism) {
	p := pkcs11.NewGCMParams(iv, aad, 128)
	return p, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, p)}
}

// seal encrypts plaintext with AES key h as the cluster's Encrypt does:
// AES-GCM, IV(12, random) ‖ ciphertext ‖ tag(16).
func (k *token) seal(h pkcs11.ObjectHandle, plaintext, aad []byte) ([]byte, error) {
	iv := make([]byte, 12)
	rand.Read(iv)
	p, m := gcmMechanism(iv, aad)
	defer p.Free()
	if err := k.ctx.EncryptInit(k.s, m, h); err != nil {
		return nil, fmt.Errorf("softhsm: C_EncryptInit (CKM_AES_GCM): %w", err)
	}
	ct, err := k.ctx.Encrypt(k.s, plaintext)
	if err != nil {
		return nil, fmt.Errorf("softhsm: C_Encrypt (CKM_AES_GCM): %w", err)
	}
	return append(iv, ct...), nil
}

// open decrypts what seal (or the cluster's Encrypt) made.
func (k *token) open(h pkcs11.ObjectHandle, sealed, aad []byte) ([]byte, error) {
	if len(sealed) < 12+16 {
		return nil, fmt.Errorf("softhsm: open: %d bytes is too short", len(sealed))
	}
	p, m := gcmMechanism(sealed[:12], aad)
	defer p.Free()
	if err := k.ctx.DecryptInit(k.s, m, h); err != nil {
		return nil, fmt.Errorf("softhsm: C_DecryptInit (CKM_AES_GCM): %w", err)
	}
	pt, err := k.ctx.Decrypt(k.s, sealed[12:])
	if err != nil {
		return nil, fmt.Errorf("softhsm: C_Decrypt (CKM_AES_GCM): %w", err)
	}
	return pt, nil
}
