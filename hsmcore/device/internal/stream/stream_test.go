package stream

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
)

// Sizes at and around chunk boundaries.
var boundaryLengths = []int{
	0, 1, 17,
	ChunkSize - 1, ChunkSize, ChunkSize + 1,
	2*ChunkSize + 17,
	5 * ChunkSize,
}

func testKey() []byte {
	k := make([]byte, KeySize)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

var testAAD = []byte("hsmbackup test")

// plaintext returns n bytes of i%251, a pattern that does not repeat at
// chunk boundaries.
func plaintext(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i % 251)
	}
	return p
}

// encrypt encrypts pt with NewWriter, writing it in pieces of the given sizes
// (cycled); no sizes means one Write.
func encrypt(tb testing.TB, key, aad, pt []byte, sizes ...int) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, key, aad)
	if err != nil {
		tb.Fatalf("NewWriter: %v", err)
	}
	if len(sizes) == 0 {
		sizes = []int{len(pt)}
	}
	for i, p := 0, pt; len(p) > 0; i++ {
		k := min(sizes[i%len(sizes)], len(p))
		n, err := w.Write(p[:k])
		if err != nil || n != k {
			tb.Fatalf("Write(%d bytes) = %d, %v", k, n, err)
		}
		p = p[k:]
	}
	if err := w.Close(); err != nil {
		tb.Fatalf("Close: %v", err)
	}
	return buf.Bytes()
}

// decrypt reads all of ct through NewReader.
func decrypt(tb testing.TB, key, aad, ct []byte) ([]byte, error) {
	tb.Helper()
	r, err := NewReader(bytes.NewReader(ct), key, aad)
	if err != nil {
		tb.Fatalf("NewReader: %v", err)
	}
	return io.ReadAll(r)
}

// readAllSized reads r to the end with reads of exactly size bytes.
func readAllSized(r io.Reader, size int) ([]byte, error) {
	var out []byte
	p := make([]byte, size)
	for {
		n, err := r.Read(p)
		out = append(out, p[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// refSeal seals one chunk directly with AES-256-GCM, independently of the
// package's writer, following the format in the package documentation.
func refSeal(tb testing.TB, key, aad []byte, i uint64, last bool, pt []byte) []byte {
	tb.Helper()
	block, err := aes.NewCipher(key)
	if err != nil {
		tb.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		tb.Fatal(err)
	}
	nonce := make([]byte, 12) // 11-byte big-endian i || flag
	binary.BigEndian.PutUint64(nonce[3:11], i)
	if last {
		nonce[11] = 0x01
	}
	return gcm.Seal(nil, nonce, pt, aad)
}

// refEncrypt is the whole format built from refSeal.
func refEncrypt(tb testing.TB, key, aad, pt []byte) []byte {
	tb.Helper()
	var out []byte
	for i := uint64(0); ; i++ {
		n := min(ChunkSize, len(pt))
		last := n == len(pt)
		out = append(out, refSeal(tb, key, aad, i, last, pt[:n])...)
		pt = pt[n:]
		if last {
			return out
		}
	}
}

// chunks splits a well-formed ciphertext into its sealed chunks.
func chunks(ct []byte) [][]byte {
	var cs [][]byte
	for len(ct) > encChunkSize {
		cs = append(cs, ct[:encChunkSize])
		ct = ct[encChunkSize:]
	}
	return append(cs, ct)
}

func join(cs ...[]byte) []byte { return bytes.Join(cs, nil) }

// checkFailure asserts that err wraps want and names chunk failed, and that
// out is exactly the plaintext of the chunks before it: nothing of the failed
// chunk or later was released.
func checkFailure(tb testing.TB, out []byte, err error, pt []byte, want error, failed int) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("decryption succeeded, want %v", want)
	}
	if !errors.Is(err, want) {
		tb.Fatalf("error = %v, want %v", err, want)
	}
	if prefix := fmt.Sprintf("chunk %d: ", failed); !strings.HasPrefix(err.Error(), prefix) {
		tb.Errorf("error = %q, want prefix %q", err, prefix)
	}
	if wantLen := failed * ChunkSize; len(out) != wantLen || !bytes.Equal(out, pt[:wantLen]) {
		tb.Errorf("released %d bytes before the error, want the %d bytes of chunks before chunk %d", len(out), wantLen, failed)
	}
}

func TestRoundTrip(t *testing.T) {
	key := testKey()
	writeSizes := [][]int{nil, {1}, {7}, {4097}, {1, 7, 4097}, {ChunkSize + 1}}
	for _, n := range boundaryLengths {
		pt := plaintext(n)
		want := refEncrypt(t, key, testAAD, pt)
		for _, sizes := range writeSizes {
			t.Run(fmt.Sprintf("len=%d/writes=%v", n, sizes), func(t *testing.T) {
				ct := encrypt(t, key, testAAD, pt, sizes...)
				if got := EncryptedSize(int64(n)); got != int64(len(ct)) {
					t.Errorf("EncryptedSize(%d) = %d, ciphertext is %d bytes", n, got, len(ct))
				}
				if !bytes.Equal(ct, want) {
					t.Fatalf("ciphertext differs from the reference construction")
				}
				got, err := decrypt(t, key, testAAD, ct)
				if err != nil {
					t.Fatalf("decrypt: %v", err)
				}
				if !bytes.Equal(got, pt) {
					t.Fatalf("decrypted plaintext differs")
				}
			})
		}
		for _, size := range []int{1, 7, 4097, ChunkSize + 1} {
			t.Run(fmt.Sprintf("len=%d/reads=%d", n, size), func(t *testing.T) {
				r, err := NewReader(bytes.NewReader(want), key, testAAD)
				if err != nil {
					t.Fatal(err)
				}
				got, err := readAllSized(r, size)
				if err != nil || !bytes.Equal(got, pt) {
					t.Fatalf("read %d bytes, err %v; want %d bytes", len(got), err, len(pt))
				}
			})
		}
	}
}

func TestEncryptedSize(t *testing.T) {
	tests := []struct{ n, want int64 }{
		{0, 16},
		{1, 17},
		{ChunkSize - 1, ChunkSize + 15},
		{ChunkSize, ChunkSize + 16},
		{ChunkSize + 1, ChunkSize + 1 + 32},
		{2*ChunkSize + 17, 2*ChunkSize + 17 + 48},
		{5 * ChunkSize, 5*ChunkSize + 80},
		{1 << 40, 1<<40 + 1<<28},
	}
	for _, tt := range tests {
		if got := EncryptedSize(tt.n); got != tt.want {
			t.Errorf("EncryptedSize(%d) = %d, want %d", tt.n, got, tt.want)
		}
	}
	for _, n := range []int64{-1, math.MinInt64, math.MaxInt64, math.MaxInt64 - 1<<40} {
		func() {
			defer func() {
				if r := recover(); r == nil || !strings.HasPrefix(fmt.Sprint(r), "stream: ") {
					t.Errorf("EncryptedSize(%d): recovered %v, want a stream: panic", n, r)
				}
			}()
			EncryptedSize(n)
		}()
	}
}

func TestIOTestReader(t *testing.T) {
	key := testKey()
	for _, n := range boundaryLengths {
		t.Run(fmt.Sprintf("len=%d", n), func(t *testing.T) {
			pt := plaintext(n)
			ct := encrypt(t, key, testAAD, pt)
			r, err := NewReader(bytes.NewReader(ct), key, testAAD)
			if err != nil {
				t.Fatal(err)
			}
			if err := iotest.TestReader(r, pt); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSourceReaders(t *testing.T) {
	key := testKey()
	sources := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"OneByteReader", iotest.OneByteReader},
		{"HalfReader", iotest.HalfReader},
		{"DataErrReader", iotest.DataErrReader},
		{"DataErrReader(OneByteReader)", func(r io.Reader) io.Reader { return iotest.DataErrReader(iotest.OneByteReader(r)) }},
	}
	for _, n := range []int{0, 1, ChunkSize, ChunkSize + 1, 2*ChunkSize + 17} {
		pt := plaintext(n)
		ct := encrypt(t, key, testAAD, pt)
		for _, src := range sources {
			t.Run(fmt.Sprintf("%s/len=%d", src.name, n), func(t *testing.T) {
				r, err := NewReader(src.wrap(bytes.NewReader(ct)), key, testAAD)
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(r)
				if err != nil || !bytes.Equal(got, pt) {
					t.Fatalf("read %d bytes, err %v; want %d bytes", len(got), err, len(pt))
				}
			})
		}
	}
}

func TestSourceErrors(t *testing.T) {
	key := testKey()
	pt := plaintext(3*ChunkSize + 17)
	ct := encrypt(t, key, testAAD, pt)

	t.Run("ErrReader", func(t *testing.T) {
		boom := errors.New("boom")
		r, err := NewReader(iotest.ErrReader(boom), key, testAAD)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Read(make([]byte, 10)); !errors.Is(err, boom) {
			t.Fatalf("error = %v, want %v", err, boom)
		}
	})

	t.Run("TimeoutReader", func(t *testing.T) {
		// The first source read succeeds and returns 1 byte, the second fails.
		r, err := NewReader(iotest.TimeoutReader(iotest.OneByteReader(bytes.NewReader(ct))), key, testAAD)
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(r)
		if !errors.Is(err, iotest.ErrTimeout) || len(out) != 0 {
			t.Fatalf("got %d bytes, error %v; want 0 bytes, %v", len(out), err, iotest.ErrTimeout)
		}
	})

	t.Run("MidStream", func(t *testing.T) {
		// The source fails inside chunk 2: chunks 0 and 1 are released, and
		// the error is the source's, not ErrTruncated.
		boom := errors.New("boom")
		src := io.MultiReader(bytes.NewReader(ct[:2*encChunkSize+100]), iotest.ErrReader(boom))
		r, err := NewReader(src, key, testAAD)
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(r)
		if !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "read chunk 2: ") {
			t.Fatalf("error = %v, want read chunk 2: %v", err, boom)
		}
		if !bytes.Equal(out, pt[:2*ChunkSize]) {
			t.Fatalf("released %d bytes, want %d", len(out), 2*ChunkSize)
		}
		if _, err2 := r.Read(make([]byte, 1)); err2 != err {
			t.Fatalf("second Read error = %v, want the same %v", err2, err)
		}
	})

	t.Run("UnexpectedEOFIsNotEnd", func(t *testing.T) {
		// A source failing with io.ErrUnexpectedEOF exactly at the end of an
		// authentic full chunk must not make it look like the last one.
		src := io.MultiReader(bytes.NewReader(ct[:encChunkSize]), iotest.ErrReader(io.ErrUnexpectedEOF))
		r, err := NewReader(src, key, testAAD)
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(r)
		if !errors.Is(err, io.ErrUnexpectedEOF) || len(out) != 0 {
			t.Fatalf("got %d bytes, error %v; want 0 bytes, %v", len(out), err, io.ErrUnexpectedEOF)
		}
	})
}

func TestTruncation(t *testing.T) {
	key := testKey()
	for _, n := range []int{1, ChunkSize, ChunkSize + 1, 3 * ChunkSize, 3*ChunkSize + 17} {
		pt := plaintext(n)
		ct := encrypt(t, key, testAAD, pt)
		nChunks := len(chunks(ct))
		// At every chunk boundary, including 0 (empty input): the last chunk
		// left is authentic but not marked last.
		for k := 0; k < nChunks; k++ {
			t.Run(fmt.Sprintf("len=%d/chunks=%d", n, k), func(t *testing.T) {
				out, err := decrypt(t, key, testAAD, ct[:k*encChunkSize])
				checkFailure(t, out, err, pt, ErrTruncated, max(k-1, 0))
			})
		}
		// Inside every chunk: the cut chunk fails to authenticate.
		for j := range nChunks {
			start, end := j*encChunkSize, min((j+1)*encChunkSize, len(ct))
			for _, cut := range []int{start + 1, start + 15, start + 16, start + 17, (start + end) / 2, end - 1} {
				if cut <= start || cut >= end {
					continue
				}
				t.Run(fmt.Sprintf("len=%d/cut=%d", n, cut), func(t *testing.T) {
					out, err := decrypt(t, key, testAAD, ct[:cut])
					checkFailure(t, out, err, pt, ErrTampered, j)
				})
			}
		}
	}
}

func TestEmptyInput(t *testing.T) {
	for _, src := range []io.Reader{bytes.NewReader(nil), strings.NewReader(""), iotest.DataErrReader(bytes.NewReader(nil))} {
		r, err := NewReader(src, testKey(), testAAD)
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(r)
		checkFailure(t, out, err, nil, ErrTruncated, 0)
	}
}

func TestReorderAndDuplicate(t *testing.T) {
	key := testKey()
	short := plaintext(3*ChunkSize + 17) // 4 chunks, the last one short
	full := plaintext(4 * ChunkSize)     // 4 chunks, the last one full
	cs, cf := chunks(encrypt(t, key, testAAD, short)), chunks(encrypt(t, key, testAAD, full))
	// The same plaintext under the same key but another header.
	co := chunks(encrypt(t, key, []byte("another header"), short))
	tests := []struct {
		name   string
		pt     []byte
		ct     []byte
		want   error
		failed int
	}{
		{"swap 0,1", short, join(cs[1], cs[0], cs[2], cs[3]), ErrTampered, 0},
		{"swap 1,2", short, join(cs[0], cs[2], cs[1], cs[3]), ErrTampered, 1},
		{"swap 2,last(short)", short, join(cs[0], cs[1], cs[3], cs[2]), ErrTampered, 2},
		{"swap 2,last(full)", full, join(cf[0], cf[1], cf[3], cf[2]), ErrTampered, 2},
		{"drop 1", short, join(cs[0], cs[2], cs[3]), ErrTampered, 1},
		{"drop last(full)", full, join(cf[0], cf[1], cf[2]), ErrTruncated, 2},
		{"duplicate 0", short, join(cs[0], cs[0], cs[1], cs[2], cs[3]), ErrTampered, 1},
		{"duplicate 2", short, join(cs[0], cs[1], cs[2], cs[2], cs[3]), ErrTampered, 3},
		{"duplicate last(short)", short, join(cs[0], cs[1], cs[2], cs[3], cs[3]), ErrTampered, 3},
		{"duplicate last(full)", full, join(cf[0], cf[1], cf[2], cf[3], cf[3]), ErrTrailingData, 3},
		{"splice chunk 2 from other header", short, join(cs[0], cs[1], co[2], cs[3]), ErrTampered, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := decrypt(t, key, testAAD, tt.ct)
			checkFailure(t, out, err, tt.pt, tt.want, tt.failed)
		})
	}
}

func TestBitFlip(t *testing.T) {
	key := testKey()
	pt := plaintext(2*ChunkSize + 17)
	ct := encrypt(t, key, testAAD, pt)
	offsets := map[int]bool{}
	for off := 0; off < len(ct); off += 997 {
		offsets[off] = true
	}
	for j := range chunks(ct) {
		start, end := j*encChunkSize, min((j+1)*encChunkSize, len(ct))
		offsets[start], offsets[end-1] = true, true
		offsets[end-Overhead], offsets[end-Overhead-1] = true, true // first tag byte, last body byte
	}
	for off := range offsets {
		for _, mask := range []byte{0x01, 0x80} {
			bad := bytes.Clone(ct)
			bad[off] ^= mask
			out, err := decrypt(t, key, testAAD, bad)
			checkFailure(t, out, err, pt, ErrTampered, off/encChunkSize)
		}
	}
}

func TestWrongKeyOrAAD(t *testing.T) {
	key := testKey()
	otherKey := testKey()
	otherKey[31] ^= 0x01
	for _, n := range []int{0, 1, ChunkSize, 2*ChunkSize + 17} {
		pt := plaintext(n)
		ct := encrypt(t, key, testAAD, pt)
		tests := []struct {
			name     string
			key, aad []byte
		}{
			{"key", otherKey, testAAD},
			{"aad changed", key, []byte("hsmbackup tesT")},
			{"aad extended", key, append(bytes.Clone(testAAD), 0)},
			{"aad truncated", key, testAAD[:len(testAAD)-1]},
			{"aad empty", key, nil},
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/len=%d", tt.name, n), func(t *testing.T) {
				out, err := decrypt(t, tt.key, tt.aad, ct)
				checkFailure(t, out, err, pt, ErrTampered, 0)
			})
		}
	}
}

func TestTrailingData(t *testing.T) {
	key := testKey()
	for _, n := range []int{0, 1, ChunkSize, 2*ChunkSize + 17, 3 * ChunkSize} {
		pt := plaintext(n)
		ct := encrypt(t, key, testAAD, pt)
		cs := chunks(ct)
		last := len(cs) - 1
		fullLast := len(cs[last]) == encChunkSize
		extras := []struct {
			name string
			data []byte
		}{
			{"1 byte", []byte{0}},
			{"16 bytes", make([]byte, 16)},
			{"copy of last chunk", cs[last]},
			{"next chunk sealed as last", refSeal(t, key, testAAD, uint64(len(cs)), true, plaintext(ChunkSize))},
			{"next chunk sealed as non-last", refSeal(t, key, testAAD, uint64(len(cs)), false, plaintext(ChunkSize))},
			{"empty chunk sealed as last", refSeal(t, key, testAAD, uint64(len(cs)), true, nil)},
		}
		for _, ex := range extras {
			t.Run(fmt.Sprintf("len=%d/%s", n, ex.name), func(t *testing.T) {
				out, err := decrypt(t, key, testAAD, join(ct, ex.data))
				// After a full last chunk the lookahead byte shows the extra
				// data and the chunk opens only as last. After a short last
				// chunk, the extra bytes are read as part of it.
				want := ErrTampered
				if fullLast {
					want = ErrTrailingData
				}
				checkFailure(t, out, err, pt, want, last)
			})
		}
	}
}

// TestEmptyLastChunk checks that an authentic but non-canonical empty last
// chunk after chunk 0 is rejected: only an empty stream ends with one.
func TestEmptyLastChunk(t *testing.T) {
	key := testKey()
	pt := plaintext(2 * ChunkSize)
	ct := join(
		refSeal(t, key, testAAD, 0, false, pt[:ChunkSize]),
		refSeal(t, key, testAAD, 1, false, pt[ChunkSize:]),
		refSeal(t, key, testAAD, 2, true, nil),
	)
	out, err := decrypt(t, key, testAAD, ct)
	checkFailure(t, out, err, pt, ErrTampered, 2)

	// The empty stream itself is fine, and its first Read reports io.EOF
	// rather than the discouraged 0, nil.
	r, err := NewReader(bytes.NewReader(refSeal(t, key, testAAD, 0, true, nil)), key, testAAD)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("empty stream: first Read = %d, %v; want 0, EOF", n, err)
	}
}

// TestFailedChunkNotReleased checks at the Read level that a failed chunk
// writes nothing into the caller's buffer and leaves no plaintext in the
// reader, including when the chunk authenticated with the other flag.
func TestFailedChunkNotReleased(t *testing.T) {
	key := testKey()
	pt := plaintext(3 * ChunkSize)
	ct := encrypt(t, key, testAAD, pt)
	flipped := bytes.Clone(ct)
	flipped[encChunkSize+100] ^= 1
	tests := []struct {
		name string
		ct   []byte
		want error
	}{
		{"tampered", flipped, ErrTampered},
		{"truncated", ct[:2*encChunkSize], ErrTruncated},
		{"trailing", join(ct, []byte{0}), ErrTrailingData},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewReader(bytes.NewReader(tt.ct), key, testAAD)
			if err != nil {
				t.Fatal(err)
			}
			p := make([]byte, 2*ChunkSize)
			var got []byte
			for {
				for i := range p {
					p[i] = 0xAA
				}
				n, err := r.Read(p)
				got = append(got, p[:n]...)
				if err == nil {
					continue
				}
				if !errors.Is(err, tt.want) {
					t.Fatalf("error = %v, want %v", err, tt.want)
				}
				if n != 0 || !bytes.Equal(p, bytes.Repeat([]byte{0xAA}, len(p))) {
					t.Fatalf("failing Read returned n=%d or wrote into p", n)
				}
				if !bytes.Equal(got, pt[:len(got)]) || len(got)%ChunkSize != 0 {
					t.Fatalf("released %d bytes that are not whole authentic chunks", len(got))
				}
				rr := r.(*reader)
				if len(rr.unread) != 0 || !bytes.Equal(rr.out[:ChunkSize], make([]byte, ChunkSize)) {
					t.Fatalf("plaintext of the failed chunk left in the reader")
				}
				// The error is sticky, for empty reads too.
				for _, size := range []int{0, 1, ChunkSize} {
					if n, err2 := r.Read(make([]byte, size)); n != 0 || err2 != err {
						t.Fatalf("Read(%d) after error = %d, %v; want 0, %v", size, n, err2, err)
					}
				}
				return
			}
		})
	}
}

func TestCounter(t *testing.T) {
	tests := []struct {
		c     counter
		str   string
		nonce string // hex of the non-last nonce
	}{
		{counter{}, "0", "000000000000000000000000"},
		{counter{lo: 1}, "1", "000000000000000000000100"},
		{counter{lo: 0x0102030405060708}, "72623859790382856", "000000010203040506070800"},
		{counter{hi: 1}, "0x10000000000000000", "000001000000000000000000"},
		{counter{hi: counterHiMax, lo: math.MaxUint64}, "0xffffffffffffffffffffff", "ffffffffffffffffffffff00"},
	}
	for _, tt := range tests {
		if got := tt.c.String(); got != tt.str {
			t.Errorf("String() = %q, want %q", got, tt.str)
		}
		n := tt.c.nonce(false)
		if got := hex.EncodeToString(n[:]); got != tt.nonce {
			t.Errorf("%s: nonce(false) = %s, want %s", tt.str, got, tt.nonce)
		}
		n = tt.c.nonce(true)
		if got, want := hex.EncodeToString(n[:]), tt.nonce[:22]+"01"; got != want {
			t.Errorf("%s: nonce(true) = %s, want %s", tt.str, got, want)
		}
	}

	c := counter{lo: math.MaxUint64}
	c.inc()
	if c != (counter{hi: 1}) {
		t.Errorf("carry: got %+v", c)
	}
	c = counter{hi: counterHiMax, lo: math.MaxUint64}
	c.inc()
	if !c.overflowed() {
		t.Errorf("counter did not report overflow past 2^88-1: %+v", c)
	}
}

func TestCounterOverflow(t *testing.T) {
	key := testKey()
	maxCtr := counter{hi: counterHiMax, lo: math.MaxUint64}
	var maxNonce [12]byte
	for i := range 11 {
		maxNonce[i] = 0xff
	}

	t.Run("writer last chunk at max", func(t *testing.T) {
		var buf bytes.Buffer
		w, err := NewWriter(&buf, key, testAAD)
		if err != nil {
			t.Fatal(err)
		}
		w.(*writer).ctr = maxCtr
		pt := plaintext(ChunkSize)
		if _, err := w.Write(pt); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		block, _ := aes.NewCipher(key)
		gcm, _ := cipher.NewGCM(block)
		maxNonce[11] = 0x01
		got, err := gcm.Open(nil, maxNonce[:], buf.Bytes(), testAAD)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("chunk 2^88-1 not sealed with nonce ff..ff01: %v", err)
		}
	})

	t.Run("writer past max", func(t *testing.T) {
		w, err := NewWriter(io.Discard, key, testAAD)
		if err != nil {
			t.Fatal(err)
		}
		w.(*writer).ctr = maxCtr
		if _, err := w.Write(plaintext(ChunkSize + 1)); err != nil {
			t.Fatal(err) // chunk 2^88-1 is sealed as non-last; fine
		}
		if err := w.Close(); !errors.Is(err, errCounterOverflow) {
			t.Fatalf("Close = %v, want %v", err, errCounterOverflow)
		}
	})

	t.Run("reader past max", func(t *testing.T) {
		block, _ := aes.NewCipher(key)
		gcm, _ := cipher.NewGCM(block)
		maxNonce[11] = 0x00
		pt := plaintext(ChunkSize)
		ct := join(gcm.Seal(nil, maxNonce[:], pt, testAAD), []byte("next chunk"))
		r, err := NewReader(bytes.NewReader(ct), key, testAAD)
		if err != nil {
			t.Fatal(err)
		}
		r.(*reader).ctr = maxCtr
		out, err := io.ReadAll(r)
		if !errors.Is(err, errCounterOverflow) || !bytes.Equal(out, pt) {
			t.Fatalf("got %d bytes, %v; want %d bytes, %v", len(out), err, len(pt), errCounterOverflow)
		}
	})
}

// failingWriter accepts ok bytes, then fails or writes short.
type failingWriter struct {
	ok    int
	short bool
}

var errDst = errors.New("dst failed")

func (f *failingWriter) Write(p []byte) (int, error) {
	if len(p) <= f.ok {
		f.ok -= len(p)
		return len(p), nil
	}
	n := f.ok
	f.ok = 0
	if f.short {
		return n, nil
	}
	return n, errDst
}

func TestWriter(t *testing.T) {
	key := testKey()

	t.Run("Close twice", func(t *testing.T) {
		var buf bytes.Buffer
		w, _ := NewWriter(&buf, key, testAAD)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("second Close = %v, want nil", err)
		}
		if buf.Len() != Overhead {
			t.Fatalf("wrote %d bytes, want one empty chunk", buf.Len())
		}
	})

	t.Run("Write after Close", func(t *testing.T) {
		w, _ := NewWriter(io.Discard, key, testAAD)
		w.Close()
		for _, p := range [][]byte{nil, {1}} {
			if n, err := w.Write(p); n != 0 || !errors.Is(err, errWriteAfterClose) {
				t.Fatalf("Write(%d bytes) after Close = %d, %v", len(p), n, err)
			}
		}
	})

	t.Run("dst error in Write", func(t *testing.T) {
		w, _ := NewWriter(&failingWriter{ok: encChunkSize}, key, testAAD)
		_, err := w.Write(plaintext(2*ChunkSize + 1))
		if !errors.Is(err, errDst) || !strings.HasPrefix(err.Error(), "write chunk 1: ") {
			t.Fatalf("Write = %v, want write chunk 1: %v", err, errDst)
		}
		if _, err2 := w.Write([]byte{1}); err2 != err {
			t.Fatalf("later Write = %v, want %v", err2, err)
		}
		if err2 := w.Close(); err2 != err {
			t.Fatalf("Close = %v, want %v", err2, err)
		}
		if err2 := w.Close(); err2 != err {
			t.Fatalf("second Close = %v, want %v", err2, err)
		}
	})

	t.Run("dst error in Close", func(t *testing.T) {
		w, _ := NewWriter(&failingWriter{}, key, testAAD)
		if _, err := w.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); !errors.Is(err, errDst) {
			t.Fatalf("Close = %v, want %v", err, errDst)
		}
	})

	t.Run("short write", func(t *testing.T) {
		w, _ := NewWriter(&failingWriter{ok: 10, short: true}, key, testAAD)
		w.Write([]byte("x"))
		if err := w.Close(); !errors.Is(err, io.ErrShortWrite) {
			t.Fatalf("Close = %v, want %v", err, io.ErrShortWrite)
		}
	})

	t.Run("aad is copied", func(t *testing.T) {
		var buf bytes.Buffer
		aad := bytes.Clone(testAAD)
		w, _ := NewWriter(&buf, key, aad)
		aad[0] ^= 1
		w.Write([]byte("hello"))
		w.Close()
		if got, err := decrypt(t, key, testAAD, buf.Bytes()); err != nil || string(got) != "hello" {
			t.Fatalf("decrypt = %q, %v", got, err)
		}
	})

	t.Run("holds one chunk", func(t *testing.T) {
		// Nothing is written until a chunk is known not to be the last.
		var buf bytes.Buffer
		w, _ := NewWriter(&buf, key, testAAD)
		w.Write(plaintext(ChunkSize))
		if buf.Len() != 0 {
			t.Fatalf("wrote %d bytes before the chunk was known not to be last", buf.Len())
		}
		w.Write([]byte{1})
		if buf.Len() != encChunkSize {
			t.Fatalf("wrote %d bytes, want one chunk", buf.Len())
		}
	})
}

func TestNewErrors(t *testing.T) {
	for _, n := range []int{0, 16, 24, 31, 33, 64} {
		if _, err := NewWriter(io.Discard, make([]byte, n), nil); err == nil {
			t.Errorf("NewWriter accepted a %d-byte key", n)
		}
		if _, err := NewReader(bytes.NewReader(nil), make([]byte, n), nil); err == nil {
			t.Errorf("NewReader accepted a %d-byte key", n)
		}
	}
	if _, err := NewWriter(nil, testKey(), nil); err == nil {
		t.Error("NewWriter accepted a nil destination")
	}
	if _, err := NewReader(nil, testKey(), nil); err == nil {
		t.Error("NewReader accepted a nil source")
	}
}

// katSHA256 pins the format: SHA-256 of the ciphertext of kat().
const katSHA256 = "fefd6f1234237fb538436f29a1e46beae2389b36ff742d1bbdd330a8d69a8943"

// kat returns the known-answer case: key 00..1f, aad "hsmbackup test",
// 70000 bytes of i%251 (one full chunk and a last chunk of 4464 bytes).
func kat() (key, aad, pt []byte) { return testKey(), []byte("hsmbackup test"), plaintext(70000) }

// readHexFile reads a testdata file of hex with '#' comment lines.
func readHexFile(tb testing.TB, name string) []byte {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatal(err)
	}
	var sb strings.Builder
	for line := range strings.Lines(string(data)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			sb.WriteString(line)
		}
	}
	b, err := hex.DecodeString(sb.String())
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	return b
}

func TestKnownAnswer(t *testing.T) {
	key, aad, pt := kat()
	ct := encrypt(t, key, aad, pt)
	if len(ct) != 70000+2*Overhead {
		t.Fatalf("ciphertext is %d bytes, want %d", len(ct), 70000+2*Overhead)
	}
	sum := sha256.Sum256(ct)
	if got := hex.EncodeToString(sum[:]); got != katSHA256 {
		t.Errorf("SHA-256(ciphertext) = %s, want %s", got, katSHA256)
	}
	if want := readHexFile(t, "kat_first_chunk.hex"); !bytes.Equal(ct[:encChunkSize], want) {
		t.Errorf("first chunk differs from testdata/kat_first_chunk.hex")
	}
	if !bytes.Equal(ct, refEncrypt(t, key, aad, pt)) {
		t.Errorf("ciphertext differs from the reference construction")
	}
	got, err := decrypt(t, key, aad, ct)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("decrypt: %v", err)
	}
}

// FuzzReader checks that no input panics the reader and that it releases
// only authentic plaintext: on success the input is exactly the encryption of
// the output, and on error what was released is whole authentic chunks.
//
// Run with a short minimisation time; minimising 64 KiB inputs otherwise
// stalls the fuzzer:
//
//	go test -run '^$' -fuzz '^FuzzReader$' -fuzztime 30s -fuzzminimizetime 1s
func FuzzReader(f *testing.F) {
	key := testKey()
	for _, n := range []int{0, 1, 100, ChunkSize - 1, ChunkSize, ChunkSize + 1} {
		f.Add(encrypt(f, key, testAAD, plaintext(n)))
	}
	f.Add([]byte{})
	f.Add(make([]byte, Overhead))
	f.Add(make([]byte, encChunkSize+1))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewReader(bytes.NewReader(data), key, testAAD)
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(r)
		if err == nil {
			// Authentic streams are canonical: re-encrypting gives the input.
			if !bytes.Equal(refEncrypt(t, key, testAAD, out), data) {
				t.Fatalf("accepted a %d-byte input that is not the encryption of its output", len(data))
			}
			return
		}
		if !errors.Is(err, ErrTampered) && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrTrailingData) {
			t.Fatalf("unexpected error %v", err)
		}
		// Whatever was released is whole authentic non-last chunks.
		if len(out)%ChunkSize != 0 {
			t.Fatalf("released %d bytes before %v", len(out), err)
		}
		for i := 0; i < len(out)/ChunkSize; i++ {
			want := refSeal(t, key, testAAD, uint64(i), false, out[i*ChunkSize:(i+1)*ChunkSize])
			if !bytes.Equal(data[i*encChunkSize:(i+1)*encChunkSize], want) {
				t.Fatalf("released chunk %d is not authentic", i)
			}
		}
	})
}

// FuzzRoundTrip checks round trips and EncryptedSize for arbitrary lengths
// and write sizes.
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint32(0), uint16(1))
	f.Add(uint32(ChunkSize), uint16(4097))
	f.Add(uint32(2*ChunkSize+17), uint16(7))
	f.Fuzz(func(t *testing.T, n uint32, piece uint16) {
		n %= 3*ChunkSize + 1
		pt := plaintext(int(n))
		ct := encrypt(t, testKey(), testAAD, pt, int(piece)+1)
		if int64(len(ct)) != EncryptedSize(int64(n)) {
			t.Fatalf("EncryptedSize(%d) = %d, got %d bytes", n, EncryptedSize(int64(n)), len(ct))
		}
		got, err := decrypt(t, testKey(), testAAD, ct)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("round trip of %d bytes: %v", n, err)
		}
	})
}

var benchSizes = []struct {
	name string
	n    int
}{{"1MiB", 1 << 20}, {"64MiB", 64 << 20}}

func BenchmarkWriter(b *testing.B) {
	key := testKey()
	for _, bs := range benchSizes {
		b.Run(bs.name, func(b *testing.B) {
			pt := plaintext(bs.n)
			b.SetBytes(int64(bs.n))
			b.ReportAllocs()
			for b.Loop() {
				w, err := NewWriter(io.Discard, key, testAAD)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := w.Write(pt); err != nil {
					b.Fatal(err)
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkReader(b *testing.B) {
	key := testKey()
	for _, bs := range benchSizes {
		b.Run(bs.name, func(b *testing.B) {
			ct := encrypt(b, key, testAAD, plaintext(bs.n))
			buf := make([]byte, 32<<10)
			b.SetBytes(int64(bs.n))
			b.ReportAllocs()
			for b.Loop() {
				r, err := NewReader(bytes.NewReader(ct), key, testAAD)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{r}, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestConstantMemory checks that allocations do not grow with the stream
// length: the writer and reader allocate their buffers once.
func TestConstantMemory(t *testing.T) {
	key := testKey()
	allocs := func(n int) (w, r float64) {
		pt := plaintext(n)
		ct := encrypt(t, key, testAAD, pt)
		buf := make([]byte, 32<<10)
		src := bytes.NewReader(ct)
		w = testing.AllocsPerRun(5, func() {
			wc, _ := NewWriter(io.Discard, key, testAAD)
			wc.Write(pt)
			wc.Close()
		})
		r = testing.AllocsPerRun(5, func() {
			src.Reset(ct)
			rd, _ := NewReader(src, key, testAAD)
			io.CopyBuffer(io.Discard, struct{ io.Reader }{rd}, buf)
		})
		return w, r
	}
	// 30 more chunks: an allocation per chunk would add 30. A little slack
	// absorbs the runtime's own (the race detector's, GC's) noise.
	w1, r1 := allocs(2 * ChunkSize)
	w2, r2 := allocs(32 * ChunkSize)
	if w2 > w1+2 || r2 > r1+2 {
		t.Errorf("allocations grow with length: writer %v -> %v, reader %v -> %v", w1, w2, r1, r2)
	}
}
