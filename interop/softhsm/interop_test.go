//go:build cgo

package softhsm

import (
	"bytes"
	"errors"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/hsmcore/hsmtest"
)

const password = "correct horse battery staple"

var (
	message = []byte("moved keys still work")
	aad     = []byte("interop/softhsm")
)

// openCluster serves a cluster of two HSMs and opens it as crypto user
// alice.
func openCluster(t *testing.T) *cluster.Cluster {
	t.Helper()
	env := hsmtest.NewEnv(t)
	_, cfg := env.NewCluster(t, "cluster-1", 2, password)
	c, err := cluster.Open(t.Context(), cfg, "alice", password)
	if err != nil {
		t.Fatalf("cluster: open: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// generate makes one key in c.
func generate(t *testing.T, c *cluster.Cluster, spec hsmcore.KeySpec) hsmcore.KeyInfo {
	t.Helper()
	keys, err := c.GenerateKeys(t.Context(), []hsmcore.KeySpec{spec})
	if err != nil {
		t.Fatalf("cluster: generate %s-%d key: %v", spec.Type, spec.Bits, err)
	}
	return keys[0]
}

// aesSpec is an AES-256 key that encrypts and decrypts.
func aesSpec(label string, extractable bool) hsmcore.KeySpec {
	return hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: label, Encrypt: true, Decrypt: true, Extractable: extractable}
}

// sameKCV fails t unless SoftHSM key h has the check value want.
func sameKCV(t *testing.T, tok *token, h pkcs11.ObjectHandle, want string) {
	t.Helper()
	got, err := tok.kcv(h)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("check value: SoftHSM %s, cluster %s", got, want)
	}
}

// shareKEK makes an AES-256 wrapping key in SoftHSM and moves it into c
// with RSA-OAEP-SHA1 under a cluster RSA key whose public half SoftHSM
// imports: the first key two HSMs share, with no key shared before. It
// returns the KEK's SoftHSM handle and its cluster key, whose check values
// it checks are the same.
func shareKEK(t *testing.T, tok *token, c *cluster.Cluster) (pkcs11.ObjectHandle, hsmcore.KeyInfo) {
	t.Helper()
	rsaKey := generate(t, c, hsmcore.KeySpec{Type: hsmcore.RSA, Bits: 2048, Label: "kek-import", Unwrap: true})
	pub, err := tok.importRSAPublic(rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	softKEK, err := tok.generateAES(true, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP)
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := tok.wrap(rsaOAEPSHA1, pub, softKEK)
	if err != nil {
		t.Fatal(err)
	}
	kek, err := c.UnwrapKey(t.Context(), rsaKey.Handle, hsmcore.RSAOAEPSHA1, wrapped,
		hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "kek", Wrap: true, Unwrap: true})
	if err != nil {
		t.Fatalf("cluster: unwrap the KEK (rsa-oaep-sha1): %v", err)
	}
	sameKCV(t, tok, softKEK, kek.KCV)
	return softKEK, kek
}

// TestKEKSoftHSMToClusterRSAOAEPSHA1: a KEK made in SoftHSM enters the
// cluster wrapped by SoftHSM with CKM_RSA_PKCS_OAEP (SHA-1) under a
// cluster RSA key's public half, unwrapped there with rsa-oaep-sha1: the
// same key (check value), an AES-256 wrapping key, not local.
func TestKEKSoftHSMToClusterRSAOAEPSHA1(t *testing.T) {
	_, kek := shareKEK(t, openToken(t), openCluster(t))
	if kek.Type != hsmcore.AES || kek.Bits != 256 || !kek.Wrap || !kek.Unwrap || kek.Local {
		t.Fatalf("cluster KEK: %+v, want a non-local AES-256 key that wraps and unwraps", kek)
	}
}

// TestAESKeySoftHSMToClusterAESKWP: an AES-256 key made in SoftHSM,
// wrapped by SoftHSM with CKM_AES_KEY_WRAP_PAD under the shared KEK and
// unwrapped by the cluster with aes-kwp, has its check value and decrypts
// what SoftHSM encrypted with it (AES-GCM).
func TestAESKeySoftHSMToClusterAESKWP(t *testing.T) {
	tok, c := openToken(t), openCluster(t)
	softKEK, kek := shareKEK(t, tok, c)
	key, err := tok.generateAES(true, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := tok.seal(key, message, aad)
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := tok.wrap(aesKeyWrapPad, softKEK, key)
	if err != nil {
		t.Fatal(err)
	}
	moved, err := c.UnwrapKey(t.Context(), kek.Handle, hsmcore.AESKWP, wrapped, aesSpec("from-softhsm", false))
	if err != nil {
		t.Fatalf("cluster: unwrap (aes-kwp): %v", err)
	}
	sameKCV(t, tok, key, moved.KCV)
	got, err := c.Decrypt(t.Context(), moved.Handle, sealed, aad)
	if err != nil {
		t.Fatalf("cluster: decrypt what SoftHSM encrypted: %v", err)
	}
	if !bytes.Equal(got, message) {
		t.Fatalf("cluster decrypted %q, want %q", got, message)
	}
}

// TestAESKeyClusterToSoftHSMAESKWP: an AES-256 key made in the cluster,
// wrapped by the cluster with aes-kwp under the shared KEK and unwrapped
// by SoftHSM with CKM_AES_KEY_WRAP_PAD, has its check value and decrypts
// what the cluster encrypted with it.
func TestAESKeyClusterToSoftHSMAESKWP(t *testing.T) {
	tok, c := openToken(t), openCluster(t)
	softKEK, kek := shareKEK(t, tok, c)
	key := generate(t, c, aesSpec("to-softhsm", true))
	sealed, err := c.Encrypt(t.Context(), key.Handle, message, aad)
	if err != nil {
		t.Fatalf("cluster: encrypt: %v", err)
	}
	wrapped, err := c.WrapKey(t.Context(), kek.Handle, key.Handle, hsmcore.AESKWP)
	if err != nil {
		t.Fatalf("cluster: wrap (aes-kwp): %v", err)
	}
	moved, err := tok.unwrapAES(aesKeyWrapPad, softKEK, wrapped, false, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT)
	if err != nil {
		t.Fatal(err)
	}
	sameKCV(t, tok, moved, key.KCV)
	got, err := tok.open(moved, sealed, aad)
	if err != nil {
		t.Fatalf("decrypt what the cluster encrypted: %v", err)
	}
	if !bytes.Equal(got, message) {
		t.Fatalf("SoftHSM decrypted %q, want %q", got, message)
	}
}

// TestRSAAESSHA1ClusterToSoftHSMInTwoSteps: a cluster key wrapped by the
// cluster with rsa-aes-sha1 under the public half of a SoftHSM RSA key
// opens in SoftHSM in two steps (CKM_RSA_PKCS_OAEP, then
// CKM_AES_KEY_WRAP_PAD), with its check value, and decrypts what the
// cluster encrypted with it.
func TestRSAAESSHA1ClusterToSoftHSMInTwoSteps(t *testing.T) {
	tok, c := openToken(t), openCluster(t)
	pub, priv, err := tok.generateRSA()
	if err != nil {
		t.Fatal(err)
	}
	der, err := tok.publicKeyDER(pub)
	if err != nil {
		t.Fatal(err)
	}
	key := generate(t, c, aesSpec("to-softhsm", true))
	sealed, err := c.Encrypt(t.Context(), key.Handle, message, aad)
	if err != nil {
		t.Fatalf("cluster: encrypt: %v", err)
	}
	blob, err := c.WrapKeyToPublic(t.Context(), der, key.Handle, hsmcore.RSAAESSHA1)
	if err != nil {
		t.Fatalf("cluster: wrap to SoftHSM's public key (rsa-aes-sha1): %v", err)
	}
	moved, err := tok.unwrapRSAAES(priv, blob, false, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT)
	if err != nil {
		t.Fatal(err)
	}
	sameKCV(t, tok, moved, key.KCV)
	got, err := tok.open(moved, sealed, aad)
	if err != nil {
		t.Fatalf("decrypt what the cluster encrypted: %v", err)
	}
	if !bytes.Equal(got, message) {
		t.Fatalf("SoftHSM decrypted %q, want %q", got, message)
	}
}

// TestRSAAESSHA1SoftHSMToClusterInTwoSteps: a SoftHSM key wrapped by
// SoftHSM in two steps (an ephemeral AES key under CKM_RSA_PKCS_OAEP to
// the public half of a cluster RSA key, then the key under it with
// CKM_AES_KEY_WRAP_PAD) unwraps in the cluster with rsa-aes-sha1, with its
// check value, and decrypts what SoftHSM encrypted with it.
func TestRSAAESSHA1SoftHSMToClusterInTwoSteps(t *testing.T) {
	tok, c := openToken(t), openCluster(t)
	rsaKey := generate(t, c, hsmcore.KeySpec{Type: hsmcore.RSA, Bits: 2048, Label: "import", Unwrap: true})
	pub, err := tok.importRSAPublic(rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := tok.generateAES(true, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := tok.seal(key, message, aad)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := tok.wrapRSAAES(pub, key)
	if err != nil {
		t.Fatal(err)
	}
	moved, err := c.UnwrapKey(t.Context(), rsaKey.Handle, hsmcore.RSAAESSHA1, blob, aesSpec("from-softhsm", false))
	if err != nil {
		t.Fatalf("cluster: unwrap (rsa-aes-sha1): %v", err)
	}
	sameKCV(t, tok, key, moved.KCV)
	got, err := c.Decrypt(t.Context(), moved.Handle, sealed, aad)
	if err != nil {
		t.Fatalf("cluster: decrypt what SoftHSM encrypted: %v", err)
	}
	if !bytes.Equal(got, message) {
		t.Fatalf("cluster decrypted %q, want %q", got, message)
	}
}

// TestSoftHSMRefusesNonExtractable: SoftHSM does not wrap a key made
// without CKA_EXTRACTABLE (CKR_KEY_UNEXTRACTABLE).
func TestSoftHSMRefusesNonExtractable(t *testing.T) {
	tok := openToken(t)
	kek, err := tok.generateAES(false, pkcs11.CKA_WRAP)
	if err != nil {
		t.Fatal(err)
	}
	key, err := tok.generateAES(false, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tok.wrap(aesKeyWrapPad, kek, key); !errors.Is(err, pkcs11.Error(pkcs11.CKR_KEY_UNEXTRACTABLE)) {
		t.Fatalf("wrap a non-extractable key: got %v, want CKR_KEY_UNEXTRACTABLE", err)
	}
}

// TestClusterRefusesNonExtractable: the cluster wraps a key made without
// Extractable for SoftHSM neither under the shared KEK (aes-kwp) nor
// under SoftHSM's RSA public key (rsa-aes-sha1): ErrPermission.
func TestClusterRefusesNonExtractable(t *testing.T) {
	tok, c := openToken(t), openCluster(t)
	_, kek := shareKEK(t, tok, c)
	pub, _, err := tok.generateRSA()
	if err != nil {
		t.Fatal(err)
	}
	der, err := tok.publicKeyDER(pub)
	if err != nil {
		t.Fatal(err)
	}
	key := generate(t, c, aesSpec("stays", false))
	if _, err := c.WrapKey(t.Context(), kek.Handle, key.Handle, hsmcore.AESKWP); !errors.Is(err, hsmcore.ErrPermission) {
		t.Errorf("cluster: wrap a non-extractable key under the shared KEK: got %v, want ErrPermission", err)
	}
	if _, err := c.WrapKeyToPublic(t.Context(), der, key.Handle, hsmcore.RSAAESSHA1); !errors.Is(err, hsmcore.ErrPermission) {
		t.Errorf("cluster: wrap a non-extractable key to SoftHSM's public key: got %v, want ErrPermission", err)
	}
}
