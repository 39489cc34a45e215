package keywrap_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/tink-crypto/tink-go/v2/kwp/subtle"

	"github.com/hsmbackup/hsmbackup/internal/keywrap"

	"github.com/hsmbackup/hsmbackup/internal/testenv"
)

// vector is one COUNT block of a CAVP key wrap file (or of RFC5649.txt).
type vector struct {
	file    string
	line    int
	section string // e.g. "PLAINTEXT LENGTH = 248"
	count   int
	fields  map[string][]byte // K, P, C (CAVP) or KEK, Key, Wrap (RFC5649.txt)
	fail    bool              // the block says FAIL: unwrapping must fail
}

// parseVectors reads the CAVP key wrap text format: "#" comments, "[...]"
// section lines, and "COUNT = n" blocks of "NAME = hex" lines, where a bare
// "FAIL" line marks an authentication failure.
func parseVectors(tb testing.TB, path string) []vector {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()

	var vs []vector
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			continue
		case line == "FAIL":
			if len(vs) == 0 {
				tb.Fatalf("%s:%d: FAIL outside a case", path, n)
			}
			vs[len(vs)-1].fail = true
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			tb.Fatalf("%s:%d: bad line %q", path, n, line)
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if name == "COUNT" {
			count, err := strconv.Atoi(value)
			if err != nil {
				tb.Fatalf("%s:%d: %v", path, n, err)
			}
			vs = append(vs, vector{file: path, line: n, section: section, count: count, fields: map[string][]byte{}})
			continue
		}
		if len(vs) == 0 {
			tb.Fatalf("%s:%d: %s outside a case", path, n, name)
		}
		b, err := hex.DecodeString(value)
		if err != nil {
			tb.Fatalf("%s:%d: %s: %v", path, n, name, err)
		}
		vs[len(vs)-1].fields[name] = b
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return vs
}

// TestCAVP runs the NIST SP 800-38F KWP vectors for AES-256 (see
// testdata/README.md): KWP-AE cases must wrap to C (and unwrap back), KWP-AD
// cases must unwrap to P, or fail with ErrUnwrap where the file says FAIL.
func TestCAVP(t *testing.T) {
	type tc struct {
		vector
		encrypt bool // KWP-AE (wrap) rather than KWP-AD (unwrap)
	}
	var cases []tc
	for _, v := range parseVectors(t, "testdata/KWP_AE_256.txt") {
		cases = append(cases, tc{v, true})
	}
	for _, v := range parseVectors(t, "testdata/KWP_AD_256.txt") {
		cases = append(cases, tc{v, false})
	}
	var ran, failures int
	for _, c := range cases {
		name := fmt.Sprintf("%s/%s/COUNT=%d", strings.TrimPrefix(c.file, "testdata/"), c.section, c.count)
		t.Run(name, func(t *testing.T) {
			bits, err := strconv.Atoi(strings.TrimPrefix(c.section, "PLAINTEXT LENGTH = "))
			if err != nil {
				t.Fatalf("%s:%d: unexpected section %q", c.file, c.line, c.section)
			}
			// tink's range; the files hold only cases inside it.
			if bits%8 != 0 || bits/8 < keywrap.MinKeySize || bits/8 > keywrap.MaxKeySize {
				t.Fatalf("%s:%d: plaintext length %d bits is outside tink's range", c.file, c.line, bits)
			}
			k, p, ct := c.fields["K"], c.fields["P"], c.fields["C"]
			if len(k) != 32 || ct == nil || c.fail == (p != nil) {
				t.Fatalf("%s:%d: malformed case", c.file, c.line)
			}
			if p != nil && len(p)*8 != bits {
				t.Fatalf("%s:%d: P is %d bits, section says %d", c.file, c.line, len(p)*8, bits)
			}
			// So that FAIL cases fail on the integrity check, not on a length.
			if want := (bits/8+7)/8*8 + 8; len(ct) != want {
				t.Fatalf("%s:%d: C is %d bytes, want %d", c.file, c.line, len(ct), want)
			}
			ran++
			if c.encrypt {
				got, err := keywrap.Wrap(k, p)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, ct) {
					t.Errorf("Wrap = %x\nwant   %x", got, ct)
				}
			}
			got, err := keywrap.Unwrap(k, ct)
			if c.fail {
				failures++
				if err != keywrap.ErrUnwrap {
					t.Errorf("Unwrap = %x, %v; want ErrUnwrap", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, p) {
				t.Errorf("Unwrap = %x\nwant     %x", got, p)
			}
		})
	}
	// Guard against a parser that silently drops cases.
	if want := 5 + 15; ran != want {
		t.Errorf("ran %d vectors, want %d", ran, want)
	}
	if failures != 5 {
		t.Errorf("ran %d FAIL vectors, want 5", failures)
	}
}

func randomBytes(tb testing.TB, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return b
}

func mustWrap(tb testing.TB, kek, key []byte) []byte {
	tb.Helper()
	w, err := keywrap.Wrap(kek, key)
	if err != nil {
		tb.Fatal(err)
	}
	return w
}

func TestRoundTripSizes(t *testing.T) {
	for _, kekLen := range []int{16, 32} {
		kek := randomBytes(t, kekLen)
		for _, n := range []int{16, 17, 23, 24, 25, 31, 32, 33, 64, 100, 1218, 8191, 8192} {
			key := randomBytes(t, n)
			w := mustWrap(t, kek, key)
			if want := (n+7)/8*8 + 8; len(w) != want {
				t.Errorf("KEK %d, key %d: wrapped length %d, want %d", kekLen, n, len(w), want)
			}
			got, err := keywrap.Unwrap(kek, w)
			if err != nil || !bytes.Equal(got, key) {
				t.Errorf("KEK %d, key %d: Unwrap(Wrap(key)) = %x, %v", kekLen, n, got, err)
			}
		}
	}
}

func TestWrapErrors(t *testing.T) {
	kek := randomBytes(t, 32)
	for name, c := range map[string]struct{ kek, key []byte }{
		"KEK 0 bytes":  {nil, make([]byte, 32)},
		"KEK 24 bytes": {make([]byte, 24), make([]byte, 32)},
		"KEK 64 bytes": {make([]byte, 64), make([]byte, 32)},
		"key 0 bytes":  {kek, nil},
		"key 15 bytes": {kek, make([]byte, 15)},
		"key 8193":     {kek, make([]byte, 8193)},
	} {
		w, err := keywrap.Wrap(c.kek, c.key)
		if err == nil || !strings.HasPrefix(err.Error(), "keywrap: ") || w != nil {
			t.Errorf("%s: Wrap = %x, %v; want a \"keywrap: \" error", name, w, err)
		}
	}
}

// TestUnwrapTampered flips every byte of a wrapped key (with three masks),
// and truncates and extends it: each must give exactly ErrUnwrap.
func TestUnwrapTampered(t *testing.T) {
	kek := randomBytes(t, 32)
	for _, n := range []int{16, 31, 100} {
		w := mustWrap(t, kek, randomBytes(t, n))
		for i := range w {
			for _, mask := range []byte{0x01, 0x80, 0xff} {
				bad := bytes.Clone(w)
				bad[i] ^= mask
				if got, err := keywrap.Unwrap(kek, bad); err != keywrap.ErrUnwrap || got != nil {
					t.Errorf("key %d bytes, byte %d ^ %#02x: Unwrap = %x, %v; want ErrUnwrap", n, i, mask, got, err)
				}
			}
		}
		for name, bad := range map[string][]byte{
			"nil":            nil,
			"empty":          {},
			"drop last 8":    w[:len(w)-8],
			"drop last 1":    w[:len(w)-1],
			"drop first 8":   w[8:],
			"append 8 zeros": append(bytes.Clone(w), make([]byte, 8)...),
			"append 1 zero":  append(bytes.Clone(w), 0),
			"16 bytes":       w[:16],
		} {
			if got, err := keywrap.Unwrap(kek, bad); err != keywrap.ErrUnwrap || got != nil {
				t.Errorf("key %d bytes, %s: Unwrap = %x, %v; want ErrUnwrap", n, name, got, err)
			}
		}
	}
}

func TestUnwrapWrongKEK(t *testing.T) {
	kek := randomBytes(t, 32)
	w := mustWrap(t, kek, randomBytes(t, 32))
	for name, other := range map[string][]byte{
		"other 32-byte KEK":     randomBytes(t, 32),
		"first half as AES-128": kek[:16],
		"one bit flipped": func() []byte {
			k := bytes.Clone(kek)
			k[31] ^= 1
			return k
		}(),
	} {
		if got, err := keywrap.Unwrap(other, w); err != keywrap.ErrUnwrap || got != nil {
			t.Errorf("%s: Unwrap = %x, %v; want ErrUnwrap", name, got, err)
		}
	}
	for _, n := range []int{0, 24, 64} {
		got, err := keywrap.Unwrap(make([]byte, n), w)
		if !errors.Is(err, keywrap.ErrUnwrap) || got != nil {
			t.Errorf("%d-byte KEK: Unwrap = %x, %v; want ErrUnwrap", n, got, err)
		}
	}
}

// FuzzUnwrap checks that Unwrap never panics, fails only with ErrUnwrap, and
// that whatever it accepts re-wraps to the identical bytes.
func FuzzUnwrap(f *testing.F) {
	kek := bytes.Repeat([]byte{0x5a}, 32)
	kek16 := bytes.Repeat([]byte{0xa5}, 16)
	for _, n := range []int{16, 17, 24, 31, 40, 100} {
		key := bytes.Repeat([]byte{byte(n)}, n)
		w := mustWrap(f, kek, key)
		f.Add(kek, w)
		f.Add(kek16, mustWrap(f, kek16, key))
		bad := bytes.Clone(w)
		bad[len(bad)-1] ^= 1
		f.Add(kek, bad)
	}
	f.Add(kek, []byte{})
	f.Add([]byte{}, make([]byte, 24))
	f.Fuzz(func(t *testing.T, kek, wrapped []byte) {
		key, err := keywrap.Unwrap(kek, wrapped)
		if err != nil {
			if !errors.Is(err, keywrap.ErrUnwrap) || key != nil {
				t.Fatalf("Unwrap = %x, %v; want nil, ErrUnwrap", key, err)
			}
			return
		}
		again, err := keywrap.Wrap(kek, key)
		if err != nil {
			t.Fatalf("Unwrap accepted a %d-byte key that Wrap refuses: %v", len(key), err)
		}
		if !bytes.Equal(again, wrapped) {
			t.Fatalf("Wrap(Unwrap(w)) = %x, want w = %x", again, wrapped)
		}
	})
}

// --- Outside checks against OpenSSL ---

// aiv is the RFC 5649 alternative initial value's constant half. OpenSSL 3.0's
// "enc" insists on an explicit -iv with -K ("iv undefined" otherwise).
const aiv = "A65959A6"

// opensslKWP runs "openssl enc [-d] -id-aesN-wrap-pad -K kek -iv A65959A6"
// with in on stdin and returns stdout. Nothing touches the disk; the test KEK
// does appear on the command line, which is acceptable for random test keys.
//
// openssl enc hands each read(2) of its input to the cipher as one update,
// and a wrap cipher wraps every update separately, so the whole input must
// arrive in one read: it is kept within PIPE_BUF (4096 bytes), which the
// kernel writes to the pipe atomically.
func opensslKWP(tb testing.TB, openssl string, decrypt bool, kek, in []byte) ([]byte, error) {
	tb.Helper()
	if len(in) > 4096 {
		tb.Fatalf("opensslKWP: %d-byte input would reach openssl in several reads", len(in))
	}
	args := []string{"enc"}
	if decrypt {
		args = append(args, "-d")
	}
	args = append(args, fmt.Sprintf("-id-aes%d-wrap-pad", len(kek)*8), "-K", hex.EncodeToString(kek), "-iv", aiv)
	cmd := exec.Command(openssl, args...)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("openssl %s: %w: %s", strings.Join(args[:2], " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// TestOpenSSLRFC5649 pins the outside checker: OpenSSL must reproduce both
// RFC 5649 §6 examples (192-bit KEK), in both directions, and reject a
// tampered wrapping.
func TestOpenSSLRFC5649(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	vs := parseVectors(t, "testdata/RFC5649.txt")
	if len(vs) != 2 {
		t.Fatalf("parsed %d RFC 5649 vectors, want 2", len(vs))
	}
	for _, v := range vs {
		kek, key, want := v.fields["KEK"], v.fields["Key"], v.fields["Wrap"]
		if len(kek) != 24 || key == nil || want == nil {
			t.Fatalf("%s:%d: malformed case", v.file, v.line)
		}
		got, err := opensslKWP(t, openssl, false, kek, key)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("COUNT=%d: openssl wrap = %x, want %x", v.count, got, want)
		}
		got, err = opensslKWP(t, openssl, true, kek, want)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, key) {
			t.Errorf("COUNT=%d: openssl unwrap = %x, want %x", v.count, got, key)
		}
		bad := bytes.Clone(want)
		bad[len(bad)-1] ^= 1
		if got, err := opensslKWP(t, openssl, true, kek, bad); err == nil {
			t.Errorf("COUNT=%d: openssl unwrapped a tampered input to %x", v.count, got)
		}
	}
}

// TestOpenSSLInterop is the outside check: keys wrapped here unwrap with
// OpenSSL, keys wrapped by OpenSSL unwrap here, and since KWP is
// deterministic both wrappings are identical.
func TestOpenSSLInterop(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	for _, kekLen := range []int{32, 16} {
		kek := randomBytes(t, kekLen)
		// 1218 bytes is the size of a PKCS#8-encoded RSA-2048 private key.
		for _, n := range []int{16, 24, 32, 64, 100, 1218} {
			t.Run(fmt.Sprintf("KEK=%d/key=%d", kekLen, n), func(t *testing.T) {
				key := randomBytes(t, n)

				ours := mustWrap(t, kek, key)
				got, err := opensslKWP(t, openssl, true, kek, ours)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, key) {
					t.Errorf("openssl unwrap of Wrap output = %x, want %x", got, key)
				}

				theirs, err := opensslKWP(t, openssl, false, kek, key)
				if err != nil {
					t.Fatal(err)
				}
				got, err = keywrap.Unwrap(kek, theirs)
				if err != nil {
					t.Fatalf("Unwrap of openssl output: %v", err)
				}
				if !bytes.Equal(got, key) {
					t.Errorf("Unwrap of openssl output = %x, want %x", got, key)
				}
				if !bytes.Equal(ours, theirs) {
					t.Errorf("Wrap = %x\nopenssl %x", ours, theirs)
				}
			})
		}
	}
}

// TestUnwrapRejectsShortKeys documents why Unwrap checks the length itself:
// a valid wrapping of a 9- to 15-byte key (here made by OpenSSL) is accepted
// by tink's Unwrap, although tink's Wrap refuses such keys.
func TestUnwrapRejectsShortKeys(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	kek := randomBytes(t, 32)
	tink, err := subtle.NewKWP(kek)
	if err != nil {
		t.Fatal(err)
	}
	for n := 9; n < keywrap.MinKeySize; n++ {
		key := randomBytes(t, n)
		w, err := opensslKWP(t, openssl, false, kek, key)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := tink.Unwrap(w); err != nil || !bytes.Equal(got, key) {
			t.Logf("%d-byte key: tink Unwrap = %x, %v (it no longer accepts short keys)", n, got, err)
		}
		if got, err := keywrap.Unwrap(kek, w); err != keywrap.ErrUnwrap || got != nil {
			t.Errorf("%d-byte key: Unwrap = %x, %v; want ErrUnwrap", n, got, err)
		}
	}
}
