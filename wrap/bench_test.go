package wrap

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"io"
	"testing"
)

// benchSize is the plaintext of every benchmark: 64 MiB, as docs/ARCHITECTURE.md's
// "outer wrap >= 80% of bare AES-256-GCM" target is measured on.
const benchSize = 64 << 20

// BenchmarkBareGCM is the baseline: AES-256-GCM sealing the same 64 MiB in
// 64 KiB chunks into one reused buffer, with counter nonces, to
// io.Discard; no framing, no copies.
func BenchmarkBareGCM(b *testing.B) {
	p := pattern(benchSize)
	block, _ := aes.NewCipher(make([]byte, 32))
	gcm, _ := cipher.NewGCM(block)
	out := make([]byte, 0, PackageSize+gcm.Overhead())
	var nonce [12]byte
	b.SetBytes(benchSize)
	b.ResetTimer()
	for b.Loop() {
		for i := 0; i < len(p); i += PackageSize {
			binary.BigEndian.PutUint64(nonce[4:], uint64(i))
			out = gcm.Seal(out[:0], nonce[:], p[i:i+PackageSize], nil)
			io.Discard.Write(out)
		}
	}
}

// BenchmarkEncrypt is the outer wrap: a whole envelope (DEK, keyring
// stanza, header, DARE body) of 64 MiB written in one Write to io.Discard.
func BenchmarkEncrypt(b *testing.B) {
	benchEncrypt(b, benchSize)
}

// BenchmarkEncryptCopy is the outer wrap as the pipeline uses it: io.Copy
// from a reader into the envelope writer (32 KiB writes).
func BenchmarkEncryptCopy(b *testing.B) {
	p := pattern(benchSize)
	k := testKeyring(b, "prod", 1)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for b.Loop() {
		w, err := Encrypt(context.Background(), io.Discard, k)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(w, onlyReader{bytes.NewReader(p)}); err != nil {
			b.Fatal(err)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// onlyReader hides bytes.Reader's WriteTo, so that io.Copy does plain
// 32 KiB reads and writes as it would from a network stream.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func benchEncrypt(b *testing.B, n int) {
	p := pattern(n)
	k := testKeyring(b, "prod", 1)
	b.SetBytes(int64(n))
	b.ResetTimer()
	for b.Loop() {
		w, err := Encrypt(context.Background(), io.Discard, k)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := w.Write(p); err != nil {
			b.Fatal(err)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecrypt opens a 64 MiB envelope through io.Copy.
func BenchmarkDecrypt(b *testing.B) {
	k := testKeyring(b, "prod", 1)
	env := seal(b, pattern(benchSize), k)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for b.Loop() {
		r, err := Decrypt(context.Background(), bytes.NewReader(env), k)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRewrap rewraps a 64 MiB envelope: the header is rewritten, the
// body copied and authenticated, never re-encrypted.
func BenchmarkRewrap(b *testing.B) {
	k := testKeyring(b, "prod", 2)
	env := seal(b, pattern(benchSize), subset(b, k, 1))
	b.SetBytes(benchSize)
	b.ResetTimer()
	for b.Loop() {
		if err := Rewrap(context.Background(), bytes.NewReader(env), io.Discard, []Identity{k}, k); err != nil {
			b.Fatal(err)
		}
	}
}
