package device

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/device/internal/stream"
)

// fillKeys creates n keys for cu: mostly AES-256, with every other type
// represented, all usable for what their type allows.
func fillKeys(t testing.TB, cu *Session, n int) []hsmcore.KeyInfo {
	t.Helper()
	specs := make([]hsmcore.KeySpec, 0, n)
	for i := range n {
		var s hsmcore.KeySpec
		switch {
		case i < 3:
			s = hsmcore.KeySpec{Type: hsmcore.RSA, Bits: 2048, Sign: true, Verify: true}
		case i < 40:
			s = hsmcore.KeySpec{Type: hsmcore.EC, Curve: []string{"P-256", "P-384"}[i%2], Sign: true, Verify: true}
		case i < 200:
			s = hsmcore.KeySpec{Type: hsmcore.GenericSecret, Bits: 256}
		default:
			s = hsmcore.KeySpec{Type: hsmcore.AES, Bits: []int{128, 192, 256}[i%3], Encrypt: true, Decrypt: true, Wrap: i%7 == 0, Unwrap: i%7 == 0}
		}
		s.Label = fmt.Sprintf("key-%d", i)
		s.Extractable = i%2 == 0
		specs = append(specs, s)
	}
	infos, err := cu.GenerateKeys(specs)
	if err != nil {
		t.Fatal(err)
	}
	return infos
}

// TestImageRoundTripFullHSM fills an HSM to CloudHSM hsm2m's limit, moves
// its image into a fresh HSM of the same hardware, and uses every key
// there.
func TestImageRoundTripFullHSM(t *testing.T) {
	src := newDevice(t, stdHW)
	co, cu := initDevice(t, src)
	initCluster(t, src, "cluster-a")
	keys := fillKeys(t, cu, DefaultCapacity)
	if _, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256}); !errors.Is(err, hsmcore.ErrFull) {
		t.Fatalf("key beyond capacity: got %v, want ErrFull", err)
	}
	img := exportImage(t, co)

	dst := newDevice(t, stdHW)
	h, err := dst.claimImport(context.Background(), bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	if h.Source.Serial != src.Identity().Serial || h.ClusterID != "cluster-a" || dst.ClusterID() != "cluster-a" || !dst.ClusterInitialized() {
		t.Fatalf("header names %s in %s", h.Source.Serial, h.ClusterID)
	}
	// The restore survives a restart of the target.
	dst.Close()
	dst, err = Open(dst.dir, TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	cu2 := login(t, dst, "alice")
	got, err := cu2.Keys()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(keys) {
		t.Fatalf("restored %d keys, want %d", len(got), len(keys))
	}
	msg := []byte("restored keys still work")
	for i, k := range keys {
		if g := got[i]; g.Handle != k.Handle || g.KCV != k.KCV || g.Label != k.Label || g.Extractable != k.Extractable {
			t.Fatalf("key %d: restored %+v, want %+v", k.Handle, g, k)
		}
		switch k.Type {
		case hsmcore.AES:
			ct, err := cu.Encrypt(k.Handle, msg, nil)
			if err != nil {
				t.Fatal(err)
			}
			pt, err := cu2.Decrypt(k.Handle, ct, nil)
			if err != nil || !bytes.Equal(pt, msg) {
				t.Fatalf("key %d: decrypt on restored HSM: %v", k.Handle, err)
			}
		case hsmcore.EC, hsmcore.RSA:
			sig, err := cu2.Sign(k.Handle, msg)
			if err != nil {
				t.Fatal(err)
			}
			if err := hsmcore.VerifySignature(k, msg, sig); err != nil {
				t.Fatalf("key %d: signature from restored HSM: %v", k.Handle, err)
			}
		}
	}
}

// imageFixture is a source HSM with enough keys for a several-chunk image,
// the image, and an empty target of the same hardware.
type imageFixture struct {
	img     []byte
	hdrLen  int
	chunks  int
	target  *Device
	sealed  []byte
	content []byte
}

func newImageFixture(t *testing.T) *imageFixture {
	t.Helper()
	src := newDevice(t, stdHW)
	co, cu := initDevice(t, src)
	fillKeys(t, cu, 5000)
	f := &imageFixture{img: exportImage(t, co), target: newDevice(t, stdHW)}
	_, raw, err := hsmcore.ReadImageHeader(bytes.NewReader(f.img))
	if err != nil {
		t.Fatal(err)
	}
	f.hdrLen = len(raw)
	body := len(f.img) - f.hdrLen
	f.chunks = (body + stream.ChunkSize + stream.Overhead - 1) / (stream.ChunkSize + stream.Overhead)
	if f.chunks < 3 {
		t.Fatalf("image has %d chunks; the test needs at least 3", f.chunks)
	}
	// A target that already holds something, so "unchanged" means something.
	tco, tcu := initDevice(t, f.target)
	fillKeys(t, tcu, 5)
	tcu.Logout()
	f.sealed, f.content = stateBytes(t, f.target), contentsBytes(t, f.target)
	t.Cleanup(func() { tco.Logout() })
	return f
}

func (f *imageFixture) chunkOffset(i int) int { return f.hdrLen + i*(stream.ChunkSize+stream.Overhead) }

// refuse imports img into the fixture's target as its crypto officer and
// requires err to match want and the target to be unchanged.
func (f *imageFixture) refuse(t *testing.T, img []byte, want error) {
	t.Helper()
	co := login(t, f.target, "admin")
	_, err := f.target.ImportImage(context.Background(), co, bytes.NewReader(img))
	if !errors.Is(err, want) {
		t.Fatalf("import: got %v, want %v", err, want)
	}
	assertUnchanged(t, f.target, f.sealed, f.content)
}

func TestImportRefusesDamagedImages(t *testing.T) {
	f := newImageFixture(t)
	t.Run("accepts the intact image", func(t *testing.T) {
		// On a throwaway copy of the target's hardware, so the fixture's
		// target stays as it was for the other cases.
		d := newDevice(t, stdHW)
		if _, err := d.claimImport(context.Background(), bytes.NewReader(f.img)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("byte flips at sampled offsets", func(t *testing.T) {
		offsets := []int{0, 8, 9, 12, 13, f.hdrLen - 1, f.hdrLen, len(f.img) - 1}
		for i := 0; i < f.chunks; i++ {
			offsets = append(offsets, f.chunkOffset(i), f.chunkOffset(i)+stream.ChunkSize+stream.Overhead-1)
		}
		for off := 0; off < len(f.img); off += 7919 {
			offsets = append(offsets, off)
		}
		for _, off := range offsets {
			if off >= len(f.img) {
				continue
			}
			img := bytes.Clone(f.img)
			img[off] ^= 0x40
			co := login(t, f.target, "admin")
			if _, err := f.target.ImportImage(context.Background(), co, bytes.NewReader(img)); err == nil {
				t.Fatalf("flip at offset %d accepted", off)
			}
		}
		assertUnchanged(t, f.target, f.sealed, f.content)
	})
	t.Run("body flip is tampering", func(t *testing.T) {
		img := bytes.Clone(f.img)
		img[f.chunkOffset(1)+100] ^= 1
		f.refuse(t, img, hsmcore.ErrTampered)
	})
	t.Run("truncation at every chunk boundary", func(t *testing.T) {
		for i := 0; i < f.chunks; i++ {
			f.refuse(t, f.img[:f.chunkOffset(i)], hsmcore.ErrTruncated)
		}
	})
	t.Run("truncation mid-chunk", func(t *testing.T) {
		f.refuse(t, f.img[:f.chunkOffset(1)+500], hsmcore.ErrTampered)
		f.refuse(t, f.img[:len(f.img)-1], hsmcore.ErrTampered)
	})
	t.Run("truncation in the header", func(t *testing.T) {
		for _, n := range []int{0, 5, 13, f.hdrLen - 1} {
			f.refuse(t, f.img[:n], hsmcore.ErrMalformed)
		}
	})
	t.Run("chunk reordering", func(t *testing.T) {
		a, b := f.chunkOffset(0), f.chunkOffset(1)
		n := stream.ChunkSize + stream.Overhead
		img := bytes.Clone(f.img)
		copy(img[a:a+n], f.img[b:b+n])
		copy(img[b:b+n], f.img[a:a+n])
		f.refuse(t, img, hsmcore.ErrTampered)
	})
	t.Run("trailing data", func(t *testing.T) {
		// The last chunk is short, so anything appended joins it and
		// breaks its tag.
		f.refuse(t, append(bytes.Clone(f.img), 0), hsmcore.ErrTampered)
		f.refuse(t, append(bytes.Clone(f.img), make([]byte, stream.ChunkSize+stream.Overhead)...), hsmcore.ErrTampered)
	})
	t.Run("header spliced from another image", func(t *testing.T) {
		co := login(t, f.target, "admin")
		other := exportImage(t, co) // same hardware, different EBK and ID
		_, raw, err := hsmcore.ReadImageHeader(bytes.NewReader(other))
		if err != nil {
			t.Fatal(err)
		}
		f.refuse(t, append(bytes.Clone(raw), f.img[f.hdrLen:]...), hsmcore.ErrTampered)
	})
	t.Run("header field edited", func(t *testing.T) {
		// The cluster id is authenticated through the AAD only.
		h, _, _ := hsmcore.ReadImageHeader(bytes.NewReader(f.img))
		h.ClusterID = "forged"
		raw, err := h.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		f.refuse(t, append(raw, f.img[f.hdrLen:]...), hsmcore.ErrTampered)
	})
}

func TestImportRefusesOtherHardware(t *testing.T) {
	src := newDevice(t, stdHW)
	co, cu := initDevice(t, src)
	fillKeys(t, cu, 10)
	img := exportImage(t, co)

	// A same-named operator whose AKBK differs: only the PBK tells.
	impostor, err := NewAuthority(Operator, "cloud")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		hw   hw
		op   *Authority
		want error
	}{
		{"other class", hw{"hsm1.medium", "acme", "cloud", "2.1.0", false}, nil, hsmcore.ErrHardwareMismatch},
		{"other manufacturer", hw{"hsm2m.medium", "zeta", "cloud", "2.1.0", false}, nil, hsmcore.ErrHardwareMismatch},
		{"other operator", hw{"hsm2m.medium", "acme", "other", "2.1.0", false}, nil, hsmcore.ErrHardwareMismatch},
		{"same names, other operator key", stdHW, impostor, hsmcore.ErrHardwareMismatch},
		{"older firmware", hw{"hsm2m.medium", "acme", "cloud", "2.0.9", false}, nil, hsmcore.ErrFirmwareDowngrade},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			op := c.op
			if op == nil {
				op = authority(t, c.hw.op)
			}
			d, _, err := Manufacture(t.TempDir()+"/hsm", ManufactureConfig{Class: c.hw.class, Firmware: c.hw.firmware,
				Manufacturer: authority(t, c.hw.mfr), Operator: op}, TestOptions())
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			sealed, content := stateBytes(t, d), contentsBytes(t, d)
			if _, err := d.claimImport(context.Background(), bytes.NewReader(img)); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			assertUnchanged(t, d, sealed, content)
		})
	}
	t.Run("newer firmware accepts", func(t *testing.T) {
		d := newDevice(t, hw{"hsm2m.medium", "acme", "cloud", "2.10.0", false})
		if _, err := d.claimImport(context.Background(), bytes.NewReader(img)); err != nil {
			t.Fatal(err)
		}
	})
}

func TestImportFIPSMode(t *testing.T) {
	fipsHW := stdHW
	fipsHW.fips = true
	src := newDevice(t, fipsHW)
	co, _ := initDevice(t, src)
	img := exportImage(t, co)

	plain := newDevice(t, stdHW)
	sealed, content := stateBytes(t, plain), contentsBytes(t, plain)
	if _, err := plain.claimImport(context.Background(), bytes.NewReader(img)); !errors.Is(err, hsmcore.ErrFIPSMode) {
		t.Fatalf("FIPS image into non-FIPS HSM: got %v, want ErrFIPSMode", err)
	}
	assertUnchanged(t, plain, sealed, content)

	if _, err := newDevice(t, fipsHW).claimImport(context.Background(), bytes.NewReader(img)); err != nil {
		t.Fatalf("FIPS into FIPS: %v", err)
	}
	// Non-FIPS into FIPS is allowed, as in CloudHSM.
	co2, _ := initDevice(t, plain)
	if _, err := newDevice(t, fipsHW).claimImport(context.Background(), bytes.NewReader(exportImage(t, co2))); err != nil {
		t.Fatalf("non-FIPS into FIPS: %v", err)
	}
}

func TestImportAuthorization(t *testing.T) {
	src := newDevice(t, stdHW)
	co, cu := initDevice(t, src)
	img := exportImage(t, co)

	if _, _, err := cu.ExportImage(context.Background()); !errors.Is(err, hsmcore.ErrPermission) {
		t.Fatalf("crypto user export: got %v, want ErrPermission", err)
	}
	target := newDevice(t, stdHW)
	tco, tcu := initDevice(t, target)
	sealed, content := stateBytes(t, target), contentsBytes(t, target)
	for name, s := range map[string]*Session{"no session": nil, "crypto user": tcu, "other device's officer": co} {
		if _, err := target.ImportImage(context.Background(), s, bytes.NewReader(img)); !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("%s: got %v, want ErrPermission", name, err)
		}
	}
	assertUnchanged(t, target, sealed, content)
	if _, err := target.ImportImage(context.Background(), tco, bytes.NewReader(img)); err != nil {
		t.Fatal(err)
	}
}

func TestExportCancel(t *testing.T) {
	d := newDevice(t, stdHW)
	co, cu := initDevice(t, d)
	fillKeys(t, cu, 2000)
	ctx, cancel := context.WithCancel(context.Background())
	_, r, err := co.ExportImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 1000)
	if _, err := r.Read(buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := bytes.NewBuffer(nil).ReadFrom(r); !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel: got %v, want context.Canceled", err)
	}
}

func TestExportedImageHeader(t *testing.T) {
	d := newDevice(t, stdHW)
	co, _ := initDevice(t, d)
	h, r, err := co.ExportImage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	id := d.Identity()
	if h.Source != id || h.PBKFingerprint != d.PBKFingerprint() || len(h.WrappedEBK) != 40 {
		t.Fatalf("header %+v does not describe %+v", h, id)
	}
	raw, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	h2, raw2, err := hsmcore.ReadImageHeader(bytes.NewReader(raw))
	if err != nil || !bytes.Equal(raw, raw2) || h2.Source != h.Source || !h2.Created.Equal(h.Created) {
		t.Fatalf("header does not round-trip: %v", err)
	}
}

// Sessions opened before an import end with it, even for a user of the
// same name in the image.
func TestImportEndsEarlierSessions(t *testing.T) {
	src := newDevice(t, stdHW)
	co, _ := initDevice(t, src)
	img := exportImage(t, co)
	target := newDevice(t, stdHW)
	tco, tcu := initDevice(t, target)
	if _, err := target.ImportImage(context.Background(), tco, bytes.NewReader(img)); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Session{tco, tcu} {
		if _, err := s.Users(); !errors.Is(err, hsmcore.ErrPermission) {
			t.Fatalf("%s's session after import: got %v, want ErrPermission", s.user, err)
		}
	}
	if _, err := login(t, target, "admin").Users(); err != nil {
		t.Fatal(err)
	}
}

func TestChunkSizeIsTheContracts(t *testing.T) {
	if stream.ChunkSize != hsmcore.ImageChunkSize {
		t.Fatalf("stream.ChunkSize = %d, hsmcore.ImageChunkSize = %d", stream.ChunkSize, hsmcore.ImageChunkSize)
	}
}
