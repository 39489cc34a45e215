// Package stream encrypts and decrypts the body of a backup image as a
// sequence of independently authenticated chunks.
//
// The construction is STREAM (Hoang, Reyhanitabar, Rogaway and Vizár,
// "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance",
// CRYPTO 2015), instantiated as in age's payload encryption
// (filippo.io/age, internal/stream; C2SP age.md, "Payload") but with
// AES-256-GCM in place of ChaCha20-Poly1305 and with caller-supplied
// additional data bound to every chunk.
//
// # Format
//
// Inputs are a 32-byte key K, additional data A (the image header) and a
// plaintext P.
//
//   - P is split into chunks P_0 … P_n of ChunkSize (65536) bytes each,
//     except the last, P_n, which is 1 to ChunkSize bytes long. P_n is
//     0 bytes long if and only if P is empty, in which case n = 0.
//   - Chunk i is sealed with AES-256-GCM under K with a 12-byte nonce
//     N_i = I2OSP(i, 11) || F, where I2OSP(i, 11) is i as an 11-byte
//     big-endian integer and F is 0x01 if i = n and 0x00 otherwise:
//     C_i = AES-256-GCM-Seal(K, N_i, P_i, A), which is len(P_i)+16 bytes.
//   - The ciphertext is C_0 || C_1 || … || C_n, with no framing, lengths or
//     padding. Its length is given by EncryptedSize.
//
// The 88-bit counter never wraps: a stream of more than 2^88 chunks is an
// error for both the writer and the reader.
//
// Because the nonce of every chunk commits to its position and to whether it
// is the last one, a reader that checks every tag in order detects chunks that
// are modified, reordered, duplicated, dropped, or cut off at the end, and
// data appended after the last chunk. Because A is authenticated with every
// chunk, a body cannot be moved under a different header.
//
// The nonces are a deterministic function of the chunk index, so a key MUST
// NOT be used for two streams with the same additional data: that would
// reuse GCM nonces (losing confidentiality and integrity) and would let
// chunks at the same index be swapped between the two streams. As in age,
// callers should derive a fresh key for each stream (for example from a
// random per-image nonce) or make the additional data unique per stream.
//
// # Decoding
//
// A reader processes the ciphertext one chunk at a time, keeping one byte of
// lookahead to learn whether another chunk follows:
//
//  1. Read up to ChunkSize+Overhead+1 bytes (the first of which may be the
//     lookahead byte kept from the previous chunk).
//  2. If ChunkSize+Overhead+1 bytes arrived, the first ChunkSize+Overhead are
//     chunk i and it MUST open with F = 0x00; the extra byte is kept as
//     lookahead. If it fails but opens with F = 0x01, the error is
//     ErrTrailingData; otherwise ErrTampered.
//  3. Otherwise the source ended and the bytes read are chunk i, which MUST
//     open with F = 0x01. No bytes at all is ErrTruncated; fewer than Overhead
//     bytes is ErrTampered. If a full-length chunk fails as last but opens
//     with F = 0x00, the stream was cut at a chunk boundary: ErrTruncated.
//     Any other failure is ErrTampered.
//  4. A last chunk with an empty plaintext MUST be chunk 0; anywhere else it is
//     ErrTampered (no conforming writer produces it).
//
// Plaintext of a chunk is released only after that chunk's tag has been
// verified, and never for a chunk that caused an error. Note that plaintext
// of earlier chunks has already been released when an error is found in a
// later one: the stream as a whole is authentic only once Read returns
// io.EOF, and callers must treat all output as untrusted until then.
//
// Memory use is constant: a Writer holds one chunk and a Reader holds one
// ciphertext chunk plus one plaintext chunk, whatever the stream length.
package stream

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
)

const (
	// ChunkSize is the plaintext size of every chunk but the last.
	ChunkSize = 64 * 1024
	// Overhead is the number of bytes a sealed chunk adds to its plaintext
	// (the GCM tag).
	Overhead = 16
	// KeySize is the required key length (AES-256).
	KeySize = 32

	encChunkSize  = ChunkSize + Overhead
	nonceSize     = 12
	lastChunkFlag = 0x01
)

// Errors returned by the Reader, wrapped with the index of the chunk at which
// the problem was found, e.g. "chunk 3: stream: chunk authentication failed".
// Test with errors.Is.
var (
	// ErrTampered means a chunk did not authenticate: it was modified,
	// reordered, duplicated, cut in the middle, or the key or additional
	// data is wrong.
	ErrTampered = errors.New("stream: chunk authentication failed")
	// ErrTruncated means the ciphertext ended where a chunk was expected:
	// the input is empty, or the final chunk is an authentic non-last chunk.
	ErrTruncated = errors.New("stream: truncated")
	// ErrTrailingData means an authentic last chunk was followed by more
	// data.
	ErrTrailingData = errors.New("stream: trailing data after last chunk")
)

var (
	errCounterOverflow = errors.New("stream: chunk counter overflow")
	errWriteAfterClose = errors.New("stream: write after close")
)

// EncryptedSize returns the ciphertext length for n bytes of plaintext.
// It panics if n is negative or the result does not fit in an int64.
func EncryptedSize(n int64) int64 {
	if n < 0 {
		panic("stream: negative plaintext size")
	}
	chunks := n / ChunkSize
	if n%ChunkSize != 0 || n == 0 {
		chunks++
	}
	// n + chunks*Overhead overflows only for n within ~2^51 of MaxInt64.
	if n > (1<<63-1)-chunks*Overhead {
		panic("stream: plaintext size too large")
	}
	return n + chunks*Overhead
}

// counter is the 88-bit chunk counter that forms the first 11 bytes of the
// nonce. It never wraps: once it has passed 2^88-1 it reports overflowed and
// no further chunk may be sealed or opened.
type counter struct {
	hi uint32 // top 24 bits; 1<<24 means overflowed
	lo uint64 // low 64 bits
}

const counterHiMax = 1<<24 - 1

func (c *counter) overflowed() bool { return c.hi > counterHiMax }

func (c *counter) isZero() bool { return c.hi == 0 && c.lo == 0 }

func (c *counter) inc() {
	if c.overflowed() {
		panic("stream: internal error: counter incremented after overflow")
	}
	c.lo++
	if c.lo == 0 {
		c.hi++
	}
}

func (c *counter) nonce(last bool) [nonceSize]byte {
	if c.overflowed() {
		panic("stream: internal error: nonce from overflowed counter")
	}
	var n [nonceSize]byte
	n[0], n[1], n[2] = byte(c.hi>>16), byte(c.hi>>8), byte(c.hi)
	binary.BigEndian.PutUint64(n[3:11], c.lo)
	if last {
		n[11] = lastChunkFlag
	}
	return n
}

// String returns the chunk index for error messages, in decimal below 2^64
// and in hexadecimal above.
func (c counter) String() string {
	if c.hi == 0 {
		return strconv.FormatUint(c.lo, 10)
	}
	return fmt.Sprintf("%#x%016x", c.hi, c.lo)
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("stream: key is %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("stream: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("stream: %w", err)
	}
	if aead.NonceSize() != nonceSize || aead.Overhead() != Overhead {
		panic("stream: internal error: unexpected GCM parameters")
	}
	return aead, nil
}

// writer implements the io.WriteCloser returned by NewWriter.
type writer struct {
	aead cipher.AEAD
	dst  io.Writer
	aad  []byte
	ctr  counter

	// nonce is scratch space for the current chunk's nonce, kept here so it
	// does not escape to the heap on every chunk.
	nonce [nonceSize]byte

	// buf holds up to ChunkSize bytes of pending plaintext in buf[:n]; it has
	// room for the tag so chunks are sealed in place.
	buf []byte
	n   int

	err      error // sticky error from sealing or writing a chunk
	closed   bool
	closeErr error // result of the first Close
}

// NewWriter returns a WriteCloser that encrypts everything written to it
// under key (KeySize bytes) with aad as additional data and writes the
// ciphertext to dst.
//
// Close must be called to seal and write the last chunk; it does not close
// dst. Until Close returns nil the ciphertext is incomplete and will not
// decrypt. Calling Close again has no effect and returns the result of the
// first call. Write after Close returns an error. After any error writing to
// dst, every later Write and Close returns that error and the ciphertext is
// unusable. A full chunk is held back until more data is written or Close is
// called, since only then is it known whether it is the last chunk.
//
// aad is copied. The writer is not safe for concurrent use.
func NewWriter(dst io.Writer, key, aad []byte) (io.WriteCloser, error) {
	if dst == nil {
		return nil, errors.New("stream: nil destination")
	}
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	return &writer{
		aead: aead,
		dst:  dst,
		aad:  append([]byte(nil), aad...),
		buf:  make([]byte, encChunkSize),
	}, nil
}

func (w *writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errWriteAfterClose
	}
	if w.err != nil {
		return 0, w.err
	}
	total := len(p)
	for len(p) > 0 {
		// Flush a full chunk only once more data arrives: it is then known
		// not to be the last one.
		if w.n == ChunkSize {
			if err := w.flush(false); err != nil {
				w.err = err
				return 0, err
			}
		}
		k := copy(w.buf[w.n:ChunkSize], p)
		w.n += k
		p = p[k:]
	}
	return total, nil
}

// Close seals and writes the last chunk. See NewWriter.
func (w *writer) Close() error {
	if w.closed {
		return w.closeErr
	}
	w.closed = true
	if w.err != nil {
		w.closeErr = w.err
	} else {
		w.closeErr = w.flush(true)
	}
	clear(w.buf)
	w.buf = nil
	return w.closeErr
}

func (w *writer) flush(last bool) error {
	if !last && w.n != ChunkSize {
		panic("stream: internal error: flushing a partial non-last chunk")
	}
	if w.ctr.overflowed() {
		return fmt.Errorf("write chunk %s: %w", w.ctr, errCounterOverflow)
	}
	w.nonce = w.ctr.nonce(last)
	ct := w.aead.Seal(w.buf[:0], w.nonce[:], w.buf[:w.n], w.aad)
	w.n = 0
	idx := w.ctr
	w.ctr.inc()
	n, err := w.dst.Write(ct)
	if err == nil && n != len(ct) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("write chunk %s: %w", idx, err)
	}
	return nil
}

// reader implements the io.Reader returned by NewReader.
type reader struct {
	aead cipher.AEAD
	src  io.Reader
	aad  []byte
	ctr  counter

	nonce [nonceSize]byte // scratch, as in writer

	// in holds one sealed chunk plus one byte of lookahead. If ahead is
	// true, in[0] is the first byte of the next chunk, already read.
	in    []byte
	ahead bool

	// out holds the plaintext of the current authenticated chunk; unread is
	// the part of it not yet returned.
	out    []byte
	unread []byte

	err error // sticky: io.EOF after the last chunk, or the first error
}

// NewReader returns a Reader that decrypts and authenticates the ciphertext
// read from src, produced by a writer from NewWriter with the same key and
// aad.
//
// Read returns plaintext only from chunks whose tag has been verified, and
// returns io.EOF only after the authenticated last chunk has been fully read
// and the source has ended. Errors wrap ErrTampered, ErrTruncated or
// ErrTrailingData with the chunk index, or wrap an error from src. Once Read
// has returned an error, every later call returns the same error.
//
// Plaintext returned before an error is authentic but incomplete: the
// stream is authentic only when Read returns io.EOF.
//
// aad is copied. The reader is not safe for concurrent use.
func NewReader(src io.Reader, key, aad []byte) (io.Reader, error) {
	if src == nil {
		return nil, errors.New("stream: nil source")
	}
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	return &reader{
		aead: aead,
		src:  src,
		aad:  append([]byte(nil), aad...),
		in:   make([]byte, encChunkSize+1),
		out:  make([]byte, 0, ChunkSize),
	}, nil
}

func (r *reader) Read(p []byte) (int, error) {
	if len(r.unread) > 0 {
		n := copy(p, r.unread)
		r.unread = r.unread[n:]
		return n, nil
	}
	if r.err != nil {
		return 0, r.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	last, err := r.readChunk()
	if err != nil {
		r.err = err
		return 0, err
	}
	if last {
		r.err = io.EOF
	}
	if len(r.unread) == 0 {
		// Only an empty stream has an empty chunk, and it is the last.
		return 0, r.err
	}
	n := copy(p, r.unread)
	r.unread = r.unread[n:]
	return n, nil
}

// readChunk reads, authenticates and decrypts the next chunk into r.unread.
// last reports whether it was the last chunk. It must not be called again
// after it returns last or an error.
func (r *reader) readChunk() (last bool, err error) {
	if len(r.unread) != 0 {
		panic("stream: internal error: readChunk with unread plaintext")
	}
	if r.ctr.overflowed() {
		return false, fmt.Errorf("chunk %s: %w", r.ctr, errCounterOverflow)
	}

	have := 0
	if r.ahead {
		have = 1
	}
	n, err := readFull(r.src, r.in[have:])
	n += have
	switch {
	case err == nil:
		// A whole chunk and the first byte of another: not the last chunk.
		last = false
	case err == io.EOF:
		last = true
	default:
		return false, fmt.Errorf("read chunk %s: %w", r.ctr, err)
	}

	var plain []byte
	if last {
		plain, err = r.openLast(r.in[:n])
	} else {
		plain, err = r.openNonLast(r.in[:encChunkSize])
	}
	if err != nil {
		return false, fmt.Errorf("chunk %s: %w", r.ctr, err)
	}

	if !last {
		r.in[0] = r.in[encChunkSize]
		r.ahead = true
	}
	r.ctr.inc()
	r.unread = plain
	return last, nil
}

// openLast opens a chunk after which the source ended.
func (r *reader) openLast(chunk []byte) ([]byte, error) {
	switch {
	case len(chunk) == 0:
		return nil, ErrTruncated
	case len(chunk) < Overhead:
		return nil, ErrTampered
	}
	plain, err := r.open(chunk, true)
	if err != nil {
		if len(chunk) == encChunkSize {
			if _, err := r.open(chunk, false); err == nil {
				// An authentic non-last chunk with nothing after it.
				clear(r.out[:ChunkSize])
				return nil, ErrTruncated
			}
		}
		return nil, ErrTampered
	}
	if len(plain) == 0 && !r.ctr.isZero() {
		// Only an empty stream ends with an empty chunk.
		return nil, ErrTampered
	}
	return plain, nil
}

// openNonLast opens a full-length chunk that is followed by more data.
func (r *reader) openNonLast(chunk []byte) ([]byte, error) {
	plain, err := r.open(chunk, false)
	if err != nil {
		if _, err := r.open(chunk, true); err == nil {
			// An authentic last chunk with more data after it.
			clear(r.out[:ChunkSize])
			return nil, ErrTrailingData
		}
		return nil, ErrTampered
	}
	return plain, nil
}

// open decrypts chunk into r.out. On failure r.out holds no plaintext (GCM
// clears its output; we clear it again so as not to depend on that).
func (r *reader) open(chunk []byte, last bool) ([]byte, error) {
	r.nonce = r.ctr.nonce(last)
	plain, err := r.aead.Open(r.out[:0], r.nonce[:], chunk, r.aad)
	if err != nil {
		clear(r.out[:ChunkSize])
		return nil, err
	}
	return plain, nil
}

// readFull reads into buf until it is full, src returns io.EOF, or src fails.
// It returns a nil error if buf was filled, io.EOF if src ended first (n may
// be anything from 0 to len(buf)-1), or the error from src. Unlike
// io.ReadFull it does not turn a short read into io.ErrUnexpectedEOF, so an
// io.ErrUnexpectedEOF from src is reported as a read failure, not an end.
func readFull(src io.Reader, buf []byte) (n int, err error) {
	for n < len(buf) {
		var k int
		k, err = src.Read(buf[n:])
		if k < 0 || k > len(buf)-n {
			return n, fmt.Errorf("source returned invalid count %d", k)
		}
		n += k
		if err != nil {
			if err == io.EOF && n == len(buf) {
				// Filled exactly as the source ended: report a full buffer; the
				// next read sees the end.
				return n, nil
			}
			return n, err
		}
	}
	return n, nil
}
