package device

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hpke"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/keywrap"
)

// hpkeInfo is the HPKE info string of the hpke mechanism.
const hpkeInfo = "hsmbackup hpke key wrap v1"

// maxWrapped bounds a wrapped key an unwrap takes: a PKCS#8 RSA-4096 key
// (about 2.4 KB) under any mechanism, with room to spare.
const maxWrapped = 16 << 10

// errUnwrap is what every unwrap failure that depends on the wrapped bytes
// returns, with no detail: an integrity check failed.
var errUnwrap = fmt.Errorf("wrapped key does not open under this key: %w", hsmcore.ErrTampered)

// checkWrapping reports why key w cannot wrap (unwrap, if unwrap) with
// mech, or "" if it can.
func checkWrapping(mech hsmcore.Mechanism, w *keyRecord, unwrap bool) string {
	switch {
	case w.Type != mech.WrappingKeyType():
		return fmt.Sprintf("%s wraps with an %s key, not %s", mech, mech.WrappingKeyType(), w.Type)
	case !unwrap && !w.Wrap:
		return "wrapping key does not have wrap set"
	case unwrap && !w.Unwrap:
		return "unwrapping key does not have unwrap set"
	case mech == hsmcore.AESKWP && w.Bits == 192:
		return "aes-kwp with AES-192 is not supported"
	}
	return ""
}

// oaepHash is the OAEP and MGF1 hash of an RSA mechanism.
func oaepHash(mech hsmcore.Mechanism) crypto.Hash {
	if mech == hsmcore.RSAOAEPSHA1 || mech == hsmcore.RSAAESSHA1 {
		return crypto.SHA1
	}
	return crypto.SHA256
}

// wrapMaterial wraps target (raw or PKCS#8 bytes) under w with mech,
// checked by checkWrapping.
func wrapMaterial(mech hsmcore.Mechanism, w *keyRecord, target []byte) ([]byte, error) {
	switch mech {
	case hsmcore.AESKWP:
		return keywrap.Wrap(w.Material, target)
	case hsmcore.AESKW:
		return keywrap.WrapKW(w.Material, target)
	case hsmcore.AESGCM:
		aead, err := gcm(w.Material)
		if err != nil {
			return nil, err
		}
		iv := make([]byte, aead.NonceSize(), aead.NonceSize()+len(target)+aead.Overhead())
		rand.Read(iv)
		return aead.Seal(iv, iv, target, nil), nil
	}
	if mech == hsmcore.HPKEWrap {
		pk, err := hpke.MLKEM768X25519().NewPublicKey(w.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("hpke key: %w", err)
		}
		return hpke.Seal(pk, hpke.HKDFSHA256(), hpke.AES256GCM(), []byte(hpkeInfo), target)
	}
	pub, err := rsaPublic(w)
	if err != nil {
		return nil, err
	}
	h := oaepHash(mech)
	switch mech {
	case hsmcore.RSAOAEP, hsmcore.RSAOAEPSHA1:
		return rsa.EncryptOAEP(h.New(), rand.Reader, pub, target, nil)
	case hsmcore.RSAAES, hsmcore.RSAAESSHA1:
		k := make([]byte, 32)
		defer clear(k)
		rand.Read(k)
		head, err := rsa.EncryptOAEP(h.New(), rand.Reader, pub, k, nil)
		if err != nil {
			return nil, err
		}
		tail, err := keywrap.Wrap(k, target)
		if err != nil {
			return nil, err
		}
		return append(head, tail...), nil
	}
	return nil, fmt.Errorf("wrap mechanism %q: %w", mech, hsmcore.ErrInvalid)
}

// unwrapMaterial opens wrapped under w with mech, checked by
// checkWrapping. Failures that depend on wrapped are errUnwrap.
func unwrapMaterial(mech hsmcore.Mechanism, w *keyRecord, wrapped []byte) ([]byte, error) {
	switch mech {
	case hsmcore.AESKWP, hsmcore.AESKW:
		unwrap := keywrap.Unwrap
		if mech == hsmcore.AESKW {
			unwrap = keywrap.UnwrapKW
		}
		m, err := unwrap(w.Material, wrapped)
		if errors.Is(err, keywrap.ErrUnwrap) {
			return nil, errUnwrap
		}
		return m, err
	case hsmcore.AESGCM:
		aead, err := gcm(w.Material)
		if err != nil {
			return nil, err
		}
		if len(wrapped) < aead.NonceSize()+aead.Overhead() {
			return nil, errUnwrap
		}
		m, err := aead.Open(nil, wrapped[:aead.NonceSize()], wrapped[aead.NonceSize():], nil)
		if err != nil {
			return nil, errUnwrap
		}
		return m, nil
	}
	if mech == hsmcore.HPKEWrap {
		sk, err := hpke.MLKEM768X25519().NewPrivateKey(w.Material)
		if err != nil {
			return nil, fmt.Errorf("hpke key: %w", err)
		}
		m, err := hpke.Open(sk, hpke.HKDFSHA256(), hpke.AES256GCM(), []byte(hpkeInfo), wrapped)
		if err != nil {
			return nil, errUnwrap
		}
		return m, nil
	}
	priv, err := rsaPrivate(w)
	if err != nil {
		return nil, err
	}
	h := oaepHash(mech)
	switch mech {
	case hsmcore.RSAOAEP, hsmcore.RSAOAEPSHA1:
		m, err := rsa.DecryptOAEP(h.New(), nil, priv, wrapped, nil)
		if err != nil {
			return nil, errUnwrap
		}
		return m, nil
	case hsmcore.RSAAES, hsmcore.RSAAESSHA1:
		n := priv.Size()
		if len(wrapped) <= n {
			return nil, errUnwrap
		}
		k, err := rsa.DecryptOAEP(h.New(), nil, priv, wrapped[:n], nil)
		if err != nil || len(k) != 32 {
			return nil, errUnwrap
		}
		defer clear(k)
		m, err := keywrap.Unwrap(k, wrapped[n:])
		if err != nil {
			return nil, errUnwrap
		}
		return m, nil
	}
	return nil, fmt.Errorf("wrap mechanism %q: %w", mech, hsmcore.ErrInvalid)
}

func gcm(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func rsaPrivate(w *keyRecord) (*rsa.PrivateKey, error) {
	k, err := x509.ParsePKCS8PrivateKey(w.Material)
	if err != nil {
		return nil, fmt.Errorf("rsa key: %w", err)
	}
	p, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key %d is not an RSA key", w.Handle)
	}
	return p, nil
}

func rsaPublic(w *keyRecord) (*rsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(w.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("rsa key: %w", err)
	}
	p, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("key %d is not an RSA key", w.Handle)
	}
	return p, nil
}
