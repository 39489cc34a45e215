package device

import (
	"bytes"
	"context"
	"io"
	"testing"
)

// BenchmarkImage measures export and import of a full hsm2m-sized HSM
// (16,666 keys), reporting image bytes per second.
func BenchmarkImage(b *testing.B) {
	src := newDevice(b, stdHW)
	co, cu := initDevice(b, src)
	fillKeys(b, cu, DefaultCapacity)
	img := exportImage(b, co)
	b.Run("export-16666-keys", func(b *testing.B) {
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
	b.Run("import-16666-keys", func(b *testing.B) {
		dst := newDevice(b, stdHW)
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
