package keywrap

import (
	"crypto/aes"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
)

// AES key wrap without padding: KW-AE and KW-AD of NIST SP 800-38F §6.2,
// the algorithm of RFC 3394 (default initial value A6A6A6A6A6A6A6A6), for
// keys whose length is a multiple of 8 bytes. tink has no implementation
// of it, so it is written here, in the index-based form of RFC 3394 §2.2,
// and pinned by the RFC's test vectors and by OpenSSL (-id-aes*-wrap).

// kwIV is RFC 3394's default initial value.
var kwIV = [8]byte{0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6}

// WrapKW wraps key under kek with AES-KW (RFC 3394). kek must be 16, 24
// or 32 bytes; key a multiple of 8 bytes, MinKeySize to MaxKeySize. The
// output is 8 bytes longer than key.
func WrapKW(kek, key []byte) ([]byte, error) {
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("keywrap: KEK is %d bytes, want 16, 24 or 32", len(kek))
	}
	if len(key)%8 != 0 || len(key) < MinKeySize || len(key) > MaxKeySize {
		return nil, fmt.Errorf("keywrap: key is %d bytes, want a multiple of 8 from %d to %d", len(key), MinKeySize, MaxKeySize)
	}
	n := len(key) / 8
	out := make([]byte, 8+len(key))
	copy(out, kwIV[:])
	copy(out[8:], key)
	var blk [16]byte
	for j := range 6 {
		for i := 1; i <= n; i++ {
			copy(blk[:8], out[:8])
			copy(blk[8:], out[8*i:8*i+8])
			b.Encrypt(blk[:], blk[:])
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(out[:8], binary.BigEndian.Uint64(blk[:8])^t)
			copy(out[8*i:], blk[8:])
		}
	}
	clear(blk[:])
	return out, nil
}

// UnwrapKW checks and unwraps a key wrapped by WrapKW (or any RFC 3394
// implementation with the default initial value). Every failure that
// depends on the wrapped input returns ErrUnwrap itself.
func UnwrapKW(kek, wrapped []byte) ([]byte, error) {
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("%w: KEK is %d bytes, want 16, 24 or 32", ErrUnwrap, len(kek))
	}
	if len(wrapped)%8 != 0 || len(wrapped) < 8+MinKeySize || len(wrapped) > 8+MaxKeySize {
		return nil, ErrUnwrap
	}
	n := len(wrapped)/8 - 1
	var a [8]byte
	copy(a[:], wrapped[:8])
	key := make([]byte, 8*n)
	copy(key, wrapped[8:])
	var blk [16]byte
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(blk[:8], binary.BigEndian.Uint64(a[:])^t)
			copy(blk[8:], key[8*(i-1):8*i])
			b.Decrypt(blk[:], blk[:])
			copy(a[:], blk[:8])
			copy(key[8*(i-1):], blk[8:])
		}
	}
	clear(blk[:])
	if subtle.ConstantTimeCompare(a[:], kwIV[:]) != 1 {
		clear(key)
		return nil, ErrUnwrap
	}
	return key, nil
}
