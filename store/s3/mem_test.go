package s3

import (
	"context"
	"errors"
	"io"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/hsmbackup/hsmbackup/internal/miniotest"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/minio/minio-go/v7"
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

// gated is a body whose bytes after the first gate bytes come only once
// ready says so (or, after a while, an error): a producer, like the HSM's
// export, that is still writing when the upload should already be under
// way.
type gated struct {
	r     io.Reader
	gate  int64
	ready func() bool
	err   error // returned once the body is read to its end, if set
}

func (g *gated) Read(p []byte) (int, error) {
	if g.gate == 0 {
		deadline := time.Now().Add(20 * time.Second)
		for !g.ready() {
			if time.Now().After(deadline) {
				return 0, errors.New("the upload had not started while the body was still being written")
			}
			time.Sleep(10 * time.Millisecond)
		}
		g.gate = -1
	}
	if g.gate > 0 && int64(len(p)) > g.gate {
		p = p[:g.gate]
	}
	n, err := g.r.Read(p)
	if g.gate > 0 {
		g.gate -= int64(n)
	}
	if err == io.EOF && g.err != nil {
		return n, g.err
	}
	return n, err
}

// TestStreamOverlapsUpload: a streamed Put sends its first part, S3's
// smallest, while the rest of the body is still to come (the body waits,
// mid-way, until the server holds that part), with the default part size;
// a body that fails later leaves nothing listed and no upload behind.
func TestStreamOverlapsUpload(t *testing.T) {
	srv := miniotest.Shared(t)
	cfg := config(t, srv, srv.NewBucket(t, miniotest.BucketOptions{}))
	cfg.PartSize = DefaultPartSize
	s := newStore(t, cfg)
	ctx := context.Background()
	partUploaded := func(key string) func() bool {
		return func() bool {
			core := minio.Core{Client: s.client}
			for u := range s.client.ListIncompleteUploads(ctx, s.bucket, s.prefix+key, true) {
				if u.Err != nil {
					continue
				}
				lp, err := core.ListObjectParts(ctx, s.bucket, s.prefix+key, u.UploadID, 0, 10)
				if err == nil && len(lp.ObjectParts) > 0 {
					return true
				}
			}
			return false
		}
	}
	const size = MinPartSize + DefaultPartSize + 1<<20 // three parts
	body := &gated{r: &zeros{size}, gate: MinPartSize + 1, ready: partUploaded("image")}
	if err := s.Put(ctx, "image", body, store.PutOptions{CreateOnly: true}); err != nil {
		t.Fatal(err)
	}
	if oi, err := s.Stat(ctx, "image"); err != nil || oi.Size != size {
		t.Fatalf("stat: %+v, %v", oi, err)
	}

	broken := &gated{r: &zeros{size}, gate: MinPartSize + 1, ready: partUploaded("broken"), err: errors.New("export failed")}
	if err := s.Put(ctx, "broken", broken, store.PutOptions{CreateOnly: true}); err == nil || !strings.Contains(err.Error(), "export failed") {
		t.Fatalf("a body that fails: %v", err)
	}
	if _, err := s.Stat(ctx, "broken"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a failed put is there: %v", err)
	}
	noUploadsLeft(t, s, "broken")
}
