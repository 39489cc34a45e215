package wrap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/minio/sio"
)

// sweep is the boundary sweep of STYLE.md item 13 around DARE's 64 KiB
// package size.
var sweep = []int{0, 1, PackageSize - 1, PackageSize, PackageSize + 1, 2*PackageSize + 13}

// TestRoundTripSweep encrypts every sweep length to a keyring and checks
// the envelope's size, that iotest.TestReader passes on the plaintext
// reader, and that the header says "empty" exactly for length 0.
func TestRoundTripSweep(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	for _, n := range sweep {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			p := pattern(n)
			env := seal(t, p, k)
			hl := headerLen(t, env)
			want, err := sio.EncryptedSize(uint64(n))
			if err != nil {
				t.Fatal(err)
			}
			if got := uint64(len(env) - hl); got != want {
				t.Errorf("body is %d bytes, want %d", got, want)
			}
			h, err := ReadHeader(bytes.NewReader(env))
			if err != nil {
				t.Fatal(err)
			}
			if h.EmptyBody != (n == 0) {
				t.Errorf("EmptyBody = %v for %d bytes", h.EmptyBody, n)
			}
			r, err := Decrypt(context.Background(), bytes.NewReader(env), k)
			if err != nil {
				t.Fatal(err)
			}
			if err := iotest.TestReader(r, p); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestEveryRecipient round-trips through each recipient type alone and all
// three together, each identity opening the shared envelope.
func TestEveryRecipient(t *testing.T) {
	k := testKeyring(t, "prod", 2)
	id := testIdentity(t)
	hsm := mustHSMRecipient(t, newFakeHSM(t, "cluster-1/key-7"))
	p := pattern(PackageSize + 1)
	for _, c := range []struct {
		name string
		r    Recipient
		id   Identity
	}{{"keyring", k, k}, {"hpke", id.Recipient(), id}, {"hsm", hsm, hsm}} {
		t.Run(c.name, func(t *testing.T) {
			got, herr, berr := open(seal(t, p, c.r), c.id)
			if herr != nil || berr != nil || !bytes.Equal(got, p) {
				t.Fatalf("open: %v, %v; equal %v", herr, berr, bytes.Equal(got, p))
			}
		})
	}
	env := seal(t, p, k, id.Recipient(), hsm)
	for _, ident := range []Identity{k, id, hsm} {
		if got, herr, berr := open(env, ident); herr != nil || berr != nil || !bytes.Equal(got, p) {
			t.Errorf("%v: open: %v, %v", ident, herr, berr)
		}
	}
	h, err := ReadHeader(bytes.NewReader(env))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"keyring prod 2", "mlkem768x25519 " + id.Recipient().Fingerprint(), "hsm cluster-1/key-7"}
	if got := h.Recipients(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("Recipients = %q, want %q", got, want)
	}
}

// TestUnknownKey: an envelope opened with identities that hold none of its
// keys fails with ErrUnknownKey naming the keys it is wrapped to; later
// identities are tried after an unknown one.
func TestUnknownKey(t *testing.T) {
	k := testKeyring(t, "prod", 3)
	env := seal(t, []byte("x"), k)
	for name, ids := range map[string][]Identity{
		"keyring without v3": {subset(t, k, 1, 2)},
		"other keyring id":   {testKeyring(t, "other", 3)},
		"hpke":               {testIdentity(t)},
		"hsm":                {mustHSMRecipient(t, newFakeHSM(t, "h"))},
	} {
		_, err, _ := open(env, ids...)
		if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), "keyring prod 3") {
			t.Errorf("%s: %v; want ErrUnknownKey naming keyring prod 3", name, err)
		}
	}
	_, err, _ := open(env, subset(t, k, 1, 2))
	if !strings.Contains(err.Error(), "keyring holds prod v1-v2") {
		t.Errorf("error %q does not say what the keyring holds", err)
	}
	if got, herr, berr := open(env, testIdentity(t), subset(t, k, 1), k); herr != nil || berr != nil || string(got) != "x" {
		t.Errorf("third identity: %q, %v, %v", got, herr, berr)
	}
	if _, err, _ := open(env); err == nil {
		t.Error("Decrypt without identities succeeded")
	}
}

// TestChunkingDoesNotMatter: writing the plaintext in pieces of any size
// gives the same envelope as one Write (with the data key fixed).
func TestChunkingDoesNotMatter(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	dek := randomBytes(t, dekSize)
	var id [ObjectIDSize]byte
	p := pattern(2*PackageSize + 13)
	make1 := func(write func(io.Writer) error) []byte {
		var buf bytes.Buffer
		w, err := encrypt(context.Background(), &buf, bytes.Clone(dek), id, []Recipient{k})
		if err != nil {
			t.Fatal(err)
		}
		if err := write(w); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	whole := make1(func(w io.Writer) error { _, err := w.Write(p); return err })
	for _, size := range []int{1, 7, PackageSize - 1, PackageSize, PackageSize + 1} {
		got := make1(func(w io.Writer) error {
			for rest := p; len(rest) > 0; {
				n := min(size, len(rest))
				if _, err := w.Write(rest[:n]); err != nil {
					return err
				}
				if _, err := w.Write(nil); err != nil {
					return err
				}
				rest = rest[n:]
			}
			return nil
		})
		if !bytes.Equal(got, whole) {
			t.Errorf("writes of %d bytes give another envelope", size)
		}
	}
	// io.Copy through iotest readers too.
	for name, wrapR := range map[string]func(io.Reader) io.Reader{
		"OneByteReader": iotest.OneByteReader,
		"HalfReader":    iotest.HalfReader,
		"DataErrReader": iotest.DataErrReader,
	} {
		got := make1(func(w io.Writer) error { _, err := io.Copy(w, wrapR(bytes.NewReader(p))); return err })
		if !bytes.Equal(got, whole) {
			t.Errorf("io.Copy from %s gives another envelope", name)
		}
	}
}

// TestReadersOverIOTest decrypts through iotest's awkward readers: the
// header parser and the body reader must cope with short reads and with
// data returned together with io.EOF.
func TestReadersOverIOTest(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	id := testIdentity(t)
	for _, n := range sweep {
		p := pattern(n)
		env := seal(t, p, k, id.Recipient())
		for name, wrapR := range map[string]func(io.Reader) io.Reader{
			"OneByteReader": iotest.OneByteReader,
			"HalfReader":    iotest.HalfReader,
			"DataErrReader": iotest.DataErrReader,
		} {
			r, err := Decrypt(context.Background(), wrapR(bytes.NewReader(env)), id)
			if err != nil {
				t.Fatalf("%d bytes, %s: %v", n, name, err)
			}
			if err := iotest.TestReader(r, p); err != nil {
				t.Errorf("%d bytes, %s: %v", n, name, err)
			}
			if h, err := ReadHeader(wrapR(bytes.NewReader(env))); err != nil || len(h.Stanzas) != 2 {
				t.Errorf("%d bytes, %s: ReadHeader: %v", n, name, err)
			}
		}
	}
}

// TestSourceErrors: an error reading the envelope is returned wrapped, never
// mistaken for tampering or truncation.
func TestSourceErrors(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	env := seal(t, pattern(2*PackageSize+13), k)
	hl := headerLen(t, env)
	boom := errors.New("boom")

	// In the header: TimeoutReader fails its second read.
	_, err := Decrypt(context.Background(), iotest.TimeoutReader(bytes.NewReader(env)), k)
	if !errors.Is(err, iotest.ErrTimeout) || isAuthError(err) {
		t.Errorf("timeout in header: %v", err)
	}
	if _, err := Decrypt(context.Background(), iotest.ErrReader(boom), k); !errors.Is(err, boom) || isAuthError(err) {
		t.Errorf("error reader: %v", err)
	}
	// In the body, at several offsets.
	for _, at := range []int{hl, hl + 1, hl + PackageSize + 32, len(env) - 1} {
		src := io.MultiReader(bytes.NewReader(env[:at]), iotest.ErrReader(boom))
		r, err := Decrypt(context.Background(), src, k)
		if err != nil {
			t.Fatalf("cut at %d: Decrypt: %v", at, err)
		}
		_, err = io.ReadAll(r)
		if !errors.Is(err, boom) || isAuthError(err) || !strings.HasPrefix(err.Error(), "read body: ") {
			t.Errorf("source error at %d: %v", at, err)
		}
		if _, again := r.Read(make([]byte, 10)); again == nil || again.Error() != err.Error() {
			t.Errorf("error at %d is not sticky: %v then %v", at, err, again)
		}
	}
}

func isAuthError(err error) bool {
	return errors.Is(err, ErrTampered) || errors.Is(err, ErrTruncated) || errors.Is(err, ErrMalformed)
}

// TestWriterContract: Close does not close dst, Write after Close fails,
// Close twice returns the same result, a failing dst fails the writer.
func TestWriterContract(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	dst := &closeRecorder{}
	w, err := Encrypt(context.Background(), dst, k)
	if err != nil {
		t.Fatal(err)
	}
	if dst.Len() != 0 {
		t.Errorf("Encrypt wrote %d bytes before any Write", dst.Len())
	}
	if _, err := w.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil || dst.closed {
		t.Fatalf("Close = %v, dst closed %v", err, dst.closed)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if _, err := w.Write([]byte("more")); err == nil {
		t.Error("Write after Close succeeded")
	}

	boom := errors.New("disk full")
	for _, n := range []int{0, 5, 3 * PackageSize} {
		w, err := Encrypt(context.Background(), failingWriter{boom}, k)
		if err != nil {
			t.Fatal(err)
		}
		_, werr := w.Write(pattern(n))
		cerr := w.Close()
		if !errors.Is(werr, boom) && !errors.Is(cerr, boom) {
			t.Errorf("%d bytes to a failing writer: Write %v, Close %v", n, werr, cerr)
		}
	}
}

type closeRecorder struct {
	bytes.Buffer
	closed bool
}

func (c *closeRecorder) Close() error { c.closed = true; return nil }

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }

// TestContext: a cancelled context stops Encrypt, Decrypt and Rewrap before
// any side effect, and reaches the HSM.
func TestContext(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	hsm := newFakeHSM(t, "h")
	r := mustHSMRecipient(t, hsm)
	env := seal(t, []byte("x"), k, r)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var dst bytes.Buffer
	if _, err := Encrypt(ctx, &dst, k); !errors.Is(err, context.Canceled) {
		t.Errorf("Encrypt: %v", err)
	}
	if _, err := Decrypt(ctx, bytes.NewReader(env), r); !errors.Is(err, context.Canceled) {
		t.Errorf("Decrypt: %v", err)
	}
	if err := Rewrap(ctx, bytes.NewReader(env), &dst, []Identity{k}, k); !errors.Is(err, context.Canceled) {
		t.Errorf("Rewrap: %v", err)
	}
	if dst.Len() != 0 || hsm.unwraps.Load() != 0 {
		t.Errorf("side effects after cancel: %d bytes written, %d HSM unwraps", dst.Len(), hsm.unwraps.Load())
	}
}

// TestRecipientLimits: no recipients, too many, and a recipient that
// returns a stanza the format cannot hold.
func TestRecipientLimits(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	if _, err := Encrypt(context.Background(), io.Discard); err == nil {
		t.Error("Encrypt with no recipients succeeded")
	}
	many := make([]Recipient, MaxStanzas+1)
	for i := range many {
		many[i] = k
	}
	if _, err := Encrypt(context.Background(), io.Discard, many...); err == nil {
		t.Error("Encrypt with too many recipients succeeded")
	}
	if _, err := Encrypt(context.Background(), io.Discard, many[:MaxStanzas]...); err != nil {
		t.Errorf("Encrypt with %d recipients: %v", MaxStanzas, err)
	}
	for name, s := range map[string]Stanza{
		"empty type":    {Type: "", Body: []byte{1}},
		"upper type":    {Type: "Key", Body: []byte{1}},
		"space in arg":  {Type: "x", Args: []string{"a b"}, Body: []byte{1}},
		"empty arg":     {Type: "x", Args: []string{""}, Body: []byte{1}},
		"empty body":    {Type: "x"},
		"body too long": {Type: "x", Body: make([]byte, MaxStanzaBody+1)},
		"too many args": {Type: "x", Args: strings.Split("a b c d e f g h i", " "), Body: []byte{1}},
	} {
		_, err := Encrypt(context.Background(), io.Discard, stanzaRecipient(s))
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Encrypt = %v, want ErrMalformed", name, err)
		}
	}
}

type stanzaRecipient Stanza

func (s stanzaRecipient) Wrap(context.Context, []byte) (Stanza, error) { return Stanza(s), nil }

// TestDataKeysDiffer: two envelopes of the same plaintext share nothing but
// the magic and layout.
func TestDataKeysDiffer(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	a, b := seal(t, []byte("same"), k), seal(t, []byte("same"), k)
	ha, _ := ReadHeader(bytes.NewReader(a))
	hb, _ := ReadHeader(bytes.NewReader(b))
	if ha.ObjectID == hb.ObjectID || bytes.Equal(ha.Stanzas[0].Body, hb.Stanzas[0].Body) || bytes.Equal(a[len(a)-20:], b[len(b)-20:]) {
		t.Error("two envelopes share an object id, wrapped key or body")
	}
}

// TestReadFromSourceFails: ReadFrom ends cleanly only at io.EOF. A source
// that fails mid-stream, with io.ErrUnexpectedEOF (a cut HTTP/2 stream) or
// another error, fails ReadFrom and Close, so the envelope of a prefix is
// never completed.
func TestReadFromSourceFails(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	for _, cause := range []error{io.ErrUnexpectedEOF, errors.New("stream reset")} {
		for _, at := range []int{0, 1, PackageSize, copyBufferSize + 7} {
			var dst bytes.Buffer
			w, err := Encrypt(context.Background(), &dst, k)
			if err != nil {
				t.Fatal(err)
			}
			src := io.MultiReader(bytes.NewReader(pattern(at)), iotest.ErrReader(cause))
			n, err := io.Copy(w, src)
			if !errors.Is(err, cause) {
				t.Errorf("%v after %d bytes: io.Copy = %d, %v; want the source's error", cause, at, n, err)
			}
			if cerr := w.Close(); !errors.Is(cerr, cause) {
				t.Errorf("%v after %d bytes: Close = %v; want the source's error", cause, at, cerr)
			}
			if dst.Len() > 0 {
				if _, herr, berr := open(dst.Bytes(), k); herr == nil && berr == nil {
					t.Errorf("%v after %d bytes: the envelope opens as complete", cause, at)
				}
			}
		}
	}
	// io.EOF is the end: short reads and an EOF with the last bytes.
	var dst bytes.Buffer
	w, err := Encrypt(context.Background(), &dst, k)
	if err != nil {
		t.Fatal(err)
	}
	p := pattern(copyBufferSize + 7)
	if _, err := io.Copy(w, iotest.DataErrReader(iotest.HalfReader(bytes.NewReader(p)))); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, herr, berr := open(dst.Bytes(), k)
	if herr != nil || berr != nil || !bytes.Equal(got, p) {
		t.Fatalf("round trip: %v, %v, equal %v", herr, berr, bytes.Equal(got, p))
	}
}
