package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vbauerster/mpb/v8"

	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/file"
)

// TestNoProgressOffTerminal: bars are drawn only on a terminal; to a
// buffer, a file or a pipe the store is returned as it is.
func TestNoProgressOffTerminal(t *testing.T) {
	st, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	for name, w := range map[string]io.Writer{"buffer": new(bytes.Buffer), "file": f, "pipe": pw} {
		p := newProgress(context.Background(), w, false)
		if p != nil || p.wrap(st) != store.Store(st) || p.logTo(w) != w {
			t.Errorf("%s: progress bars on", name)
		}
		p.wait()
	}
}

// TestProgressStore: image objects passing through get a bar naming their
// backup, completed when the transfer ends; the bytes are untouched;
// manifests get none.
func TestProgressStore(t *testing.T) {
	ctx := context.Background()
	st, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	// Off a terminal mpb draws only when told to refresh by itself.
	p := mpb.NewWithContext(ctx, mpb.WithOutput(&out), mpb.WithWidth(120), mpb.WithAutoRefresh())
	pp := &progress{p: p, w: &out, bars: map[string]*objectBar{}}
	ps := &progressStore{Store: st, p: pp}
	const dir = "clusters/c/backups/backup-20261124T000000Z-aaaaaaaaaa/"
	data := bytes.Repeat([]byte("hsm"), 100_000)
	if err := ps.Put(ctx, dir+"image", bytes.NewReader(data), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := ps.Put(ctx, dir+"manifest.json", strings.NewReader("{}"), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	rc, err := ps.Get(ctx, dir+"image")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v; want the %d put", len(got), err, len(data))
	}
	pp.wait()
	text := out.String()
	for _, want := range []string{"upload backup-20261124T000000Z-aaaaaaaaaa", "read backup-20261124T000000Z-aaaaaaaaaa", "293.0 KiB / 293.0 KiB"} {
		if !strings.Contains(text, want) {
			t.Errorf("progress output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "manifest") {
		t.Errorf("unexpected bars:\n%s", text)
	}
	// The bars hide no optional interface of the store (an S3 store's
	// ObjectLocker, say): store.As reaches through them.
	if got, ok := store.As[*file.Store](ps); !ok || got != st {
		t.Errorf("store.As through the bars: %v, %t", got, ok)
	}
}
