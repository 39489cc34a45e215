package storeurl

import (
	"context"
	"errors"
	iofs "io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/file"
	"github.com/hsmbackup/hsmbackup/store/s3"
)

func TestOpenFile(t *testing.T) {
	dir := t.TempDir()
	st, err := Open("file://"+dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	fs, ok := st.(*file.Store)
	if !ok || fs.Root() != dir {
		t.Fatalf("got %T %v", st, st)
	}
	t.Chdir(dir)
	// Without Create, a missing directory is no store, and is not made.
	if _, err := Open("file://rel/dir", Options{}); !errors.Is(err, store.ErrNoStore) {
		t.Fatalf("missing directory: %v, want ErrNoStore", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "rel")); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("Open made the directory: %v", err)
	}
	st, err = Open("file://rel/dir", Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := st.(*file.Store).Root(); got != filepath.Join(dir, "rel", "dir") {
		t.Errorf("relative root %q", got)
	}
}

func TestOpenS3(t *testing.T) {
	tmpl := s3.Config{Region: "eu-west-1", Endpoint: "http://127.0.0.1:9000", PartSize: s3.MinPartSize}
	st, err := Open("s3://backups/prod/hsm/?sse=kms&kms-key-id=k1&region=us-east-1", Options{S3: tmpl})
	if err != nil {
		t.Fatal(err)
	}
	s, ok := store.As[*s3.Store](st)
	if !ok {
		t.Fatalf("got %T, no s3 store inside", st)
	}
	if _, ok := st.(*s3.Store); ok {
		t.Error("s3 store not wrapped in retries")
	}
	if s.String() != "s3://backups/prod/hsm" || s.ObjectName("k") != "prod/hsm/k" {
		t.Errorf("store %s, object %s", s, s.ObjectName("k"))
	}
	cfg, _ := s3Config("s3://b/p?sse=kms&kms-key-id=k1&region=us-east-1&endpoint=https://s3.example", tmpl)
	want := s3.Config{Bucket: "b", Prefix: "p", Region: "us-east-1", Endpoint: "https://s3.example",
		Encryption: s3.SSEKMS, KMSKeyID: "k1", PartSize: s3.MinPartSize}
	if cfg != want {
		t.Errorf("config %+v, want %+v", cfg, want)
	}
}

func TestOpenRefuses(t *testing.T) {
	for _, u := range []string{
		"", "/tmp/x", "ftp://x", "file://", "file://x?y=1",
		"s3://", "s3:///prefix", "s3://b:9000/p", "s3://u@b/p", "s3://b/a/../c",
		"s3://b?sse=rot13", "s3://b?color=red", "s3://b?region=a&region=b", "s3://b?sse=kms",
	} {
		if st, err := Open(u, Options{}); err == nil {
			t.Errorf("Open(%q) = %v", u, st)
		}
	}
}

func TestInitFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new")
	ctx := context.Background()
	if _, created, err := Init(ctx, "file://"+dir, Options{}, InitOptions{}); err != nil || !created {
		t.Fatalf("Init: created %v, %v", created, err)
	}
	st, created, err := Init(ctx, "file://"+dir, Options{}, InitOptions{})
	if err != nil || created {
		t.Fatalf("Init again: created %v, %v", created, err)
	}
	if st.(*file.Store).Root() != dir {
		t.Errorf("root %s", st.(*file.Store).Root())
	}
	// A file store cannot lock objects: init with object lock is refused
	// and makes no directory.
	other := filepath.Join(t.TempDir(), "locked")
	if _, created, err := Init(ctx, "file://"+other, Options{}, InitOptions{ObjectLock: true}); created || !errors.Is(err, store.ErrUnsupported) {
		t.Errorf("Init with object lock: created %v, %v; want ErrUnsupported", created, err)
	}
	if _, err := os.Stat(other); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("Init with object lock made %s: %v", other, err)
	}
}
