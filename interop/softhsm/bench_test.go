//go:build cgo

package softhsm

import (
	"testing"

	"github.com/miekg/pkcs11"
)

// wrapBenchKeys is a full hsm2m.medium HSM's worth of keys, as the
// cluster's own benchmarks use.
const wrapBenchKeys = 16666

// BenchmarkSoftHSMWrapPad is SoftHSMv2's raw C_WrapKey rate with
// CKM_AES_KEY_WRAP_PAD: 16,666 extractable AES-256 session keys, made
// once outside the timer, each wrapped under one AES-256 KEK per
// iteration. It reports keys/s.
func BenchmarkSoftHSMWrapPad(b *testing.B) {
	tok := openToken(b)
	kek, err := tok.generateAES(false, pkcs11.CKA_WRAP)
	if err != nil {
		b.Fatal(err)
	}
	keys := make([]pkcs11.ObjectHandle, wrapBenchKeys)
	for i := range keys {
		if keys[i], err = tok.generateAES(true); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		for _, k := range keys {
			if _, err := tok.wrap(aesKeyWrapPad, kek, k); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*len(keys))/b.Elapsed().Seconds(), "keys/s")
}
