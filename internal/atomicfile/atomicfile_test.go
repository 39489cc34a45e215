package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestWriteReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFile(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "two" {
		t.Fatalf("got %q", b)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestFailedWriteLeavesOldContents(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := Write(p, 0o600, func(w io.Writer) error {
		w.Write([]byte("half of the new"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want boom", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("contents %q after a failed write", b)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temporary file left behind: %d entries", len(ents))
	}
}

func TestReadPrivateRefusesLooseModes(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660} {
		p := filepath.Join(dir, "k")
		os.WriteFile(p, []byte("secret"), 0o600)
		os.Chmod(p, mode)
		if _, err := ReadPrivate(p); err == nil || !strings.Contains(err.Error(), "0600") {
			t.Errorf("mode %04o: got %v, want a refusal", mode, err)
		}
	}
	p := filepath.Join(dir, "ok")
	os.WriteFile(p, []byte("secret"), 0o600)
	if b, err := ReadPrivate(p); err != nil || string(b) != "secret" {
		t.Fatalf("0600 file: %q, %v", b, err)
	}
	if _, err := ReadPrivate(dir); err == nil {
		t.Fatal("a directory was read as a key file")
	}
}

// TestRemoveTemps: the temporary files a killed Write leaves are removed,
// and nothing else: not the targets, not names that only look alike.
func TestRemoveTemps(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"state", ".hidden", "state.tmp-123", ".state.tmp-", ".state.tmp-12a", ".tmp-123"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, ".d.tmp-1"), 0o700); err != nil {
		t.Fatal(err)
	}
	// What Write leaves when its process dies after writing: a temp file
	// of the pattern it creates.
	for range 2 {
		f, err := os.CreateTemp(dir, ".state.tmp-*")
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("half a state")
		f.Close()
	}
	n, err := RemoveTemps(dir)
	if err != nil || n != 2 {
		t.Fatalf("RemoveTemps = %d, %v; want 2 removed", n, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	want := []string{".d.tmp-1", ".hidden", ".state.tmp-", ".state.tmp-12a", ".tmp-123", "state", "state.tmp-123"}
	if !slices.Equal(left, want) {
		t.Errorf("left %q, want %q", left, want)
	}
}
