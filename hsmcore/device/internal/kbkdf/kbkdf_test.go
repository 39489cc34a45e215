package kbkdf_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore/device/internal/kbkdf"

	"github.com/hsmbackup/hsmbackup/internal/testenv"
)

// cavpFile is a verbatim subset of the NIST CAVP SP 800-108 KBKDF counter-mode
// response file KDFCTR_gen.rsp; see testdata/README.md for its source.
const cavpFile = "testdata/KDFCTR_gen_HMAC_SHA256_BEFORE_FIXED_32_BITS.rsp"

// cavpCase is one COUNT block of a KDFCTR_gen.rsp file.
type cavpCase struct {
	line       int // line of the COUNT= header, for messages
	count      int
	prf        string // section attributes in force for the case
	ctrLoc     string
	rlen       string
	l          int // output length in bits
	ki         []byte
	fixedInput []byte
	fixedLen   int      // FixedInputDataByteLen
	reps       [][]byte // "Binary rep of i" lines, in order
	instrings  [][]byte // "instring" lines, in order
	ko         []byte
}

// parseCAVP reads a KDFCTR_gen.rsp-format file: "# ..." comments,
// "[NAME=VALUE]" section attributes, and "COUNT=" blocks of "name = hex"
// lines, each closed by its KO line.
func parseCAVP(tb testing.TB, path string) []cavpCase {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()

	attrs := map[string]string{}
	var cases []cavpCase
	var c *cavpCase
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			name, value, ok := strings.Cut(line[1:len(line)-1], "=")
			if !ok {
				tb.Fatalf("%s:%d: bad section line %q", path, n, line)
			}
			attrs[name] = value
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			tb.Fatalf("%s:%d: bad line %q", path, n, line)
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if name == "COUNT" {
			if c != nil {
				tb.Fatalf("%s:%d: COUNT before KO of the previous case", path, n)
			}
			count, err := strconv.Atoi(value)
			if err != nil {
				tb.Fatalf("%s:%d: %v", path, n, err)
			}
			c = &cavpCase{line: n, count: count, prf: attrs["PRF"], ctrLoc: attrs["CTRLOCATION"], rlen: attrs["RLEN"]}
			continue
		}
		if c == nil {
			tb.Fatalf("%s:%d: %s outside a case", path, n, name)
		}
		var err error
		switch name {
		case "L":
			c.l, err = strconv.Atoi(value)
		case "FixedInputDataByteLen":
			c.fixedLen, err = strconv.Atoi(value)
		case "KI":
			c.ki, err = hex.DecodeString(value)
		case "FixedInputData":
			c.fixedInput, err = hex.DecodeString(value)
		case "Binary rep of i":
			var b []byte
			b, err = hex.DecodeString(value)
			c.reps = append(c.reps, b)
		case "instring":
			var b []byte
			b, err = hex.DecodeString(value)
			c.instrings = append(c.instrings, b)
		case "KO":
			c.ko, err = hex.DecodeString(value)
			cases = append(cases, *c)
			c = nil
		default:
			tb.Fatalf("%s:%d: unknown field %q", path, n, name)
		}
		if err != nil {
			tb.Fatalf("%s:%d: %s: %v", path, n, name, err)
		}
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	if c != nil {
		tb.Fatalf("%s: case COUNT=%d has no KO", path, c.count)
	}
	return cases
}

func TestCAVPCounterHMACSHA256(t *testing.T) {
	cases := parseCAVP(t, cavpFile)
	if len(cases) != 20 {
		t.Fatalf("parsed %d cases from %s, want 20", len(cases), cavpFile)
	}
	seenMultiBlock := false
	for _, c := range cases {
		t.Run(fmt.Sprintf("COUNT=%d/L=%d", c.count, c.l), func(t *testing.T) {
			if c.prf != "HMAC_SHA256" || c.ctrLoc != "BEFORE_FIXED" || c.rlen != "32_BITS" {
				t.Fatalf("line %d: section [PRF=%s] [CTRLOCATION=%s] [RLEN=%s], want HMAC_SHA256, BEFORE_FIXED, 32_BITS",
					c.line, c.prf, c.ctrLoc, c.rlen)
			}
			if c.l%8 != 0 {
				t.Skipf("L = %d is not a whole number of bytes", c.l)
			}
			if len(c.ko)*8 != c.l || len(c.fixedInput) != c.fixedLen {
				t.Fatalf("line %d: inconsistent lengths in the vector file", c.line)
			}
			// The file's own trace pins the layout this package implements:
			// PRF input i is [i]_32 || FixedInputData, with i counting from 1.
			if len(c.reps) == 0 || len(c.reps) != len(c.instrings) {
				t.Fatalf("line %d: %d counter lines and %d instring lines", c.line, len(c.reps), len(c.instrings))
			}
			for i := range c.reps {
				want := binary.BigEndian.AppendUint32(nil, uint32(i+1))
				if !bytes.Equal(c.reps[i], want) {
					t.Fatalf("line %d: Binary rep of i = %x, want %x", c.line, c.reps[i], want)
				}
				if !bytes.Equal(c.instrings[i], append(want, c.fixedInput...)) {
					t.Fatalf("line %d: instring %d is not [i]_32 || FixedInputData", c.line, i+1)
				}
			}
			if len(c.reps) > 1 {
				seenMultiBlock = true
			}

			got := kbkdf.CounterHMACSHA256(c.ki, c.fixedInput, c.l/8)
			if !bytes.Equal(got, c.ko) {
				t.Errorf("KO = %x\nwant %x", got, c.ko)
			}
		})
	}
	if !seenMultiBlock {
		t.Error("no vector needs more than one PRF block")
	}
}

func TestFixedInputLayout(t *testing.T) {
	got := kbkdf.FixedInput([]byte("label"), []byte("ctx"), 32)
	want := []byte{
		'l', 'a', 'b', 'e', 'l', // Label
		0x00,          // separator
		'c', 't', 'x', // Context
		0x00, 0x00, 0x01, 0x00, // [L]_32 = 256 bits, big endian
	}
	if !bytes.Equal(got, want) {
		t.Errorf("FixedInput = %x, want %x", got, want)
	}

	// Empty label and context still carry the separator and L.
	got = kbkdf.FixedInput(nil, nil, 0x01020304)
	want = []byte{0x00, 0x08, 0x10, 0x18, 0x20}
	if !bytes.Equal(got, want) {
		t.Errorf("FixedInput(nil, nil, 0x01020304) = %x, want %x", got, want)
	}
}

func TestDeriveUsesFixedInput(t *testing.T) {
	key := bytes.Repeat([]byte{0x42}, 32)
	label, context := []byte("hsmbackup test"), []byte{0x00, 0xff, 0x00}
	for _, n := range []int{1, 16, 31, 32, 33, 64, 100} {
		got := kbkdf.Derive(key, label, context, n)
		want := kbkdf.CounterHMACSHA256(key, kbkdf.FixedInput(label, context, n), n)
		if len(got) != n || !bytes.Equal(got, want) {
			t.Errorf("outLen %d: Derive = %x, want %x", n, got, want)
		}
	}
	// L is part of the input, so a shorter output is not a prefix of a longer one.
	if a, b := kbkdf.Derive(key, label, context, 16), kbkdf.Derive(key, label, context, 32); bytes.Equal(a, b[:16]) {
		t.Error("Derive output for 16 bytes is a prefix of the 32-byte output")
	}
	// Without L in the fixed input, outputs are prefixes of each other.
	fixed := []byte("fixed")
	if a, b := kbkdf.CounterHMACSHA256(key, fixed, 40), kbkdf.CounterHMACSHA256(key, fixed, 100); !bytes.Equal(a, b[:40]) {
		t.Error("CounterHMACSHA256 output for 40 bytes is not a prefix of the 100-byte output")
	}
}

func TestPanics(t *testing.T) {
	key := make([]byte, 32)
	for name, f := range map[string]func(){
		"CounterHMACSHA256 outLen 0":  func() { kbkdf.CounterHMACSHA256(key, nil, 0) },
		"CounterHMACSHA256 outLen -1": func() { kbkdf.CounterHMACSHA256(key, nil, -1) },
		"CounterHMACSHA256 too large": func() { kbkdf.CounterHMACSHA256(key, nil, kbkdf.MaxOutLen+1) },
		"FixedInput outLen 0":         func() { kbkdf.FixedInput(nil, nil, 0) },
		"FixedInput too large":        func() { kbkdf.FixedInput(nil, nil, kbkdf.MaxOutLen+1) },
		"FixedInput zero in label":    func() { kbkdf.FixedInput([]byte("a\x00b"), nil, 32) },
		"Derive outLen 0":             func() { kbkdf.Derive(key, nil, nil, 0) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				r := recover()
				if s, ok := r.(string); !ok || !strings.HasPrefix(s, "kbkdf: ") {
					t.Errorf("recovered %v, want a panic with a \"kbkdf: \" message", r)
				}
			}()
			f()
		})
	}
}

// TestDeriveMatchesOpenSSL checks Derive against OpenSSL's KBKDF (counter
// mode, HMAC-SHA256), whose defaults are a 32-bit counter before
// Label || 0x00 || Context || [L]_32 — the same layout as FixedInput.
func TestDeriveMatchesOpenSSL(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	key := []byte("0123456789abcdef0123456789abcdef")
	label, context := []byte("hsmbackup label"), []byte("context\x00with\xffbinary")
	for _, n := range []int{16, 32, 45, 64, 200} {
		cmd := exec.Command(openssl, "kdf", "-binary", "-keylen", strconv.Itoa(n),
			"-kdfopt", "mode:counter", "-kdfopt", "mac:HMAC", "-kdfopt", "digest:SHA2-256",
			"-kdfopt", "hexkey:"+hex.EncodeToString(key),
			"-kdfopt", "hexsalt:"+hex.EncodeToString(label),
			"-kdfopt", "hexinfo:"+hex.EncodeToString(context),
			"KBKDF")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		want, err := cmd.Output()
		if err != nil {
			t.Fatalf("openssl kdf: %v: %s", err, stderr.Bytes())
		}
		if got := kbkdf.Derive(key, label, context, n); !bytes.Equal(got, want) {
			t.Errorf("outLen %d: Derive = %x\nopenssl    %x", n, got, want)
		}
	}
}
