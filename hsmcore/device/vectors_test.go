package device

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/keywrap"
)

var update = flag.Bool("update", false, "rewrite the version 2 image test vectors in testdata/image/v2 (testdata/image/v1, made by the version 1 encoder, is kept as it is)")

// imageVector is one file of testdata/image: an image, the hardware
// secrets of a target HSM, and what importing the image into it must give.
type imageVector struct {
	Description        string `json:"description"`
	ManufacturerSecret string `json:"manufacturer_secret"` // hex; MKBK = KDF(secret, "hsmcore MKBK v1", class)
	OperatorSecret     string `json:"operator_secret"`     // hex; AKBK = KDF(secret, "hsmcore AKBK v1", "")
	TargetJSON         struct {
		Class, Manufacturer, Operator, Firmware string
		FIPS                                    bool
	} `json:"target"`
	PBK    string `json:"pbk,omitempty"` // hex, for implementers: what the target derives
	EBK    string `json:"ebk,omitempty"` // hex, for implementers: what the header's wrapped EBK holds
	Image  string `json:"image"`         // hex
	Expect string `json:"expect"`        // "ok" or the sentinel's name
}

var vectorErrors = map[string]error{
	"ErrHardwareMismatch":   hsmcore.ErrHardwareMismatch,
	"ErrTampered":           hsmcore.ErrTampered,
	"ErrTruncated":          hsmcore.ErrTruncated,
	"ErrTrailingData":       hsmcore.ErrTrailingData,
	"ErrFirmwareDowngrade":  hsmcore.ErrFirmwareDowngrade,
	"ErrFIPSMode":           hsmcore.ErrFIPSMode,
	"ErrMalformed":          hsmcore.ErrMalformed,
	"ErrUnsupportedVersion": hsmcore.ErrUnsupportedVersion,
}

// vectorDevice makes a device whose authorities have the given secrets.
func vectorDevice(t *testing.T, mfrSecret, opSecret []byte, target hw) *Device {
	t.Helper()
	mfr, op := *authority(t, "acme"), *authority(t, "cloud")
	mfr.name, op.name = target.mfr, target.op
	mfr.secret, op.secret = mfrSecret, opSecret
	d, _, err := Manufacture(filepath.Join(t.TempDir(), "hsm"), ManufactureConfig{
		Class: target.class, Firmware: target.firmware, FIPS: target.fips, Serial: "VECTOR-TARGET",
		Manufacturer: &mfr, Operator: &op,
	}, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestImageVectors imports every vector's image into its target and
// checks the outcome. With -update it first regenerates the vectors.
func TestImageVectors(t *testing.T) {
	if *update {
		writeImageVectors(t)
	}
	files, err := filepath.Glob("testdata/image/*/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no vectors in testdata/image: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(filepath.Dir(file))+"/"+filepath.Base(file), func(t *testing.T) {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var v imageVector
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatal(err)
			}
			tj := v.TargetJSON
			d := vectorDevice(t, mustHex(t, v.ManufacturerSecret), mustHex(t, v.OperatorSecret),
				hw{tj.Class, tj.Manufacturer, tj.Operator, tj.Firmware, tj.FIPS})
			if v.PBK != "" && hex.EncodeToString(d.pbk) != v.PBK {
				t.Fatalf("target derives PBK %x, vector says %s", d.pbk, v.PBK)
			}
			_, err = d.claimImport(context.Background(), bytes.NewReader(mustHex(t, v.Image)))
			if v.Expect == "ok" {
				if err != nil {
					t.Fatalf("%s: %v", v.Description, err)
				}
				s := login(t, d, "vector-cu")
				keys, err := s.Keys()
				if err != nil || len(keys) != 1 || keys[0].KCV != kcv(hsmcore.AES, make([]byte, 32), nil) {
					t.Fatalf("restored keys %+v, %v", keys, err)
				}
				return
			}
			want := vectorErrors[v.Expect]
			if want == nil {
				t.Fatalf("unknown expectation %q", v.Expect)
			}
			if !errors.Is(err, want) {
				t.Fatalf("%s: got %v, want %s", v.Description, err, v.Expect)
			}
		})
	}
}

// writeImageVectors builds a deterministic image (fixed secrets, EBK, ID,
// time and contents) and derives the failure cases from it.
func writeImageVectors(t *testing.T) {
	mfrSecret := bytes.Repeat([]byte{0x11}, 32)
	opSecret := bytes.Repeat([]byte{0x22}, 32)
	otherOpSecret := bytes.Repeat([]byte{0x33}, 32)
	target := hw{"hsm2m.medium", "acme", "cloud", "2.1.0", false}
	src := vectorDevice(t, mfrSecret, opSecret, target)

	c := newContents()
	c.NextHandle = 2
	// Password of vector-cu: "correct horse battery", PBKDF2 cost 1000.
	salt := bytes.Repeat([]byte{0x5a}, 16)
	c.Users["vector-cu"] = &userRecord{Name: "vector-cu", Role: hsmcore.CryptoUser, Salt: salt, Hash: passwordHash(testPassword, salt, 1000), Iterations: 1000}
	k, err := newKeyRecord(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Label: "vector-key", Encrypt: true, Decrypt: true}, make([]byte, 32), "vector-cu", true)
	if err != nil {
		t.Fatal(err)
	}
	k.Handle = 1
	c.Keys.Set(1, k)

	ebk := bytes.Repeat([]byte{0x44}, 32)
	wrapped, err := keywrap.Wrap(src.pbk, ebk)
	if err != nil {
		t.Fatal(err)
	}
	h := &hsmcore.ImageHeader{ImageID: [16]byte{0x01, 0x02, 0x03}, Created: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC),
		Source: src.Identity(), PBKFingerprint: pbkFingerprint(src.pbk), WrappedEBK: wrapped}
	h.Source.Serial = "VECTOR-SOURCE"
	raw, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var img bytes.Buffer
	if err := writeImage(context.Background(), &img, raw, ebk, c); err != nil {
		t.Fatal(err)
	}
	good := img.Bytes()
	flip := func(off int) []byte { b := bytes.Clone(good); b[off] ^= 1; return b }
	ver3 := bytes.Clone(good)
	ver3[8] = 3

	tj := func(h hw) (v struct {
		Class, Manufacturer, Operator, Firmware string
		FIPS                                    bool
	}) {
		v.Class, v.Manufacturer, v.Operator, v.Firmware, v.FIPS = h.class, h.mfr, h.op, h.firmware, h.fips
		return v
	}
	older := target
	older.firmware = "2.0.0"
	cases := map[string]imageVector{
		"01-valid":             {Description: "a genuine image into matching hardware", Image: hex.EncodeToString(good), Expect: "ok", PBK: hex.EncodeToString(src.pbk), EBK: hex.EncodeToString(ebk)},
		"02-body-byte-flipped": {Description: "one bit of the first body chunk flipped", Image: hex.EncodeToString(flip(len(raw) + 10)), Expect: "ErrTampered"},
		"03-header-byte-flipped": {Description: "one bit of the source serial in the header flipped (bound by the AAD)",
			Image: hex.EncodeToString(flip(bytes.Index(good, []byte("VECTOR-SOURCE")))), Expect: "ErrTampered"},
		"04-truncated-after-header": {Description: "the body removed", Image: hex.EncodeToString(good[:len(raw)]), Expect: "ErrTruncated"},
		"05-trailing-byte":          {Description: "one byte appended", Image: hex.EncodeToString(append(bytes.Clone(good), 0)), Expect: "ErrTampered"},
		"06-bad-magic":              {Description: "magic changed", Image: hex.EncodeToString(flip(0)), Expect: "ErrMalformed"},
		"07-version-3":              {Description: "version byte 3", Image: hex.EncodeToString(ver3), Expect: "ErrUnsupportedVersion"},
		"08-other-operator-key":     {Description: "same names, different operator secret: PBK fingerprint differs", Image: hex.EncodeToString(good), Expect: "ErrHardwareMismatch", OperatorSecret: hex.EncodeToString(otherOpSecret)},
		"09-older-firmware":         {Description: "target firmware 2.0.0 older than the source's 2.1.0", Image: hex.EncodeToString(good), Expect: "ErrFirmwareDowngrade"},
	}
	if err := os.MkdirAll("testdata/image/v2", 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range cases {
		v.ManufacturerSecret = hex.EncodeToString(mfrSecret)
		if v.OperatorSecret == "" {
			v.OperatorSecret = hex.EncodeToString(opSecret)
		}
		v.TargetJSON = tj(target)
		if name == "09-older-firmware" {
			v.TargetJSON = tj(older)
		}
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("testdata/image/v2", name+".json"), append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
