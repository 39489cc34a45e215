package device

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// BenchmarkImage measures export and import of a full hsm2m-sized HSM
// (16,666 keys), reporting image bytes per second.
func BenchmarkImage(b *testing.B) {
	src := newDevice(b, stdHW)
	co, cu := initDevice(b, src)
	fillKeys(b, cu, DefaultCapacity)
	benchImage(b, "-16666-keys", co, func() *Device { return newDevice(b, stdHW) })
}

// benchImage measures export by co's device and import into a device
// fresh makes, reporting image bytes per second.
func benchImage(b *testing.B, suffix string, co *Session, fresh func() *Device) {
	img := exportImage(b, co)
	b.Run("export"+suffix, func(b *testing.B) {
		b.SetBytes(int64(len(img)))
		for b.Loop() {
			_, r, err := co.ExportImage(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, r); err != nil {
				b.Fatal(err)
			}
			r.Close()
		}
	})
	b.Run("import"+suffix, func(b *testing.B) {
		dst := fresh()
		b.SetBytes(int64(len(img)))
		for b.Loop() {
			b.StopTimer()
			dst.mu.Lock()
			dst.st = newContents() // empty again, so no login is needed
			dst.mu.Unlock()
			b.StartTimer()
			if _, err := dst.claimImport(context.Background(), bytes.NewReader(img)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkKeyInFullHSM measures one key created in an HSM that holds
// 16,000 keys (AES, EC, RSA and generic secrets as fillKeys makes them),
// durable before it returns, against its floor: one fsync'd write of a
// 4 KiB record.
func BenchmarkKeyInFullHSM(b *testing.B) {
	d := newDevice(b, stdHW)
	_, cu := initDevice(b, d)
	fillKeys(b, cu, 16_000)
	b.Run("fsync-write-4KiB", func(b *testing.B) {
		rec := make([]byte, 4096)
		path := filepath.Join(b.TempDir(), "record")
		for b.Loop() {
			f, err := os.Create(path)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.Write(rec); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
	b.Run("generate-key", func(b *testing.B) {
		if b.N > 600 {
			b.Fatalf("%d keys would not fit: run with -benchtime of at most 600x", b.N)
		}
		for b.Loop() {
			if _, err := cu.GenerateKey(hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkImageMillion measures export and import of an HSM of raised
// capacity holding 1,000,000 AES-256 keys (50,000 with -short), reporting
// image bytes per second.
func BenchmarkImageMillion(b *testing.B) {
	mk := func() *Device {
		d, _, err := Manufacture(filepath.Join(b.TempDir(), "hsm"), ManufactureConfig{Class: stdHW.class, Firmware: stdHW.firmware,
			Capacity: 1 << 20, Manufacturer: authority(b, stdHW.mfr), Operator: authority(b, stdHW.op)}, TestOptions())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { d.Close() })
		return d
	}
	src := mk()
	co, cu := initDevice(b, src)
	n := 1_000_000
	if testing.Short() { // make test: only that it works
		n = 50_000
	}
	specs := make([]hsmcore.KeySpec, n)
	for i := range specs {
		specs[i] = hsmcore.KeySpec{Type: hsmcore.AES, Bits: 256, Encrypt: true, Decrypt: true}
	}
	if _, err := cu.GenerateKeys(specs); err != nil {
		b.Fatal(err)
	}
	benchImage(b, "", co, mk)
}
