// Package kbkdf implements the key-based key derivation function of NIST
// SP 800-108r1 §4.1 (KDF in counter mode) with HMAC-SHA256 as the PRF and a
// 32-bit counter placed before the fixed input data:
//
//	K(i) = HMAC-SHA256(K_IN, [i]_32 || FixedInput)    for i = 1, 2, ..., n
//	K_OUT = leftmost L bits of K(1) || K(2) || ... || K(n)
//
// with FixedInput = Label || 0x00 || Context || [L]_32, as in §4.1, and
// [x]_32 the 32-bit big-endian encoding of x.
package kbkdf

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
)

// MaxOutLen is the largest output, in bytes, for which L = 8*outLen still
// fits in the 32-bit [L]_32 field (and so the 32-bit counter cannot wrap).
const MaxOutLen = (1<<32 - 1) / 8

// CounterHMACSHA256 returns outLen bytes of the SP 800-108r1 §4.1 counter-mode
// KDF: HMAC-SHA256(key, [i]_32 || fixedInput) for i = 1, 2, ..., truncated.
// fixedInput is used as given; see FixedInput for the recommended layout.
// It panics if outLen <= 0 or outLen > MaxOutLen.
func CounterHMACSHA256(key, fixedInput []byte, outLen int) []byte {
	checkOutLen(outLen)
	prf := hmac.New(sha256.New, key)
	out := make([]byte, 0, outLen+sha256.Size)
	var ctr [4]byte
	for i := uint32(1); len(out) < outLen; i++ {
		binary.BigEndian.PutUint32(ctr[:], i)
		prf.Reset()
		prf.Write(ctr[:])
		prf.Write(fixedInput)
		out = prf.Sum(out)
	}
	clear(out[outLen:]) // do not leave unused key stream in the backing array
	return out[:outLen:outLen]
}

// FixedInput returns the SP 800-108r1 §4.1 fixed input data
// Label || 0x00 || Context || [L]_32 with L = 8*outLen bits. The zero byte
// separates Label from Context, so label must not contain a zero byte;
// FixedInput panics if it does, or if outLen <= 0 or outLen > MaxOutLen.
func FixedInput(label, context []byte, outLen int) []byte {
	checkOutLen(outLen)
	for _, b := range label {
		if b == 0 {
			panic("kbkdf: label contains a zero byte")
		}
	}
	in := make([]byte, 0, len(label)+1+len(context)+4)
	in = append(in, label...)
	in = append(in, 0x00)
	in = append(in, context...)
	return binary.BigEndian.AppendUint32(in, uint32(outLen)*8)
}

// Derive returns outLen bytes derived from key for the given label and
// context: CounterHMACSHA256(key, FixedInput(label, context, outLen), outLen).
func Derive(key, label, context []byte, outLen int) []byte {
	return CounterHMACSHA256(key, FixedInput(label, context, outLen), outLen)
}

func checkOutLen(outLen int) {
	if outLen <= 0 || outLen > MaxOutLen {
		panic("kbkdf: output length out of range")
	}
}
