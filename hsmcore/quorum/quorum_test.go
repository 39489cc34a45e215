package quorum

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"
)

// katToken is the token of the known-answer tests.
func katToken(tb testing.TB) Token {
	tb.Helper()
	issued := time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)
	return Token{
		ID:      [16]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
		Op:      "user.delete",
		Object:  "bob",
		Issued:  issued,
		Expires: issued.Add(DefaultTTL),
	}
}

// The expected bytes and signatures below were computed from the format
// description alone, with Python's struct module and the pyca/cryptography
// Ed25519 implementation, not with this package. They must never change: a
// change invalidates every approval an officer has signed.
func TestSigningBytesKnownAnswer(t *testing.T) {
	tests := []struct {
		name string
		tok  Token
		want string
	}{
		{
			name: "user.delete bob",
			tok:  katToken(t),
			want: "68736d6261636b75702071756f72756d20746f6b656e20763100" + // "hsmbackup quorum token v1" 0x00
				"000102030405060708090a0b0c0d0e0f" + // ID
				"0000000b757365722e64656c657465" + // str("user.delete")
				"00000003626f62" + // str("bob")
				"182cb3e8618c234c" + // 2025-03-14T15:09:26.535897932Z
				"182cb4741455934c", // 2025-03-14T15:19:26.535897932Z
		},
		{
			name: "empty object",
			tok: Token{
				ID:      [16]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
				Op:      "image.import",
				Issued:  time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
				Expires: time.Date(2025, 1, 1, 0, 10, 0, 0, time.UTC),
			},
			want: "68736d6261636b75702071756f72756d20746f6b656e20763100" +
				"ffffffffffffffffffffffffffffffff" +
				"0000000c696d6167652e696d706f7274" +
				"00000000" +
				"1816687ec0570000" +
				"1816690a73207000",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hex.EncodeToString(tt.tok.SigningBytes()); got != tt.want {
				t.Errorf("SigningBytes\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestSignKnownAnswer(t *testing.T) {
	// The private key of RFC 8032, section 7.1, TEST 1.
	seed, _ := hex.DecodeString("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
	priv := ed25519.NewKeyFromSeed(seed)
	const want = "f9b444ffe9cc3a702dad11096910776a21cb2cb0f8f0c23de60ec076f8746c77" +
		"e4f1f444649bfed330d1573cd0d5d4a04988ea727728361c1a697452b10c9c02"
	a := Sign(priv, "alice", katToken(t))
	if a.Officer != "alice" {
		t.Errorf("Officer = %q", a.Officer)
	}
	if got := hex.EncodeToString(a.Signature); got != want {
		t.Errorf("Signature\n got %s\nwant %s", got, want)
	}
}

// Every field of a token changes its SigningBytes, and the length prefixes
// keep Op and Object apart.
func TestSigningBytesCoversEveryField(t *testing.T) {
	base := katToken(t)
	variants := map[string]func(*Token){
		"ID":      func(k *Token) { k.ID[15] ^= 1 },
		"Op":      func(k *Token) { k.Op = "user.create" },
		"Object":  func(k *Token) { k.Object = "bobby" },
		"Issued":  func(k *Token) { k.Issued = k.Issued.Add(time.Nanosecond) },
		"Expires": func(k *Token) { k.Expires = k.Expires.Add(time.Nanosecond) },
		"split":   func(k *Token) { k.Op, k.Object = "user.delet", "ebob" },
	}
	for name, mutate := range variants {
		k := base
		mutate(&k)
		if bytes.Equal(k.SigningBytes(), base.SigningBytes()) {
			t.Errorf("changing %s does not change SigningBytes", name)
		}
	}
	// The time zone does not matter, only the instant.
	k := base
	k.Issued = k.Issued.In(time.FixedZone("X", 3600))
	if !bytes.Equal(k.SigningBytes(), base.SigningBytes()) {
		t.Error("SigningBytes depends on the time zone")
	}
}

func TestPolicyValidate(t *testing.T) {
	tests := []struct {
		name string
		ops  map[string]int
		ok   bool
	}{
		{"zero", nil, true},
		{"empty", map[string]int{}, true},
		{"M=2", map[string]int{"user.delete": 2}, true},
		{"M=8", map[string]int{"key.trust": 8}, true},
		{"several", map[string]int{"user.delete": 2, "key.trust": 3, "image.import": 8, "a-b_c.9": 4}, true},
		{"M=1", map[string]int{"user.delete": 1}, false},
		{"M=9", map[string]int{"user.delete": 9}, false},
		{"M=0", map[string]int{"user.delete": 0}, false},
		{"M<0", map[string]int{"user.delete": -2}, false},
		{"one bad among good", map[string]int{"user.delete": 2, "key.trust": 9}, false},
		{"empty name", map[string]int{"": 2}, false},
		{"name 64 bytes", map[string]int{strings.Repeat("a", 64): 2}, true},
		{"name 65 bytes", map[string]int{strings.Repeat("a", 65): 2}, false},
		{"upper case", map[string]int{"User.delete": 2}, false},
		{"space", map[string]int{"user delete": 2}, false},
		{"slash", map[string]int{"user/delete": 2}, false},
		{"non-ASCII", map[string]int{"usér.delete": 2}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Policy{Ops: tt.ops}.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "quorum: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
}

func TestPolicyRequired(t *testing.T) {
	p := Policy{Ops: map[string]int{"user.delete": 3, "broken": 1, "worse": -5}}
	tests := []struct {
		op   string
		want int
	}{
		{"user.delete", 3},
		{"user.create", 0},
		{"", 0},
		{"broken", MinQuorum}, // fails closed on an invalid policy
		{"worse", MinQuorum},
	}
	for _, tt := range tests {
		if got := p.Required(tt.op); got != tt.want {
			t.Errorf("Required(%q) = %d, want %d", tt.op, got, tt.want)
		}
	}
	if got := (Policy{}).Required("user.delete"); got != 0 {
		t.Errorf("zero Policy: Required = %d, want 0", got)
	}
}

// testKey returns a deterministic Ed25519 key for name.
func testKey(tb testing.TB, name string) ed25519.PrivateKey {
	tb.Helper()
	seed := sha256.Sum256([]byte("quorum test key " + name))
	return ed25519.NewKeyFromSeed(seed[:])
}
