// Package file is the embedded default store: objects are files under one
// directory (URL file://DIR), written atomically and durably.
//
// A Put writes a temporary file in DIR/.tmp, fsyncs it, then renames it
// over the target (or, create-only, links it there: link(2) fails if the
// target exists, so of concurrent creators exactly one wins) and fsyncs the
// target's directory. Readers therefore see the old object or the new one,
// never a mix, and after a crash at any point the object is either wholly
// there or not there. Several processes may share one directory.
//
// A writer that dies mid-Put (kill -9, a crash) leaves its temporary file
// in DIR/.tmp: never listed, but taking space. RemoveStaleUploads removes
// such files, safely while other processes write: every Put holds an
// exclusive flock(2) on its temporary file until it returns, the kernel
// drops the lock when the writer dies, and only files not written to since
// the given time whose lock is free are removed. A live writer is never
// disturbed, however long it idles. Where flock is unavailable (a file
// system without it) temporary files are never removed; on systems other
// than Unix, where there is no flock, their age alone decides.
//
// Key k is the file DIR/k. Because a path cannot be both a file and a
// directory, the file store cannot hold both "a" and "a/b": the second Put
// fails. The top-level segment ".tmp" is reserved, segments are at most 255
// bytes, and object lock (retention, legal hold) is not supported.
package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
	"github.com/hsmbackup/hsmbackup/internal/ctxio"
	"github.com/hsmbackup/hsmbackup/store"
)

// TempDir is the directory under the root that holds files being written.
// It is never listed, and no key may start with it.
const TempDir = ".tmp"

// maxSegment is the longest segment, NAME_MAX on the file systems we meet.
const maxSegment = 255

const (
	filePerm = 0o600
	dirPerm  = 0o700
)

// Store is a directory of objects.
type Store struct {
	root string // absolute, cleaned
}

var (
	_ store.Store              = (*Store)(nil)
	_ store.StaleUploadRemover = (*Store)(nil)
)

// New opens the store rooted at dir, creating dir (mode 0700) if needed.
// Commands that only read use Open, which does not.
func New(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("file store: empty directory")
	}
	root, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("file store %s: %w", dir, err)
	}
	if err := os.MkdirAll(filepath.Join(root, TempDir), dirPerm); err != nil {
		return nil, fmt.Errorf("file store: create %s: %w", root, err)
	}
	return &Store{root: root}, nil
}

// Open opens the store rooted at dir, which must exist: a missing
// directory is an error wrapping store.ErrNoStore, so that a mistyped
// path is not taken for an empty store. It creates nothing; the first Put
// makes the temporary directory.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("file store: empty directory")
	}
	root, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("file store %s: %w", dir, err)
	}
	fi, err := os.Stat(root)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("file store %s: %w", root, store.ErrNoStore)
	case err != nil:
		return nil, fmt.Errorf("file store: %w", err)
	case !fi.IsDir():
		return nil, fmt.Errorf("file store %s: not a directory", root)
	}
	return &Store{root: root}, nil
}

// Root returns the store's directory.
func (s *Store) Root() string { return s.root }

// String returns the store's URL.
func (s *Store) String() string { return "file://" + s.root }

// ValidKey is store.ValidKey plus the file store's own limits: segments of
// at most 255 bytes, and no key under the reserved TempDir.
func ValidKey(key string) error {
	if err := store.ValidKey(key); err != nil {
		return err
	}
	first, _, _ := strings.Cut(key, "/")
	if first == TempDir {
		return fmt.Errorf("%w %q: %s is reserved", store.ErrInvalidKey, key, TempDir)
	}
	for seg := range strings.SplitSeq(key, "/") {
		if len(seg) > maxSegment {
			return fmt.Errorf("%w %q: segment longer than %d bytes", store.ErrInvalidKey, key, maxSegment)
		}
	}
	return nil
}

// path returns the file of a valid key.
func (s *Store) path(key string) string {
	return filepath.Join(s.root, filepath.FromSlash(key))
}

// Put implements store.Store.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, opts store.PutOptions) (err error) {
	if err := ValidKey(key); err != nil {
		return fmt.Errorf("put: %w", err)
	}
	if opts.Retention.Mode != "" || !opts.Retention.Until.IsZero() || opts.LegalHold {
		return fmt.Errorf("put %s: object lock: %w by the file store", key, store.ErrUnsupported)
	}
	if opts.CreateOnly && opts.IfMatch != "" {
		return fmt.Errorf("put %s: create-only and if-match together", key)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	f, err := os.CreateTemp(filepath.Join(s.root, TempDir), "put-*")
	if errors.Is(err, fs.ErrNotExist) { // a store opened with Open: make TempDir, in the root only
		if err = os.Mkdir(filepath.Join(s.root, TempDir), dirPerm); err == nil || errors.Is(err, fs.ErrExist) {
			f, err = os.CreateTemp(filepath.Join(s.root, TempDir), "put-*")
		}
	}
	if err != nil {
		return fmt.Errorf("put %s: create temp file: %w", key, err)
	}
	tmp := f.Name()
	renamed := false
	unlock := lockTemp(tmp) // held until the temporary file is gone: see RemoveStaleUploads
	defer func() {
		if f != nil {
			f.Close()
		}
		// After a link, or any failure, the temporary file must go.
		if !renamed {
			os.Remove(tmp)
		}
		unlock()
	}()
	if err := f.Chmod(filePerm); err != nil {
		return fmt.Errorf("put %s: chmod temp file: %w", key, err)
	}
	if _, err := io.Copy(f, ctxio.Reader(ctx, r)); err != nil {
		return fmt.Errorf("put %s: write: %w", key, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("put %s: sync: %w", key, err)
	}
	cerr := f.Close()
	f = nil
	if cerr != nil {
		return fmt.Errorf("put %s: close: %w", key, cerr)
	}
	// Last chance to honour a cancellation: after this the object is
	// visible.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	target := s.path(key)
	commit := os.Rename
	if opts.CreateOnly {
		commit = os.Link
	}
	if opts.IfMatch != "" {
		unlock, err := lockVersion(target, opts.IfMatch)
		if err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
		defer unlock() // after the rename: see lockVersion
	}
	err = s.commit(commit, tmp, target)
	renamed = err == nil && !opts.CreateOnly
	if err != nil {
		if opts.CreateOnly && errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("put %s: %w", key, store.ErrExists)
		}
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(target)); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// commit moves tmp to target with op (rename or link), making target's
// directories first. A concurrent Delete may prune a directory between
// MkdirAll and op, so a vanished directory is made again a few times.
func (s *Store) commit(op func(string, string) error, tmp, target string) error {
	dir := filepath.Dir(target)
	var err error
	for range 10 {
		if err = s.mkdirs(dir); err != nil {
			if errors.Is(err, syscall.ENOTDIR) {
				return fmt.Errorf("%w: a parent of %s is an object", store.ErrInvalidKey, target)
			}
			return fmt.Errorf("create directory: %w", err)
		}
		err = op(tmp, target)
		if !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	if err != nil {
		var le *os.LinkError
		if errors.As(err, &le) {
			err = le.Err // the paths are the temp file's and the key's; say the key
		}
		if errors.Is(err, syscall.EISDIR) || (errors.Is(err, fs.ErrExist) && isDir(target)) {
			return fmt.Errorf("%w: %s is a directory of other objects", store.ErrInvalidKey, target)
		}
		return err
	}
	return nil
}

// mkdirs is os.MkdirAll that also fsyncs the parent of every directory it
// makes, so that a committed object's path survives a crash.
func (s *Store) mkdirs(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if dir == s.root {
		return os.MkdirAll(dir, dirPerm)
	}
	parent := filepath.Dir(dir)
	if err := s.mkdirs(parent); err != nil {
		return err
	}
	if err := os.Mkdir(dir, dirPerm); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return atomicfile.SyncDir(parent)
}

func isDir(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.IsDir()
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ValidKey(key); err != nil {
		return nil, fmt.Errorf("get: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	f, err := os.Open(s.path(key))
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, classify(err))
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("get %s: %w", key, store.ErrNotFound)
	}
	return &readCloser{ctxio.Reader(ctx, f), f}, nil
}

// Stat implements store.Store.
func (s *Store) Stat(ctx context.Context, key string) (store.ObjectInfo, error) {
	if err := ValidKey(key); err != nil {
		return store.ObjectInfo{}, fmt.Errorf("stat: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return store.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, err)
	}
	fi, err := os.Stat(s.path(key))
	if err != nil {
		return store.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, classify(err))
	}
	if !fi.Mode().IsRegular() {
		return store.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, store.ErrNotFound)
	}
	return store.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime(), ETag: etag(fi)}, nil
}

// List implements store.Store. It reads the directory tree under the
// prefix's last full directory, then sorts, so memory grows with the
// number of objects under it.
func (s *Store) List(ctx context.Context, prefix string, fn func(store.ObjectInfo) error) error {
	if err := store.ValidPrefix(prefix); err != nil {
		return fmt.Errorf("list: %w", err)
	}
	dir := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		dir = prefix[:i]
	}
	var found []store.ObjectInfo
	start := filepath.Join(s.root, filepath.FromSlash(dir))
	err := filepath.WalkDir(start, func(path string, d fs.DirEntry, err error) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				return nil // a directory removed under us, or no such prefix
			}
			return err
		}
		rel, err := filepath.Rel(s.root, path)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			if key == TempDir {
				return filepath.SkipDir
			}
			// Skip directories that cannot hold a match.
			if key != "." && !strings.HasPrefix(key+"/", prefix) && !strings.HasPrefix(prefix, key+"/") {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(key, prefix) || ValidKey(key) != nil {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted under us
		}
		if err != nil {
			return err
		}
		found = append(found, store.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime(), ETag: etag(fi)})
		return nil
	})
	if err != nil {
		return fmt.Errorf("list %q: %w", prefix, err)
	}
	// Walk order puts "a/b" before "a-c"; keys sort as strings.
	slices.SortFunc(found, func(a, b store.ObjectInfo) int { return strings.Compare(a.Key, b.Key) })
	for _, oi := range found {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list %q: %w", prefix, err)
		}
		if err := fn(oi); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements store.Store. It also removes the directories the
// object leaves empty.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	path := s.path(key)
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || (err == nil && fi.IsDir()) {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	dir := filepath.Dir(path)
	if err := atomicfile.SyncDir(dir); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	// Prune empty parents; a failure (not empty, raced) just stops it.
	for dir != s.root && strings.HasPrefix(dir, s.root+string(filepath.Separator)) {
		if os.Remove(dir) != nil {
			break
		}
		dir = filepath.Dir(dir)
	}
	return nil
}

// RemoveStaleUploads implements store.StaleUploadRemover: it removes
// temporary files, left by writers that crashed, not written to since
// olderThan. A file whose writer is alive (it holds the file's lock) is
// kept, however old: see the package comment.
func (s *Store) RemoveStaleUploads(ctx context.Context, olderThan time.Time) (int, error) {
	dir := filepath.Join(s.root, TempDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil // nothing written yet
	}
	if err != nil {
		return 0, fmt.Errorf("remove stale uploads: %w", err)
	}
	n := 0
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return n, fmt.Errorf("remove stale uploads: %w", err)
		}
		fi, err := e.Info()
		if err != nil || !fi.ModTime().Before(olderThan) {
			continue
		}
		removed, err := removeAbandoned(filepath.Join(dir, e.Name()))
		if err != nil {
			return n, fmt.Errorf("remove stale uploads: %w", err)
		}
		if removed {
			n++
		}
	}
	return n, nil
}

// classify maps file-system errors to the store's sentinels.
func classify(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		// The caller names the key; the path would name it again.
		return fmt.Errorf("%w%.0w", store.ErrNotFound, err)
	}
	return err
}

type readCloser struct {
	io.Reader
	io.Closer
}
