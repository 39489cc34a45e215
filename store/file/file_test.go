package file

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/storetest"
)

func newStore(tb testing.TB) *Store {
	tb.Helper()
	s, err := New(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// TestConformance runs the suite, each subtest on a store of its own that
// must hold no temporary file when the subtest ends.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s := newStore(t)
		t.Cleanup(func() {
			if names := tempFiles(t, s); len(names) != 0 {
				t.Errorf("temporary files left: %q", names)
			}
		})
		return s
	})
}

// tempFiles lists what is in the store's temporary directory.
func tempFiles(tb testing.TB, s *Store) []string {
	tb.Helper()
	ents, err := os.ReadDir(filepath.Join(s.Root(), TempDir))
	if err != nil {
		tb.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestNoTempFilesLeft(t *testing.T) {
	s := newStore(t)
	storetest.Put(t, s, "a", []byte("a"), store.PutOptions{})
	storetest.Put(t, s, "a", []byte("b"), store.PutOptions{})
	if err := s.Put(context.Background(), "a", strings.NewReader("c"), store.PutOptions{CreateOnly: true}); !errors.Is(err, store.ErrExists) {
		t.Fatal(err)
	}
	if names := tempFiles(t, s); len(names) != 0 {
		t.Errorf("temporary files left: %q", names)
	}
}

func TestLayoutAndModes(t *testing.T) {
	s := newStore(t)
	storetest.Put(t, s, "clusters/c1/backups/b1/image", []byte("img"), store.PutOptions{})
	p := filepath.Join(s.Root(), "clusters", "c1", "backups", "b1", "image")
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != filePerm {
		t.Errorf("object mode %v, want %v", fi.Mode().Perm(), os.FileMode(filePerm))
	}
	di, _ := os.Stat(filepath.Dir(p))
	if di.Mode().Perm() != dirPerm {
		t.Errorf("directory mode %v, want %v", di.Mode().Perm(), os.FileMode(dirPerm))
	}
	// Delete prunes the directories it empties, and only those.
	storetest.Put(t, s, "clusters/c2/x", []byte("x"), store.PutOptions{})
	if err := s.Delete(context.Background(), "clusters/c1/backups/b1/image"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.Root(), "clusters", "c1")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("empty directories left after delete: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.Root(), "clusters", "c2", "x")); err != nil {
		t.Errorf("delete pruned too much: %v", err)
	}
}

func TestFileAndDirectoryConflict(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	storetest.Put(t, s, "a", []byte("a"), store.PutOptions{})
	if err := s.Put(ctx, "a/b", strings.NewReader("x"), store.PutOptions{}); !errors.Is(err, store.ErrInvalidKey) {
		t.Errorf("put under an object: got %v, want ErrInvalidKey", err)
	}
	if _, err := s.Stat(ctx, "a/b"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("stat under an object: got %v, want ErrNotFound", err)
	}
	storetest.Put(t, s, "d/e", []byte("e"), store.PutOptions{})
	for _, opts := range []store.PutOptions{{}, {CreateOnly: true}} {
		if err := s.Put(ctx, "d", strings.NewReader("x"), opts); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("put %+v over a directory: got %v, want ErrInvalidKey", opts, err)
		}
	}
	if _, err := s.Stat(ctx, "d"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("stat of a directory: got %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "d"); err != nil {
		t.Errorf("delete of a directory: %v", err)
	}
	if got := storetest.Keys(t, s, ""); !slices.Equal(got, []string{"a", "d/e"}) {
		t.Errorf("keys %q", got)
	}
	if names := tempFiles(t, s); len(names) != 0 {
		t.Errorf("temporary files left: %q", names)
	}
}

func TestTempDirIsHidden(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	if err := s.Put(ctx, ".tmp/x", strings.NewReader("x"), store.PutOptions{}); !errors.Is(err, store.ErrInvalidKey) {
		t.Errorf("put into the temp dir: got %v, want ErrInvalidKey", err)
	}
	// A writer that died left a file behind: never listed.
	os.WriteFile(filepath.Join(s.Root(), TempDir, "put-123"), []byte("half"), 0o600)
	// Stray files that are not valid keys are not listed either.
	os.WriteFile(filepath.Join(s.Root(), "bad\\name"), []byte("x"), 0o600)
	storetest.Put(t, s, ".tmpx", []byte("fine"), store.PutOptions{})
	if got := storetest.Keys(t, s, ""); !slices.Equal(got, []string{".tmpx"}) {
		t.Errorf("keys %q", got)
	}
	if got := storetest.Keys(t, s, ".tmp"); !slices.Equal(got, []string{".tmpx"}) {
		t.Errorf("keys %q", got)
	}
}

func TestRemoveStaleUploads(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	old := filepath.Join(s.Root(), TempDir, "put-old")
	fresh := filepath.Join(s.Root(), TempDir, "put-fresh")
	os.WriteFile(old, []byte("x"), 0o600)
	os.WriteFile(fresh, []byte("x"), 0o600)
	past := time.Now().Add(-48 * time.Hour)
	os.Chtimes(old, past, past)
	var r store.StaleUploadRemover = s
	n, err := r.RemoveStaleUploads(ctx, time.Now().Add(-24*time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("removed %d, %v; want 1", n, err)
	}
	if got := tempFiles(t, s); !slices.Equal(got, []string{"put-fresh"}) {
		t.Errorf("left %q", got)
	}
}

func TestObjectLockUnsupported(t *testing.T) {
	s := newStore(t)
	for _, opts := range []store.PutOptions{
		{LegalHold: true},
		{Retention: store.Retention{Mode: store.Compliance, Until: time.Now().Add(time.Hour)}},
	} {
		err := s.Put(context.Background(), "locked", strings.NewReader("x"), opts)
		if !errors.Is(err, store.ErrUnsupported) {
			t.Errorf("put %+v: got %v, want ErrUnsupported", opts, err)
		}
	}
	storetest.Absent(t, s, "locked")
}

// TestTwoStoresOneDirectory: two Store values (two processes, say) on one
// directory see each other's objects and race fairly on creates.
func TestTwoStoresOneDirectory(t *testing.T) {
	dir := t.TempDir()
	a, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	storetest.Put(t, a, "m", []byte("from a"), store.PutOptions{CreateOnly: true})
	err = b.Put(context.Background(), "m", bytes.NewReader([]byte("from b")), store.PutOptions{CreateOnly: true})
	if !errors.Is(err, store.ErrExists) {
		t.Fatalf("create through b: got %v, want ErrExists", err)
	}
	if got := storetest.Read(t, b, "m"); string(got) != "from a" {
		t.Errorf("b reads %q", got)
	}
}

func TestNewRelativeDir(t *testing.T) {
	t.Chdir(t.TempDir())
	s, err := New("rel/store")
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(s.Root()) || !strings.HasSuffix(s.Root(), filepath.FromSlash("rel/store")) {
		t.Errorf("root %q", s.Root())
	}
	if s.String() != "file://"+s.Root() {
		t.Errorf("String() = %q", s.String())
	}
}

// FuzzKey checks the file store's key validation: an accepted key maps to
// a path inside the root that maps back to the same key, and works as an
// object; a refused key is refused by every method with ErrInvalidKey.
func FuzzKey(f *testing.F) {
	for _, k := range append(storetest.InvalidKeys,
		"a", "a/b", "clusters/c/backups/20260101T000000Z/manifest.json", ".tmp", ".tmp/x", ".tmpx",
		"a/.tmp", "...", "a/.../b", "é/ü", strings.Repeat("s", 255), strings.Repeat("s", 256),
		"a/"+strings.Repeat("s", 256), "con", "a b", " ", "a\tb") {
		f.Add(k)
	}
	s, err := New(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, key string) {
		err := ValidKey(key)
		if err != nil {
			if !errors.Is(err, store.ErrInvalidKey) {
				t.Fatalf("ValidKey(%q) = %v, not ErrInvalidKey", key, err)
			}
			if err := s.Put(ctx, key, strings.NewReader("x"), store.PutOptions{}); !errors.Is(err, store.ErrInvalidKey) {
				t.Fatalf("put %q: %v", key, err)
			}
			if _, err := s.Stat(ctx, key); !errors.Is(err, store.ErrInvalidKey) {
				t.Fatalf("stat %q: %v", key, err)
			}
			return
		}
		if store.ValidKey(key) != nil {
			t.Fatalf("file store accepts %q that store.ValidKey refuses", key)
		}
		p := s.path(key)
		rel, err := filepath.Rel(s.Root(), p)
		if err != nil || filepath.ToSlash(rel) != key || filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			t.Fatalf("key %q maps to %q (rel %q, %v)", key, p, rel, err)
		}
		if store.ValidPrefix(key) != nil {
			t.Fatalf("valid key %q is not a valid prefix", key)
		}
		// Round trip, unless the key collides with an earlier one's
		// directories ("a" then "a/b").
		err = s.Put(ctx, key, strings.NewReader(key), store.PutOptions{})
		if errors.Is(err, store.ErrInvalidKey) {
			return
		}
		if err != nil {
			t.Fatalf("put %q: %v", key, err)
		}
		if got := storetest.Read(t, s, key); string(got) != key {
			t.Fatalf("get %q: %q", key, got)
		}
		if keys := storetest.Keys(t, s, key); len(keys) == 0 || keys[0] != key {
			t.Fatalf("list %q: %q", key, keys)
		}
		if err := s.Delete(ctx, key); err != nil {
			t.Fatalf("delete %q: %v", key, err)
		}
	})
}
