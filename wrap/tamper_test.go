package wrap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/minio/sio"
)

// headerRegions names the byte ranges of a header with one stanza per
// recipient, so that a test can say what each flipped byte must give.
type region struct {
	name       string
	start, end int
	want       []error // any of these
}

func headerRegions(tb testing.TB, env []byte) []region {
	tb.Helper()
	h, raw, err := readHeader(bytes.NewReader(env))
	if err != nil {
		tb.Fatal(err)
	}
	tampered := []error{ErrTampered}
	rs := []region{
		{"magic", 0, 8, []error{ErrMalformed}},
		{"version", 8, 9, []error{ErrUnsupportedVersion}},
		{"object id", 9, 25, tampered},
		{"flags", 25, 26, []error{ErrMalformed, ErrTampered}}, // reserved bits; the empty bit fails the MAC
		{"suite", 26, 27, []error{ErrUnsupportedVersion}},
		// A changed length makes the stanzas not parse, or runs the
		// header into the body, or past its end.
		{"section length", 27, 29, []error{ErrMalformed, ErrTruncated, ErrTampered}},
		// The count too, unless the MAC catches it.
		{"stanza count", 29, 30, []error{ErrMalformed, ErrTampered}},
	}
	off := 30
	for i, s := range h.Stanzas {
		p := fmt.Sprintf("stanza %d ", i)
		rs = append(rs, region{p + "type", off, off + 1 + len(s.Type), []error{ErrMalformed, ErrUnknownKey}})
		off += 1 + len(s.Type)
		// Arguments name the key: changed, they name a key nobody holds
		// (or break the format).
		start := off
		off++
		for _, a := range s.Args {
			off += 1 + len(a)
		}
		rs = append(rs, region{p + "args", start, off, []error{ErrMalformed, ErrUnknownKey}})
		rs = append(rs, region{p + "body length", off, off + 2, []error{ErrMalformed, ErrTruncated}})
		off += 2
		rs = append(rs, region{p + "body", off, off + len(s.Body), tampered})
		off += len(s.Body)
	}
	rs = append(rs, region{"MAC", off, off + macSize, tampered})
	if off+macSize != len(raw) {
		tb.Fatalf("regions end at %d, header is %d bytes", off+macSize, len(raw))
	}
	return rs
}

// TestHeaderByteFlipped flips every header byte with three masks, for each
// recipient type: Decrypt must fail with a header error ("header:" in the
// message) of the kind the region allows, and never reach the body.
func TestHeaderByteFlipped(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	id := testIdentity(t)
	hsm := mustHSMRecipient(t, newFakeHSM(t, "h1"))
	p := pattern(100)
	for _, c := range []struct {
		name string
		r    Recipient
		id   Identity
	}{{"keyring", k, k}, {"hpke", id.Recipient(), id}, {"hsm", hsm, hsm}} {
		t.Run(c.name, func(t *testing.T) {
			env := seal(t, p, c.r)
			for _, reg := range headerRegions(t, env) {
				for i := reg.start; i < reg.end; i++ {
					for _, mask := range []byte{0x01, 0x80, 0xff} {
						bad := bytes.Clone(env)
						bad[i] ^= mask
						_, herr, berr := open(bad, c.id)
						if herr == nil {
							t.Fatalf("%s byte %d ^ %#02x: header accepted (body error %v)", reg.name, i, mask, berr)
						}
						if !strings.Contains(herr.Error(), "header") || !isAny(herr, reg.want) {
							t.Fatalf("%s byte %d ^ %#02x: %v; want a header error, one of %v", reg.name, i, mask, herr, reg.want)
						}
					}
				}
			}
		})
	}
}

func isAny(err error, targets []error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// TestBodyByteFlipped flips bytes in every part of every DARE package (its
// header, first, middle and last payload bytes, its tag): the header still
// opens, and reading the body fails with ErrTampered naming the body.
func TestBodyByteFlipped(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	for _, n := range []int{1, PackageSize, 2*PackageSize + 13} {
		env := seal(t, pattern(n), k)
		hl := headerLen(t, env)
		const pkg = 16 + PackageSize + 16
		var offsets []int
		for start := hl; start < len(env); start += pkg {
			end := min(start+pkg, len(env))
			for i := start; i < start+16; i++ {
				offsets = append(offsets, i) // DARE header: version, suite, length, nonce and final flag
			}
			offsets = append(offsets, start+16, (start+end)/2, end-17, end-16, end-1)
		}
		for _, i := range offsets {
			for _, mask := range []byte{0x01, 0x80} {
				bad := bytes.Clone(env)
				bad[i] ^= mask
				_, herr, berr := open(bad, k)
				if herr != nil {
					t.Fatalf("%d bytes, body byte %d: Decrypt: %v", n, i-hl, herr)
				}
				if !errors.Is(berr, ErrTampered) || !strings.HasPrefix(berr.Error(), "body: ") {
					t.Fatalf("%d bytes, body byte %d ^ %#02x: %v; want a body ErrTampered", n, i-hl, mask, berr)
				}
			}
		}
	}
}

// TestTruncated cuts envelopes everywhere in the header and at package
// boundaries and inside packages in the body.
func TestTruncated(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	for _, n := range sweep {
		env := seal(t, pattern(n), k)
		hl := headerLen(t, env)
		for cut := 0; cut < hl; cut++ {
			if _, herr, _ := open(env[:cut], k); !errors.Is(herr, ErrTruncated) || !strings.HasPrefix(herr.Error(), "header: ") {
				t.Fatalf("%d bytes, cut at header byte %d: %v; want a header ErrTruncated", n, cut, herr)
			}
		}
		if n == 0 {
			continue // the header is the whole envelope
		}
		const pkg = 16 + PackageSize + 16
		for b := hl; b < len(env); b += pkg {
			// At a package boundary (the body's start included): the
			// stream lacks its final package.
			if _, herr, berr := open(env[:b], k); herr != nil || !errors.Is(berr, ErrTruncated) || !strings.HasPrefix(berr.Error(), "body: ") {
				t.Errorf("%d bytes, cut at body byte %d: %v, %v; want a body ErrTruncated", n, b-hl, herr, berr)
			}
			// Inside a package: its authentication fails.
			for _, cut := range []int{b + 1, b + 16, b + 32, min(b+pkg, len(env)) - 1} {
				if cut >= len(env) {
					continue
				}
				if _, herr, berr := open(env[:cut], k); herr != nil || !errors.Is(berr, ErrTampered) {
					t.Errorf("%d bytes, cut at body byte %d: %v, %v; want ErrTampered", n, cut-hl, herr, berr)
				}
			}
		}
	}
}

// TestTruncatedBodyPinsSio pins the sio message that bodyError maps to
// ErrTruncated: if a new sio changes it, this fails rather than a
// truncation silently becoming "tampered".
func TestTruncatedBodyPinsSio(t *testing.T) {
	key := make([]byte, 32)
	var enc bytes.Buffer
	if _, err := sio.Encrypt(&enc, bytes.NewReader(make([]byte, 2*PackageSize+1)), sioConfig(key, new([nonceSize]byte))); err != nil {
		t.Fatal(err)
	}
	_, err := sio.Decrypt(io.Discard, bytes.NewReader(enc.Bytes()[:16+PackageSize+16]), sioConfig(key, nil))
	if err == nil || err.Error() != sioUnexpectedEOF {
		t.Fatalf("sio on a stream cut at a package boundary: %v; want %q", err, sioUnexpectedEOF)
	}
}

// TestTrailingData: anything after the final package, or after the header
// of an empty envelope, fails the body.
func TestTrailingData(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	other := seal(t, pattern(10), k)
	for _, n := range sweep {
		env := seal(t, pattern(n), k)
		for name, extra := range map[string][]byte{
			"one byte":           {0},
			"another envelope":   other,
			"a DARE-sized block": make([]byte, 16+PackageSize+16),
		} {
			_, herr, berr := open(append(bytes.Clone(env), extra...), k)
			if herr != nil || !errors.Is(berr, ErrTampered) {
				t.Errorf("%d bytes + %s: %v, %v; want a body ErrTampered", n, name, herr, berr)
			}
		}
	}
}

// TestSplicing: a body under another envelope's header, and an envelope's
// stanza moved into another header, fail.
func TestSplicing(t *testing.T) {
	k := testKeyring(t, "prod", 1)
	a, b := seal(t, pattern(300), k), seal(t, pattern(300), k)
	ha, hb := headerLen(t, a), headerLen(t, b)
	mixed := append(bytes.Clone(a[:ha]), b[hb:]...)
	if _, herr, berr := open(mixed, k); herr != nil || !errors.Is(berr, ErrTampered) {
		t.Errorf("a's header on b's body: %v, %v", herr, berr)
	}
	// b's stanza (with its own wrapped DEK) in a's header: the DEK opens,
	// the MAC does not.
	h, _ := ReadHeader(bytes.NewReader(a))
	h2, _ := ReadHeader(bytes.NewReader(b))
	h.Stanzas = h2.Stanzas
	raw, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if _, herr, _ := open(append(raw, a[ha:]...), k); !errors.Is(herr, ErrTampered) || !strings.Contains(herr.Error(), "MAC") {
		t.Errorf("b's stanza in a's header: %v; want a MAC failure", herr)
	}
}

// TestHSMDown: an HSM that cannot be reached is an operational error, not
// tampering, and the message says which key.
func TestHSMDown(t *testing.T) {
	hsm := newFakeHSM(t, "cluster-1/key-7")
	r := mustHSMRecipient(t, hsm)
	env := seal(t, []byte("x"), r)
	down := errors.New("cluster unreachable")
	hsm.down = down
	_, herr, _ := open(env, r)
	if !errors.Is(herr, down) || isAuthError(herr) || !strings.Contains(herr.Error(), "cluster-1/key-7") {
		t.Errorf("Decrypt with the HSM down: %v", herr)
	}
	// Another identity that holds a key for the envelope still opens it.
	k := testKeyring(t, "prod", 1)
	hsm.down = nil
	both := seal(t, []byte("y"), r, k)
	hsm.down = down
	if got, herr, berr := open(both, r, k); herr != nil || berr != nil || string(got) != "y" {
		t.Errorf("HSM down, keyring next: %q, %v, %v", got, herr, berr)
	}
	if _, err := Encrypt(context.Background(), io.Discard, r); !errors.Is(err, down) {
		t.Errorf("Encrypt with the HSM down: %v", err)
	}
	if _, err := NewHSMRecipient(&fakeHSM{id: "has space"}); !errors.Is(err, ErrMalformed) {
		t.Errorf("HSM key id with a space: %v", err)
	}
}
