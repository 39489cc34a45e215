package wrap

import (
	"bytes"
	"encoding/hex"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/internal/testenv"
	"github.com/minio/sio"
)

// TestVectorsOpenSSL is the outside check of docs/FORMATS.md 8.2: for every
// valid vector, OpenSSL's HKDF derives the same keys from the data key and
// the header core, OpenSSL's HMAC gives the header's MAC, and the body
// opens with sio under the OpenSSL-derived key.
func TestVectorsOpenSSL(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl")
	files, _ := filepath.Glob("testdata/vectors/*.json")
	checked := 0
	for _, file := range files {
		v := readVector(t, file)
		if v.Expect != "ok" || v.DEK == "" {
			continue
		}
		env := mustHex(t, v.Envelope)
		dek := mustHex(t, v.DEK)
		core := env[:coreSize]
		macKey := opensslHKDF(t, openssl, dek, append([]byte(labelMAC), core...), 32)
		kb := opensslHKDF(t, openssl, dek, append([]byte(labelBody), core...), 44)
		if hex.EncodeToString(macKey) != v.MACKey || hex.EncodeToString(kb[:32]) != v.BodyKey || hex.EncodeToString(kb[32:]) != v.BodyNonce {
			t.Errorf("%s: OpenSSL derives other keys: %x %x", file, macKey, kb)
		}
		hl := headerLen(t, env)
		mac := run(t, openssl, env[:hl-macSize], "mac", "-digest", "SHA256", "-macopt", "hexkey:"+hex.EncodeToString(macKey), "HMAC")
		if got := strings.ToLower(strings.TrimSpace(string(mac))); got != hex.EncodeToString(env[hl-macSize:hl]) {
			t.Errorf("%s: OpenSSL HMAC %s, header has %x", file, got, env[hl-macSize:hl])
		}
		if body := env[hl:]; len(body) > 0 {
			got, err := sio.DecryptBuffer(nil, body, sioConfig(kb[:32], nil))
			if err != nil || !bytes.Equal(got, v.plaintext(t)) {
				t.Errorf("%s: body under the OpenSSL-derived key: %v", file, err)
			}
		}
		checked++
	}
	if checked < 6 {
		t.Errorf("checked %d vectors, want at least 6", checked)
	}
}

// opensslHKDF runs "openssl kdf … HKDF" with an empty salt.
func opensslHKDF(tb testing.TB, openssl string, ikm, info []byte, n int) []byte {
	tb.Helper()
	out := run(tb, openssl, nil, "kdf", "-keylen", strconv.Itoa(n), "-kdfopt", "digest:SHA256",
		"-kdfopt", "hexkey:"+hex.EncodeToString(ikm), "-kdfopt", "hexinfo:"+hex.EncodeToString(info), "HKDF")
	b, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(string(out)), ":", ""))
	if err != nil || len(b) != n {
		tb.Fatalf("openssl kdf printed %q", out)
	}
	return b
}

func run(tb testing.TB, name string, stdin []byte, args ...string) []byte {
	tb.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("%s %s: %v: %s", name, args[0], err, stderr.Bytes())
	}
	return out
}
