package hsmcore

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/internal/testenv"
)

// The claim MAC of docs/FORMATS.md §11, pinned, and recomputed by OpenSSL
// from the message the section lays out.
func TestClaimMACKnownAnswer(t *testing.T) {
	secret := make([]byte, 32)
	nonce := make([]byte, 32)
	for i := range 32 {
		secret[i], nonce[i] = byte(i), byte(32+i)
	}
	const want = "a473f825f81b919de5d4fc77bad8db10e74813ac27a9e18b6f5a0e8fa66d6de9"
	got := hex.EncodeToString(ClaimMAC(secret, "HSM-0123456789AB", nonce, ClaimCSR, "cluster-1"))
	if got != want {
		t.Fatalf("claim MAC %s, want %s", got, want)
	}
	msg, _ := hex.DecodeString("68736d6261636b757020636c61696d2076310000001048534d2d3031323334353637383941420000000b636c75737465722e63737200000009636c75737465722d3100000020202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f")
	openssl := testenv.LookPath(t, "openssl")
	cmd := exec.Command(openssl, "dgst", "-sha256", "-mac", "HMAC", "-macopt", "hexkey:"+hex.EncodeToString(secret))
	cmd.Stdin = bytes.NewReader(msg)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(strings.TrimSpace(string(out)), want) {
		t.Fatalf("openssl HMAC of the laid-out message: %s, want %s", out, want)
	}
	if o := ClusterInitObject([]byte{0x30, 3, 2, 1, 1}, []byte{0x30, 3, 2, 1, 2}); o != "45217b63312f0f78a3abad4dd72b4bf640ec35d308ea021eeaf56c371977b7f3" {
		t.Fatalf("cluster init object %s", o)
	}
}

func TestClaimFileRoundTrip(t *testing.T) {
	c := NewClaim("HSM-0123456789AB")
	got, err := ParseClaim(c.Marshal())
	if err != nil || got.Serial != c.Serial || !bytes.Equal(got.Secret, c.Secret) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for _, bad := range []string{"", "hsmbackup claim v1\n", "hsmbackup claim v2\nserial A\nsecret 00\n",
		"hsmbackup claim v1\nserial HSM-1\nsecret " + strings.Repeat("0", 62) + "\n",
		"hsmbackup claim v1\nserial bad serial\nsecret " + strings.Repeat("0", 64) + "\n",
		"hsmbackup claim v1\nserial HSM-1\nsecret " + strings.Repeat("0", 64) + "\nmore\n"} {
		if _, err := ParseClaim([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseClaim(%q): %v, want ErrMalformed", bad, err)
		}
	}
	p := c.Prove(NewNonce(), ClaimCSR, "c1")
	q, err := ParseClaimProof(p.String())
	if err != nil || q.Serial != p.Serial || !bytes.Equal(q.Nonce, p.Nonce) || !bytes.Equal(q.MAC, p.MAC) {
		t.Fatalf("proof round trip: %+v, %v", q, err)
	}
}

func FuzzParseClaim(f *testing.F) {
	f.Add(NewClaim("HSM-1").Marshal())
	f.Add([]byte("hsmbackup claim v1\nserial \nsecret \n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseClaim(b)
		if err != nil {
			return
		}
		again, err := ParseClaim(c.Marshal())
		if err != nil || again.Serial != c.Serial || !bytes.Equal(again.Secret, c.Secret) {
			t.Fatalf("a parsed claim does not round-trip: %v", err)
		}
	})
}

func FuzzParseClaimProof(f *testing.F) {
	f.Add(NewClaim("HSM-1").Prove(NewNonce(), ClaimInit, "x").String())
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseClaimProof(s)
		if err != nil {
			return
		}
		if len(p.Nonce) != NonceSize || len(p.MAC) != 32 {
			t.Fatalf("accepted a proof of nonce %d, MAC %d bytes", len(p.Nonce), len(p.MAC))
		}
		if _, err := ParseClaimProof(p.String()); err != nil {
			t.Fatal(err)
		}
	})
}
