//go:build unix

package file

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/storetest"
)

// TestRemoveStaleUploadsSparesLiveWriters: a Put in progress whose
// temporary file has not been written to for longer than the cut-off is
// not disturbed, because its writer holds the file's lock; it completes,
// and leaves no temporary file.
func TestRemoveStaleUploadsSparesLiveWriters(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.Put(ctx, "object", pr, store.PutOptions{CreateOnly: true}) }()
	first, second := []byte("first half, "), []byte("second half")
	if _, err := pw.Write(first); err != nil {
		t.Fatal(err)
	}
	// Wait until the writer has written the first half and is waiting
	// for more: from now on it does not touch its file.
	var tmp string
	deadline := time.Now().Add(10 * time.Second)
	for tmp == "" {
		if names := tempFiles(t, s); len(names) == 1 {
			p := filepath.Join(s.Root(), TempDir, names[0])
			if fi, err := os.Stat(p); err == nil && fi.Size() == int64(len(first)) {
				tmp = p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no temporary file of %d bytes: %q", len(first), tempFiles(t, s))
		}
		time.Sleep(time.Millisecond)
	}
	past := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(tmp, past, past); err != nil {
		t.Fatal(err)
	}
	n, err := s.RemoveStaleUploads(ctx, time.Now().Add(-24*time.Hour))
	if err != nil || n != 0 {
		t.Fatalf("RemoveStaleUploads with a live writer: removed %d, %v; want 0", n, err)
	}
	if _, err := os.Stat(tmp); err != nil {
		t.Fatalf("the live writer's temporary file: %v", err)
	}
	if _, err := pw.Write(second); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatalf("put: %v", err)
	}
	if got := storetest.Read(t, s, "object"); !bytes.Equal(got, bytes.Join([][]byte{first, second}, nil)) {
		t.Fatalf("object holds %q", got)
	}
	if names := tempFiles(t, s); len(names) != 0 {
		t.Fatalf("temporary files left: %q", names)
	}
}
