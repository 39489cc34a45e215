// Package storetest is the conformance suite every store.Store passes:
// Run(t, newStore) checks the contract written on store.Store, through the
// store's methods only. store/file runs it in plain `go test`; store/s3
// against a real MinIO.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/hsmbackup/hsmbackup/store"
)

// BigSize is the largest object the suite writes: just over 5 MiB, so that
// a backend configured with S3's smallest part size (5 MiB) crosses a part
// boundary.
const BigSize = 5<<20 + 1

// Run runs the suite. newStore returns an empty store (a new directory, a
// new prefix) for one subtest; subtests run in parallel, so it is called
// concurrently.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"InputReaders", testInputReaders},
		{"NotFound", testNotFound},
		{"Overwrite", testOverwrite},
		{"InvalidKeys", testInvalidKeys},
		{"List", testList},
		{"ListStop", testListStop},
		{"Delete", testDelete},
		{"CreateOnly", testCreateOnly},
		{"ConcurrentCreateOnly", testConcurrentCreateOnly},
		{"IfMatch", testIfMatch},
		{"ConcurrentIfMatch", testConcurrentIfMatch},
		{"ConcurrentPut", testConcurrentPut},
		{"CancelledBefore", testCancelledBefore},
		{"CancelledMidway", testCancelledMidway},
		{"FailedReader", testFailedReader},
		{"FailedReplace", testFailedReplace},
		{"InvisibleUntilDone", testInvisibleUntilDone},
		{"GetCancelled", testGetCancelled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore(t))
		})
	}
}

// Data returns n pseudo-random bytes, the same for the same seed.
func Data(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	r.Read(b)
	return b
}

// streamOnly hides everything but Read, so that the store cannot learn
// the length: it must stream.
type streamOnly struct{ r io.Reader }

func (s streamOnly) Read(p []byte) (int, error) { return s.r.Read(p) }

// Put stores data at key through a reader that hides its length.
func Put(tb testing.TB, s store.Store, key string, data []byte, opts store.PutOptions) {
	tb.Helper()
	if err := s.Put(context.Background(), key, streamOnly{bytes.NewReader(data)}, opts); err != nil {
		tb.Fatalf("put %s: %v", key, err)
	}
}

// Read returns the object at key.
func Read(tb testing.TB, s store.Store, key string) []byte {
	tb.Helper()
	r, err := s.Get(context.Background(), key)
	if err != nil {
		tb.Fatalf("get %s: %v", key, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		tb.Fatalf("read %s: %v", key, err)
	}
	return b
}

// Keys lists the keys under prefix.
func Keys(tb testing.TB, s store.Store, prefix string) []string {
	tb.Helper()
	var keys []string
	err := s.List(context.Background(), prefix, func(oi store.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	})
	if err != nil {
		tb.Fatalf("list %q: %v", prefix, err)
	}
	return keys
}

// Absent fails tb unless key is neither statable, gettable nor listed.
func Absent(tb testing.TB, s store.Store, key string) {
	tb.Helper()
	ctx := context.Background()
	if _, err := s.Stat(ctx, key); !errors.Is(err, store.ErrNotFound) {
		tb.Errorf("stat %s: got %v, want ErrNotFound", key, err)
	}
	if r, err := s.Get(ctx, key); !errors.Is(err, store.ErrNotFound) {
		if err == nil {
			r.Close()
		}
		tb.Errorf("get %s: got %v, want ErrNotFound", key, err)
	}
	if keys := Keys(tb, s, ""); slices.Contains(keys, key) {
		tb.Errorf("%s is listed: %q", key, keys)
	}
}

// check fails tb unless the object at key is exactly want, read through
// iotest.TestReader when it is small.
func check(tb testing.TB, s store.Store, key string, want []byte) {
	tb.Helper()
	ctx := context.Background()
	oi, err := s.Stat(ctx, key)
	if err != nil {
		tb.Fatalf("stat %s: %v", key, err)
	}
	if oi.Key != key || oi.Size != int64(len(want)) {
		tb.Errorf("stat %s: got key %q size %d, want size %d", key, oi.Key, oi.Size, len(want))
	}
	if d := time.Since(oi.ModTime); d < -time.Hour || d > time.Hour {
		tb.Errorf("stat %s: modification time %v is %v from now", key, oi.ModTime, d)
	}
	r, err := s.Get(ctx, key)
	if err != nil {
		tb.Fatalf("get %s: %v", key, err)
	}
	defer r.Close()
	if len(want) > iotestMax {
		got, err := io.ReadAll(r)
		if err != nil {
			tb.Fatalf("read %s: %v", key, err)
		}
		if !bytes.Equal(got, want) {
			tb.Errorf("get %s: got %d bytes, not the %d put", key, len(got), len(want))
		}
		return
	}
	// Only Read is the contract: hide any ReadAt or Seek the reader has
	// (iotest would call ReadAt once per byte, a request each on S3).
	if err := iotest.TestReader(streamOnly{r}, want); err != nil {
		msg := err.Error() // it quotes the contents: keep it short
		if len(msg) > 200 {
			msg = msg[:200] + "…"
		}
		tb.Errorf("get %s (%d bytes): %s", key, len(want), msg)
	}
}

// iotestMax is the largest object read through iotest.TestReader, whose
// small reads are slow under the race detector.
const iotestMax = 1 << 20

func testRoundTrip(t *testing.T, s store.Store) {
	for i, n := range []int{0, 1, 4095, 64<<10 + 3, BigSize} {
		data := Data(uint64(i), n)
		bodies := map[string]func() io.Reader{
			"stream": func() io.Reader { return streamOnly{bytes.NewReader(data)} },
			"sized":  func() io.Reader { return bytes.NewReader(data) },
		}
		for kind, body := range bodies {
			key := fmt.Sprintf("rt/%s/%d", kind, n)
			if err := s.Put(context.Background(), key, body(), store.PutOptions{}); err != nil {
				t.Fatalf("put %s: %v", key, err)
			}
			check(t, s, key, data)
		}
	}
}

// testInputReaders feeds Put readers that return short reads and data
// together with io.EOF.
func testInputReaders(t *testing.T, s store.Store) {
	data := Data(7, 64<<10+3)
	readers := map[string]func(io.Reader) io.Reader{
		"one-byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data-err": iotest.DataErrReader,
	}
	for name, wrap := range readers {
		for _, n := range []int{1, 4095, len(data)} {
			key := fmt.Sprintf("in/%s/%d", name, n)
			if err := s.Put(context.Background(), key, wrap(bytes.NewReader(data[:n])), store.PutOptions{}); err != nil {
				t.Fatalf("put %s: %v", key, err)
			}
			check(t, s, key, data[:n])
		}
	}
}

func testNotFound(t *testing.T, s store.Store) {
	ctx := context.Background()
	Absent(t, s, "missing")
	Absent(t, s, "no/such/object")
	if err := s.Delete(ctx, "missing"); err != nil {
		t.Errorf("delete of a missing key: %v", err)
	}
	if keys := Keys(t, s, ""); len(keys) != 0 {
		t.Errorf("a new store lists %q", keys)
	}
	if keys := Keys(t, s, "no/"); len(keys) != 0 {
		t.Errorf("a new store lists %q", keys)
	}
}

func testOverwrite(t *testing.T, s store.Store) {
	Put(t, s, "k", []byte("first, longer"), store.PutOptions{})
	Put(t, s, "k", []byte("second"), store.PutOptions{})
	check(t, s, "k", []byte("second"))
}

// InvalidKeys are keys every store refuses.
var InvalidKeys = []string{
	"", "/", "/a", "a/", "a//b", ".", "..", "./a", "a/./b", "../a", "a/..", "a/../b",
	`a\b`, "a\x00b", "a\nb", "\xff", strings.Repeat("k", store.MaxKeyLen+1),
}

func testInvalidKeys(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, key := range InvalidKeys {
		if err := s.Put(ctx, key, strings.NewReader("x"), store.PutOptions{}); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("put %q: got %v, want ErrInvalidKey", key, err)
		}
		if err := s.Put(ctx, key, strings.NewReader("x"), store.PutOptions{CreateOnly: true}); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("create %q: got %v, want ErrInvalidKey", key, err)
		}
		if _, err := s.Get(ctx, key); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("get %q: got %v, want ErrInvalidKey", key, err)
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("stat %q: got %v, want ErrInvalidKey", key, err)
		}
		if err := s.Delete(ctx, key); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("delete %q: got %v, want ErrInvalidKey", key, err)
		}
	}
	for _, prefix := range []string{"/", "/a", "a//", "../", "a/../", "\xff", `a\`} {
		err := s.List(ctx, prefix, func(store.ObjectInfo) error { return nil })
		if !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("list %q: got %v, want ErrInvalidKey", prefix, err)
		}
	}
	if keys := Keys(t, s, ""); len(keys) != 0 {
		t.Errorf("invalid keys left objects: %q", keys)
	}
}

func testList(t *testing.T, s store.Store) {
	// Byte order puts "a-c" (0x2d) before "a/b" (0x2f): a store that walks
	// directories must still sort keys as strings.
	keys := []string{"b", "a/b2/c", "a-c", "ab/x", "a/b", "a/b2/d", "é/x", "a/.hidden"}
	sizes := map[string]int64{}
	for i, k := range keys {
		Put(t, s, k, Data(uint64(i), i*3), store.PutOptions{})
		sizes[k] = int64(i * 3)
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"", []string{"a-c", "a/.hidden", "a/b", "a/b2/c", "a/b2/d", "ab/x", "b", "é/x"}},
		{"a", []string{"a-c", "a/.hidden", "a/b", "a/b2/c", "a/b2/d", "ab/x"}},
		{"a/", []string{"a/.hidden", "a/b", "a/b2/c", "a/b2/d"}},
		{"a/b", []string{"a/b", "a/b2/c", "a/b2/d"}},
		{"a/b2/", []string{"a/b2/c", "a/b2/d"}},
		{"a/b2/d", []string{"a/b2/d"}},
		{"a/.", []string{"a/.hidden"}},
		{"ab", []string{"ab/x"}},
		{"é", []string{"é/x"}},
		{"c", nil},
		{"a/b2/d/", nil},
		{"zz/top/", nil},
	} {
		var got []string
		err := s.List(context.Background(), tc.prefix, func(oi store.ObjectInfo) error {
			got = append(got, oi.Key)
			if oi.Size != sizes[oi.Key] {
				t.Errorf("list %q: %s has size %d, want %d", tc.prefix, oi.Key, oi.Size, sizes[oi.Key])
			}
			return nil
		})
		if err != nil {
			t.Errorf("list %q: %v", tc.prefix, err)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("list %q: got %q, want %q", tc.prefix, got, tc.want)
		}
	}
}

func testListStop(t *testing.T, s store.Store) {
	for i := range 5 {
		Put(t, s, fmt.Sprintf("s/%d", i), nil, store.PutOptions{})
	}
	stop := errors.New("stop")
	n := 0
	err := s.List(context.Background(), "s/", func(store.ObjectInfo) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	if err != stop {
		t.Errorf("list: got %v, want fn's own error", err)
	}
	if n != 2 {
		t.Errorf("list called fn %d times after it returned an error", n)
	}
}

func testDelete(t *testing.T, s store.Store) {
	ctx := context.Background()
	Put(t, s, "d/x", []byte("x"), store.PutOptions{})
	Put(t, s, "d/xy", []byte("xy"), store.PutOptions{})
	Put(t, s, "d/sub/z", []byte("z"), store.PutOptions{})
	for _, key := range []string{"d/x", "d/sub/z"} {
		if err := s.Delete(ctx, key); err != nil {
			t.Fatalf("delete %s: %v", key, err)
		}
		Absent(t, s, key)
		if err := s.Delete(ctx, key); err != nil {
			t.Errorf("second delete %s: %v", key, err)
		}
	}
	check(t, s, "d/xy", []byte("xy"))
	if got := Keys(t, s, ""); !slices.Equal(got, []string{"d/xy"}) {
		t.Errorf("after deletes: %q", got)
	}
	// A deleted key can be created again.
	Put(t, s, "d/sub/z", []byte("again"), store.PutOptions{CreateOnly: true})
	check(t, s, "d/sub/z", []byte("again"))
}

func testCreateOnly(t *testing.T, s store.Store) {
	ctx := context.Background()
	create := store.PutOptions{CreateOnly: true}
	for _, n := range []int{0, 10, BigSize} {
		key := fmt.Sprintf("c/%d", n)
		first, second := Data(1, n), Data(2, n+1)
		Put(t, s, key, first, create)
		err := s.Put(ctx, key, streamOnly{bytes.NewReader(second)}, create)
		if !errors.Is(err, store.ErrExists) {
			t.Fatalf("second create %s: got %v, want ErrExists", key, err)
		}
		err = s.Put(ctx, key, bytes.NewReader(second), create)
		if !errors.Is(err, store.ErrExists) {
			t.Fatalf("second create %s (sized): got %v, want ErrExists", key, err)
		}
		check(t, s, key, first)
		// A plain Put still replaces it.
		Put(t, s, key, second, store.PutOptions{})
		check(t, s, key, second)
	}
	if got := Keys(t, s, ""); !slices.Equal(got, []string{"c/0", "c/10", fmt.Sprintf("c/%d", BigSize)}) {
		t.Errorf("list after creates: %q", got)
	}
}

func testConcurrentCreateOnly(t *testing.T, s store.Store) {
	const n = 6
	for _, size := range []int{100, 64 << 10, BigSize} {
		key := fmt.Sprintf("race/%d", size)
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				body := streamOnly{bytes.NewReader(Data(uint64(i), size))}
				errs[i] = s.Put(context.Background(), key, body, store.PutOptions{CreateOnly: true})
			})
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Errorf("%s: creators %d and %d both won", key, winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, store.ErrExists):
				t.Errorf("%s: creator %d: got %v, want ErrExists", key, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("%s: no creator won: %v", key, errs)
		}
		check(t, s, key, Data(uint64(winner), size))
	}
}

// testConcurrentPut overwrites one key from many goroutines: the object
// ends up as one writer's whole body, never a mix.
func testConcurrentPut(t *testing.T, s store.Store) {
	const n = 8
	const size = 256 << 10
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			errs[i] = s.Put(context.Background(), "many", streamOnly{bytes.NewReader(Data(uint64(i), size))}, store.PutOptions{})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	got := Read(t, s, "many")
	for i := range n {
		if bytes.Equal(got, Data(uint64(i), size)) {
			return
		}
	}
	t.Errorf("object is no writer's body (%d bytes)", len(got))
}

func testCancelledBefore(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, opts := range []store.PutOptions{{}, {CreateOnly: true}} {
		err := s.Put(ctx, "cb", strings.NewReader("x"), opts)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("put %+v with a cancelled context: got %v, want context.Canceled", opts, err)
		}
	}
	Absent(t, s, "cb")

	Put(t, s, "kept", []byte("kept"), store.PutOptions{})
	if err := s.Delete(ctx, "kept"); !errors.Is(err, context.Canceled) {
		t.Errorf("delete with a cancelled context: got %v, want context.Canceled", err)
	}
	if _, err := s.Stat(ctx, "kept"); !errors.Is(err, context.Canceled) {
		t.Errorf("stat with a cancelled context: got %v, want context.Canceled", err)
	}
	if r, err := s.Get(ctx, "kept"); !errors.Is(err, context.Canceled) {
		if err == nil {
			r.Close()
		}
		t.Errorf("get with a cancelled context: got %v, want context.Canceled", err)
	}
	err := s.List(ctx, "", func(store.ObjectInfo) error { return nil })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("list with a cancelled context: got %v, want context.Canceled", err)
	}
	check(t, s, "kept", []byte("kept"))
}

// hook calls at once the first time at least after bytes have been read
// through it.
type hook struct {
	r     io.Reader
	n     int
	after int
	at    func()
}

func (h *hook) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.n += n
	if h.at != nil && h.n >= h.after {
		h.at()
		h.at = nil
	}
	return n, err
}

// testCancelledMidway cancels a Put after more than a part (5 MiB) has
// been read, so an S3 multipart upload is under way: it must be aborted.
func testCancelledMidway(t *testing.T, s store.Store) {
	for _, opts := range []store.PutOptions{{}, {CreateOnly: true}} {
		ctx, cancel := context.WithCancel(context.Background())
		body := &hook{r: bytes.NewReader(Data(3, 12<<20)), after: 6 << 20, at: cancel}
		err := s.Put(ctx, "cm", body, opts)
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("put %+v cancelled midway: got %v, want context.Canceled", opts, err)
		}
		Absent(t, s, "cm")
	}
}

func testFailedReader(t *testing.T, s store.Store) {
	boom := errors.New("boom")
	for _, n := range []int{0, 100, 6 << 20} {
		for _, opts := range []store.PutOptions{{}, {CreateOnly: true}} {
			key := fmt.Sprintf("fail/%d", n)
			body := io.MultiReader(bytes.NewReader(Data(4, n)), iotest.ErrReader(boom))
			err := s.Put(context.Background(), key, body, opts)
			if !errors.Is(err, boom) {
				t.Errorf("put %s %+v from a failing reader: got %v, want the reader's error", key, opts, err)
			}
			Absent(t, s, key)
		}
	}
	// Nothing stands in the way of a later create.
	Put(t, s, "fail/100", []byte("ok"), store.PutOptions{CreateOnly: true})
	check(t, s, "fail/100", []byte("ok"))
}

func testFailedReplace(t *testing.T, s store.Store) {
	boom := errors.New("boom")
	old := Data(5, 1000)
	Put(t, s, "fr", old, store.PutOptions{})
	for _, n := range []int{10, 6 << 20} {
		body := io.MultiReader(bytes.NewReader(Data(6, n)), iotest.ErrReader(boom))
		if err := s.Put(context.Background(), "fr", body, store.PutOptions{}); !errors.Is(err, boom) {
			t.Errorf("put from a failing reader: got %v, want the reader's error", err)
		}
		check(t, s, "fr", old)
	}
}

// testInvisibleUntilDone looks for the object while its Put is blocked
// half way.
func testInvisibleUntilDone(t *testing.T, s store.Store) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.Put(context.Background(), "slow/obj", pr, store.PutOptions{CreateOnly: true}) }()
	data := Data(8, 1<<20)
	if _, err := pw.Write(data[:len(data)/2]); err != nil {
		t.Fatal(err)
	}
	Absent(t, s, "slow/obj")
	if keys := Keys(t, s, ""); len(keys) != 0 {
		t.Errorf("during a Put the store lists %q", keys)
	}
	if _, err := pw.Write(data[len(data)/2:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatalf("put: %v", err)
	}
	check(t, s, "slow/obj", data)
	if keys := Keys(t, s, ""); !slices.Equal(keys, []string{"slow/obj"}) {
		t.Errorf("after the Put the store lists %q", keys)
	}
}

func testGetCancelled(t *testing.T, s store.Store) {
	Put(t, s, "g", Data(9, BigSize), store.PutOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := s.Get(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadFull(r, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if n, err := io.Copy(io.Discard, r); err == nil {
		t.Errorf("read %d more bytes after the context was cancelled, and no error", n)
	}
}

func stat(tb testing.TB, s store.Store, key string) store.ObjectInfo {
	tb.Helper()
	oi, err := s.Stat(context.Background(), key)
	if err != nil {
		tb.Fatal(err)
	}
	if oi.ETag == "" {
		tb.Fatalf("stat %s: no ETag", key)
	}
	return oi
}

func testIfMatch(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, n := range []int{10, BigSize} {
		key := fmt.Sprintf("m/%d", n)
		v1, v2, v3 := Data(1, n), Data(2, n), Data(3, n)
		Put(t, s, key, v1, store.PutOptions{})
		e1 := stat(t, s, key).ETag
		var listed string
		if err := s.List(ctx, key, func(oi store.ObjectInfo) error { listed = oi.ETag; return nil }); err != nil || listed != e1 {
			t.Fatalf("%s: List ETag %q, %v; Stat says %q", key, listed, err, e1)
		}
		// The current version's ETag replaces it, once.
		Put(t, s, key, v2, store.PutOptions{IfMatch: e1})
		check(t, s, key, v2)
		e2 := stat(t, s, key).ETag
		if e2 == e1 {
			t.Fatalf("%s: ETag %q unchanged by a Put of other bytes", key, e1)
		}
		for _, r := range []io.Reader{bytes.NewReader(v3), streamOnly{bytes.NewReader(v3)}} {
			if err := s.Put(ctx, key, r, store.PutOptions{IfMatch: e1}); !errors.Is(err, store.ErrConflict) {
				t.Fatalf("%s: Put with a stale ETag: %v, want ErrConflict", key, err)
			}
		}
		check(t, s, key, v2)
		if stat(t, s, key).ETag != e2 {
			t.Fatalf("%s: a refused Put changed the ETag", key)
		}
	}
	// A missing object matches no ETag, and is not created.
	if err := s.Put(ctx, "m/gone", bytes.NewReader([]byte("x")), store.PutOptions{IfMatch: "0123"}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Put if-match of a missing object: %v, want ErrConflict", err)
	}
	Absent(t, s, "m/gone")
	Put(t, s, "m/both", []byte("x"), store.PutOptions{})
	if err := s.Put(ctx, "m/both", bytes.NewReader([]byte("y")), store.PutOptions{CreateOnly: true, IfMatch: stat(t, s, "m/both").ETag}); err == nil {
		t.Fatal("Put with create-only and if-match together succeeded")
	}
	check(t, s, "m/both", []byte("x"))
}

// testConcurrentIfMatch: of Puts racing with one ETag, exactly one wins,
// and the object holds the winner's bytes.
func testConcurrentIfMatch(t *testing.T, s store.Store) {
	const racers = 8
	ctx := context.Background()
	Put(t, s, "race", []byte("start"), store.PutOptions{})
	etag := stat(t, s, "race").ETag
	var wg sync.WaitGroup
	errs := make([]error, racers)
	for i := range racers {
		wg.Go(func() {
			errs[i] = s.Put(ctx, "race", bytes.NewReader([]byte(fmt.Sprintf("racer %d", i))), store.PutOptions{IfMatch: etag})
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("racers %d and %d both won", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, store.ErrConflict):
			t.Fatalf("racer %d: %v, want ErrConflict", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no racer won")
	}
	check(t, s, "race", []byte(fmt.Sprintf("racer %d", winner)))
}
