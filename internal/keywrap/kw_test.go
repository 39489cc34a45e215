package keywrap_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/internal/keywrap"
	"github.com/hsmbackup/hsmbackup/internal/testenv"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rfc3394 are the test vectors of RFC 3394 §4.1 to §4.6.
var rfc3394 = []struct{ name, kek, key, wrapped string }{
	{"4.1 128-bit data, 128-bit KEK", "000102030405060708090A0B0C0D0E0F", "00112233445566778899AABBCCDDEEFF",
		"1FA68B0A8112B447 AEF34BD8FB5A7B82 9D3E862371D2CFE5"},
	{"4.2 128-bit data, 192-bit KEK", "000102030405060708090A0B0C0D0E0F1011121314151617", "00112233445566778899AABBCCDDEEFF",
		"96778B25AE6CA435 F92B5B97C050AED2 468AB8A17AD84E5D"},
	{"4.3 128-bit data, 256-bit KEK", "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F", "00112233445566778899AABBCCDDEEFF",
		"64E8C3F9CE0F5BA2 63E9777905818A2A 93C8191E7D6E8AE7"},
	{"4.4 192-bit data, 192-bit KEK", "000102030405060708090A0B0C0D0E0F1011121314151617", "00112233445566778899AABBCCDDEEFF0001020304050607",
		"031D33264E15D332 68F24EC260743EDC E1C6C7DDEE725A93 6BA814915C6762D2"},
	{"4.5 192-bit data, 256-bit KEK", "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F", "00112233445566778899AABBCCDDEEFF0001020304050607",
		"A8F9BC1612C68B3F F6E6F4FBE30E71E4 769C8B80A32CB895 8CD5D17D6B254DA1"},
	{"4.6 256-bit data, 256-bit KEK", "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F", "00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F",
		"28C9F404C4B810F4 CBCCB35CFB87F826 3F5786E2D80ED326 CBC7F0E71A99F43B FB988B9B7A02DD21"},
}

func TestKWRFC3394(t *testing.T) {
	for _, v := range rfc3394 {
		t.Run(v.name, func(t *testing.T) {
			kek, key, want := unhex(t, v.kek), unhex(t, v.key), unhex(t, v.wrapped)
			got, err := keywrap.WrapKW(kek, key)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("WrapKW = %X, want %X", got, want)
			}
			back, err := keywrap.UnwrapKW(kek, want)
			if err != nil || !bytes.Equal(back, key) {
				t.Fatalf("UnwrapKW = %X, %v; want %X", back, err, key)
			}
			for i := range want {
				bad := bytes.Clone(want)
				bad[i] ^= 0x80
				if _, err := keywrap.UnwrapKW(kek, bad); !errors.Is(err, keywrap.ErrUnwrap) {
					t.Fatalf("byte %d flipped: got %v, want ErrUnwrap", i, err)
				}
			}
		})
	}
}

func TestKWRefusals(t *testing.T) {
	kek := make([]byte, 32)
	for _, n := range []int{0, 8, 17, 20, keywrap.MaxKeySize + 8} {
		if _, err := keywrap.WrapKW(kek, make([]byte, n)); err == nil {
			t.Errorf("a %d-byte key wrapped", n)
		}
	}
	if _, err := keywrap.WrapKW(make([]byte, 20), make([]byte, 16)); err == nil {
		t.Error("a 20-byte KEK wrapped")
	}
	for _, n := range []int{0, 8, 16, 23, 25} {
		if _, err := keywrap.UnwrapKW(kek, make([]byte, n)); !errors.Is(err, keywrap.ErrUnwrap) {
			t.Errorf("%d bytes: got %v, want ErrUnwrap", n, err)
		}
	}
	w, _ := keywrap.WrapKW(kek, make([]byte, 16))
	other := bytes.Repeat([]byte{1}, 32)
	if _, err := keywrap.UnwrapKW(other, w); !errors.Is(err, keywrap.ErrUnwrap) {
		t.Errorf("wrong KEK: got %v, want ErrUnwrap", err)
	}
}

// TestKWOpenSSLInterop: OpenSSL's RFC 3394 (-id-aes*-wrap, which takes the
// default IV only when given) agrees with WrapKW both ways.
func TestKWOpenSSLInterop(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	for _, kekLen := range []int{16, 24, 32} {
		for _, n := range []int{16, 24, 32, 256, 1024} {
			t.Run(fmt.Sprintf("KEK=%d/key=%d", kekLen, n), func(t *testing.T) {
				kek, key := randomBytes(t, kekLen), randomBytes(t, n)
				ours, err := keywrap.WrapKW(kek, key)
				if err != nil {
					t.Fatal(err)
				}
				cipher := fmt.Sprintf("-id-aes%d-wrap", 8*kekLen)
				theirs, err := runOpenSSL(t, openssl, key, "enc", cipher, "-iv", "A6A6A6A6A6A6A6A6", "-K", hex.EncodeToString(kek))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(ours, theirs) {
					t.Fatalf("WrapKW = %x\nopenssl %x", ours, theirs)
				}
				back, err := runOpenSSL(t, openssl, ours, "enc", "-d", cipher, "-iv", "A6A6A6A6A6A6A6A6", "-K", hex.EncodeToString(kek))
				if err != nil || !bytes.Equal(back, key) {
					t.Fatalf("openssl unwrap = %x, %v", back, err)
				}
			})
		}
	}
}

// runOpenSSL runs openssl with args and in on stdin (within PIPE_BUF, for
// the reason opensslKWP gives), and returns stdout.
func runOpenSSL(tb testing.TB, openssl string, in []byte, args ...string) ([]byte, error) {
	tb.Helper()
	if len(in) > 4096 {
		tb.Fatalf("runOpenSSL: %d-byte input would reach openssl in several reads", len(in))
	}
	cmd := exec.Command(openssl, args...)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("openssl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}
