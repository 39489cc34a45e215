package wrap

import (
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/minio/sio"
)

// Key derivation labels (docs/FORMATS.md 8.2).
const (
	labelMAC  = "hsmbackup-wrap/1 header"
	labelBody = "hsmbackup-wrap/1 body"
	nonceSize = 12 // DARE 2.0's random value
)

// PackageSize is the plaintext size of a full DARE 2.0 package: the body is
// sealed in packages of this many bytes, the last one 1 to PackageSize.
const PackageSize = 1 << 16

// deriveMAC returns the header MAC key, HKDF-SHA256(DEK, "", labelMAC || C).
func deriveMAC(dek, core []byte) []byte {
	k, err := hkdf.Key(sha256.New, dek, nil, labelMAC+string(core), 32)
	if err != nil {
		panic("wrap: hkdf: " + err.Error())
	}
	return k
}

// deriveBody returns the body key and DARE random value,
// HKDF-SHA256(DEK, "", labelBody || C, 44) split 32 + 12.
func deriveBody(dek, core []byte) (key []byte, nonce *[nonceSize]byte) {
	k, err := hkdf.Key(sha256.New, dek, nil, labelBody+string(core), 32+nonceSize)
	if err != nil {
		panic("wrap: hkdf: " + err.Error())
	}
	nonce = new([nonceSize]byte)
	copy(nonce[:], k[32:])
	return k[:32:32], nonce
}

func headerMAC(dek, core, authenticated []byte) []byte {
	key := deriveMAC(dek, core)
	defer clear(key)
	m := hmac.New(sha256.New, key)
	m.Write(authenticated)
	return m.Sum(nil)
}

// sioConfig is the only DARE configuration used: version 2.0, AES-256-GCM.
func sioConfig(key []byte, nonce *[nonceSize]byte) sio.Config {
	return sio.Config{
		MinVersion:   sio.Version20,
		MaxVersion:   sio.Version20,
		CipherSuites: []byte{sio.AES_256_GCM},
		Key:          key,
		Nonce:        nonce,
	}
}

// sealHeader fills in h.MAC for dek and returns the header's bytes, the body
// key and the DARE random value.
func sealHeader(h *Header, dek []byte) (raw, bodyKey []byte, nonce *[nonceSize]byte, err error) {
	auth, err := h.authenticated()
	if err != nil {
		return nil, nil, nil, err
	}
	core := auth[:coreSize]
	copy(h.MAC[:], headerMAC(dek, core, auth))
	bodyKey, nonce = deriveBody(dek, core)
	return append(auth, h.MAC[:]...), bodyKey, nonce, nil
}

// wrapDEK asks every recipient for its stanza.
func wrapDEK(ctx context.Context, dek []byte, recipients []Recipient) ([]Stanza, error) {
	if len(recipients) == 0 {
		return nil, errors.New("no recipients")
	}
	if len(recipients) > MaxStanzas {
		return nil, fmt.Errorf("%d recipients, at most %d", len(recipients), MaxStanzas)
	}
	stanzas := make([]Stanza, len(recipients))
	for i, r := range recipients {
		s, err := r.Wrap(ctx, dek)
		if err != nil {
			return nil, fmt.Errorf("wrap data key for recipient %d: %w", i, err)
		}
		if err := checkStanza(s); err != nil {
			return nil, fmt.Errorf("recipient %d gave a bad stanza: %w", i, err)
		}
		stanzas[i] = s
	}
	return stanzas, nil
}

// unwrapDEK finds the data key with the first identity that can unwrap it,
// and checks the header MAC under it. An identity without a key for the
// envelope, or failing for an operational reason (an HSM out of reach), is
// passed over for the next; a stanza that does not unwrap stops the search,
// as the MAC would then fail whatever the identity.
func unwrapDEK(ctx context.Context, h *Header, raw []byte, identities []Identity) ([]byte, error) {
	if len(identities) == 0 {
		return nil, errors.New("no identities")
	}
	var unknown []string
	var failed error
	for _, id := range identities {
		if id == nil {
			return nil, errors.New("nil identity")
		}
		dek, err := id.Unwrap(ctx, h.Stanzas)
		if errors.Is(err, ErrTampered) {
			return nil, fmt.Errorf("header: %w", err)
		}
		if errors.Is(err, ErrUnknownKey) {
			// Only what the identity adds: the sentinel is said once,
			// below.
			unknown = append(unknown, strings.TrimPrefix(err.Error(), ErrUnknownKey.Error()+": "))
			continue
		}
		if err != nil {
			if failed == nil {
				failed = err
			}
			continue
		}
		if len(dek) != dekSize {
			clear(dek)
			return nil, fmt.Errorf("header: %w: data key of %d bytes", ErrTampered, len(dek))
		}
		auth := raw[:len(raw)-macSize]
		if !hmac.Equal(headerMAC(dek, auth[:coreSize], auth), h.MAC[:]) {
			clear(dek)
			return nil, fmt.Errorf("header: %w: MAC mismatch", ErrTampered)
		}
		return dek, nil
	}
	if failed != nil {
		return nil, fmt.Errorf("unwrap data key: %w", failed)
	}
	return nil, fmt.Errorf("header: %w: it is wrapped to %s; tried: %s",
		ErrUnknownKey, strings.Join(h.Recipients(), ", "), strings.Join(unknown, "; "))
}

// Encrypt returns a WriteCloser that writes to dst an envelope of what is
// written to it, with the data key wrapped to every recipient (1 to
// MaxStanzas). The recipients are called before Encrypt returns; the header
// is written on the first Write or on Close. Close must be called, and must
// succeed, for the envelope to be complete; it does not close dst. Memory
// stays flat whatever the size: the body is sealed 64 KiB at a time.
func Encrypt(ctx context.Context, dst io.Writer, recipients ...Recipient) (io.WriteCloser, error) {
	dek := make([]byte, dekSize)
	rand.Read(dek)
	var id [ObjectIDSize]byte
	rand.Read(id[:])
	return encrypt(ctx, dst, dek, id, recipients)
}

// encrypt is Encrypt with the data key and object id given; it takes
// ownership of dek. The test vectors use it.
func encrypt(ctx context.Context, dst io.Writer, dek []byte, id [ObjectIDSize]byte, recipients []Recipient) (*writer, error) {
	stanzas, err := wrapDEK(ctx, dek, recipients)
	if err != nil {
		clear(dek)
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	h := &Header{ObjectID: id, Stanzas: stanzas}
	if _, err := h.authenticated(); err != nil {
		clear(dek)
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	return &writer{dst: dst, h: h, dek: dek}, nil
}

type writer struct {
	dst    io.Writer
	h      *Header
	dek    []byte         // until the header is written
	body   io.WriteCloser // the DARE writer, once the first byte came
	err    error          // sticky
	closed bool
}

var errClosed = errors.New("wrap: write to a closed envelope writer")

// start writes the header, its flags now known.
func (w *writer) start(empty bool) error {
	w.h.EmptyBody = empty
	raw, bodyKey, nonce, err := sealHeader(w.h, w.dek)
	clear(w.dek)
	w.dek = nil
	if err != nil {
		return fmt.Errorf("encrypt: %w", err)
	}
	defer clear(bodyKey)
	if _, err := w.dst.Write(raw); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	if empty {
		return nil
	}
	// sio's writer closes its destination if it can: hide dst's Close.
	body, err := sio.EncryptWriter(struct{ io.Writer }{w.dst}, sioConfig(bodyKey, nonce))
	if err != nil {
		return fmt.Errorf("encrypt: %w", err)
	}
	w.body = body
	return nil
}

func (w *writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errClosed
	}
	if w.err != nil {
		return 0, w.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if w.body == nil {
		if w.err = w.start(false); w.err != nil {
			return 0, w.err
		}
	}
	n, err := w.body.Write(p)
	if err != nil {
		w.err = fmt.Errorf("write body: %w", err)
	}
	return n, w.err
}

// copyBufferSize is the buffer of ReadFrom and WriteTo: sio seals and opens
// packages in place when handed more than one package at a time, and copies
// them into its own buffer otherwise.
const copyBufferSize = 16 * PackageSize

// ReadFrom encrypts what it reads from src until io.EOF, reading 1 MiB at a
// time so that most packages are sealed straight from the read buffer;
// io.Copy uses it. It does not Close. Only io.EOF ends the copy: any other
// error of src, io.ErrUnexpectedEOF included (what a cut HTTP/2 stream
// gives), is returned and fails the writer, so that Close reports it
// instead of completing an envelope of a prefix.
func (w *writer) ReadFrom(src io.Reader) (int64, error) {
	buf := make([]byte, copyBufferSize)
	var total int64
	for {
		n, err := fill(src, buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			if w.err == nil && !w.closed {
				w.err = fmt.Errorf("read plaintext: %w", err)
			}
			return total, err
		}
	}
}

// fill reads from src until buf is full or src fails; unlike io.ReadFull it
// returns src's error as it is, io.EOF only when src said io.EOF.
func fill(src io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := src.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Close writes the rest of the body (or, for an empty plaintext, the
// header). It does not close dst.
func (w *writer) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.err != nil {
		clear(w.dek)
		return w.err
	}
	if w.body == nil {
		w.err = w.start(true)
		return w.err
	}
	if err := w.body.Close(); err != nil {
		w.err = fmt.Errorf("write body: %w", err)
	}
	return w.err
}

// Decrypt reads an envelope's header from src, unwraps its data key with
// the first identity that holds a key for it, and checks the header MAC; all
// header errors are returned here. It returns a Reader of the plaintext,
// which authenticates the body 64 KiB at a time as it reads: a Read error
// wrapping ErrTampered or ErrTruncated means that what was read so far must
// be thrown away. The Reader returns io.EOF only after the final package,
// and only if nothing follows it. Errors reading src are returned wrapped.
func Decrypt(ctx context.Context, src io.Reader, identities ...Identity) (io.Reader, error) {
	h, raw, err := readHeader(src)
	if err != nil {
		return nil, err
	}
	dek, err := unwrapDEK(ctx, h, raw, identities)
	if err != nil {
		return nil, err
	}
	key, nonce := deriveBody(dek, raw[:coreSize])
	clear(dek)
	defer clear(key)
	return newBodyReader(src, h.EmptyBody, key, nonce)
}

func newBodyReader(src io.Reader, empty bool, key []byte, nonce *[nonceSize]byte) (io.Reader, error) {
	if empty {
		return &bodyReader{src: src}, nil
	}
	r, err := sio.DecryptReader(src, sioConfig(key, nonce))
	if err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	return &bodyReader{src: src, dare: r}, nil
}

// bodyReader maps the DARE reader's errors to this package's and makes them
// sticky. For an empty body (dare == nil) it checks that src is empty.
type bodyReader struct {
	src  io.Reader
	dare io.Reader
	err  error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.dare == nil {
		b.err = checkEnd(b.src)
		if b.err == nil {
			b.err = io.EOF
		}
		return 0, b.err
	}
	n, err := b.dare.Read(p)
	if err == io.EOF {
		b.err = io.EOF
	} else if err != nil {
		b.err = bodyError(err)
	}
	return n, b.err
}

// WriteTo writes the plaintext to dst, 1 MiB at a time so that most
// packages are opened straight into the buffer; io.Copy uses it.
func (b *bodyReader) WriteTo(dst io.Writer) (int64, error) {
	buf := make([]byte, copyBufferSize)
	var total int64
	for {
		n, err := b.Read(buf)
		if n > 0 {
			m, werr := dst.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// checkEnd checks that src has nothing left: the body of an envelope whose
// header says it is empty.
func checkEnd(src io.Reader) error {
	var one [1]byte
	for {
		n, err := src.Read(one[:])
		if n > 0 {
			return fmt.Errorf("body: %w: data after an empty body", ErrTampered)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read body: %w", err)
		}
	}
}

// sioUnexpectedEOF is sio's message for a stream that ends, at a package
// boundary, before its final package (pinned by TestTruncatedBody).
const sioUnexpectedEOF = "sio: unexpected EOF"

// bodyError maps an error of sio's reader: its own errors mean the body is
// not authentic; others come from reading the body.
func bodyError(err error) error {
	var se sio.Error
	if !errors.As(err, &se) {
		return fmt.Errorf("read body: %w", err)
	}
	if se.Error() == sioUnexpectedEOF {
		return fmt.Errorf("body: %w: it ends before its final package", ErrTruncated)
	}
	return fmt.Errorf("body: %w (%v)", ErrTampered, se)
}

// Rewrap copies the envelope read from src to dst with its data key
// unwrapped by the first of identities that can (as Decrypt does) and
// wrapped anew to recipients: this is master-key
// rotation. Only the header changes (its stanzas and MAC); the object id,
// flags and body suite, and so the body keys, stay, and the body is copied
// byte for byte, never re-encrypted. Rewrap authenticates the body as it
// copies it: on any error, what was written to dst must be discarded.
func Rewrap(ctx context.Context, src io.Reader, dst io.Writer, identities []Identity, recipients ...Recipient) error {
	h, raw, err := readHeader(src)
	if err != nil {
		return fmt.Errorf("rewrap: %w", err)
	}
	dek, err := unwrapDEK(ctx, h, raw, identities)
	if err != nil {
		return fmt.Errorf("rewrap: %w", err)
	}
	defer clear(dek)
	stanzas, err := wrapDEK(ctx, dek, recipients)
	if err != nil {
		return fmt.Errorf("rewrap: %w", err)
	}
	nh := &Header{ObjectID: h.ObjectID, EmptyBody: h.EmptyBody, Stanzas: stanzas}
	newRaw, key, nonce, err := sealHeader(nh, dek)
	if err != nil {
		return fmt.Errorf("rewrap: %w", err)
	}
	defer clear(key)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("rewrap: %w", err)
	}
	if _, err := dst.Write(newRaw); err != nil {
		return fmt.Errorf("rewrap: write header: %w", err)
	}
	tee := &teeReader{ctx: ctx, r: src, w: dst}
	body, err := newBodyReader(tee, h.EmptyBody, key, nonce)
	if err != nil {
		return fmt.Errorf("rewrap: %w", err)
	}
	buf := make([]byte, PackageSize)
	for {
		_, err := body.Read(buf)
		if err == io.EOF {
			return nil
		}
		if tee.werr != nil {
			return fmt.Errorf("rewrap: write body: %w", tee.werr)
		}
		if err != nil {
			return fmt.Errorf("rewrap: %w", err)
		}
	}
}

// teeReader writes to w what it reads from r, and stops when ctx is done.
type teeReader struct {
	ctx  context.Context
	r    io.Reader
	w    io.Writer
	werr error
}

func (t *teeReader) Read(p []byte) (int, error) {
	if err := t.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := t.r.Read(p)
	if n > 0 {
		if _, werr := t.w.Write(p[:n]); werr != nil {
			t.werr = werr
			return n, werr
		}
	}
	return n, err
}
