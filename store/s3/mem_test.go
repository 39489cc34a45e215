package s3

import (
	"context"
	"io"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/hsmbackup/hsmbackup/internal/miniotest"
	"github.com/hsmbackup/hsmbackup/store"
)

func TestReadPart(t *testing.T) {
	data := make([]byte, 300<<10)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for _, tc := range []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"plain", func(r io.Reader) io.Reader { return r }},
		{"one-byte", iotest.OneByteReader},
		{"half", iotest.HalfReader},
		{"data-err", iotest.DataErrReader},
	} {
		for _, n := range []int{0, 1, 100 << 10, 128 << 10, 300 << 10} {
			r := tc.wrap(&onlyReader{data[:n]})
			var got []byte
			var buf []byte
			for {
				var err error
				buf, err = readPart(r, buf, 128<<10)
				if len(buf) > 128<<10 || cap(buf) > 160<<10 {
					t.Fatalf("%s %d: part of %d bytes, capacity %d", tc.name, n, len(buf), cap(buf))
				}
				got = append(got, buf...)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if string(got) != string(data[:n]) {
				t.Errorf("%s %d: read %d bytes, wrong", tc.name, n, len(got))
			}
		}
	}
	// A small body costs little memory.
	buf, err := readPart(&onlyReader{data[:10]}, nil, 16<<20)
	if err != io.EOF || len(buf) != 10 || cap(buf) > 128<<10 {
		t.Errorf("small body: %d bytes, capacity %d, %v", len(buf), cap(buf), err)
	}
}

type onlyReader struct{ b []byte }

func (r *onlyReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// zeros is an endless stream of zero bytes, n of them.
type zeros struct{ n int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n == 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)), z.n)
	clear(p[:n])
	z.n -= n
	return int(n), nil
}

// TestStreamMemory: a streamed Put holds about a part in memory, not the
// object: 160 MiB in 5 MiB parts, with the live heap sampled throughout.
func TestStreamMemory(t *testing.T) {
	srv := miniotest.Shared(t)
	s := newStore(t, config(t, srv, srv.NewBucket(t, miniotest.BucketOptions{})))
	const size = 160 << 20
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	err := s.Put(context.Background(), "big", &zeros{size}, store.PutOptions{})
	close(stop)
	<-sampled
	if err != nil {
		t.Fatal(err)
	}
	grew := int64(peak.Load()) - int64(base)
	t.Logf("streamed %d MiB; live heap grew at most %.1f MiB", size>>20, float64(grew)/(1<<20))
	if grew > 6*MinPartSize { // a part, plus garbage the GC has not yet taken
		t.Errorf("live heap grew %d MiB to stream %d MiB", grew>>20, size>>20)
	}
	oi, err := s.Stat(context.Background(), "big")
	if err != nil || oi.Size != size {
		t.Errorf("stat: %+v, %v", oi, err)
	}
}
