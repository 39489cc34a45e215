// Package store is the contract between hsmbackup's pipelines and object
// storage: a flat namespace of keys naming byte streams, each written
// whole, with create-only puts for the objects that must be written exactly
// once (manifests, leases).
//
// The package knows nothing of backups and imports none of its backends.
// Backends live in subpackages (store/file, store/s3), decorators in others
// (store/retry); store/storeurl picks a backend from a URL.
//
// # Keys
//
// A key is a slash-separated relative path: see [ValidKey]. Every backend
// refuses other keys with [ErrInvalidKey] before any I/O, so a key that works
// in one backend works in all.
//
// # Contexts
//
// Every method takes a context first. A context cancelled before a method
// returns makes it return an error that wraps ctx.Err(), and a write whose
// context is cancelled before it commits leaves no object behind. Readers
// returned by Get are bound to Get's context: cancelling it fails their
// next Read.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"
)

// Sentinel errors. Backends wrap them with the operation and key, so test
// with errors.Is.
var (
	// ErrNotFound: the key names no object.
	ErrNotFound = errors.New("object not found")
	// ErrExists: a create-only Put lost to an object already at the key
	// (or to a concurrent create that won the race).
	ErrExists = errors.New("object already exists")
	// ErrInvalidKey: the key (or list prefix) breaks the rules of ValidKey
	// or a backend's own limits.
	ErrInvalidKey = errors.New("invalid key")
	// ErrConflict: a Put with IfMatch found the object replaced since its
	// ETag was read (or gone).
	ErrConflict = errors.New("object changed since it was read")
	// ErrLocked: Delete refused because the object is under object-lock
	// retention or legal hold.
	ErrLocked = errors.New("object is locked")
	// ErrTransient marks an error that a later attempt may not meet: a
	// timeout, a throttle, a 5xx, a reset connection. Backends mark such
	// errors with Transient; store/retry retries only errors that match it.
	// Every other error is permanent.
	ErrTransient = errors.New("transient storage error")
	// ErrNoStore: the store itself does not exist: a file store's
	// directory, an S3 bucket. Only creating commands make one.
	ErrNoStore = errors.New("store does not exist")
	// ErrAccessDenied: the storage service refused the request's
	// credentials or their permissions.
	ErrAccessDenied = errors.New("access denied")
	// ErrUnsupported: the backend cannot honour an option (for example
	// object lock on the file store). It is errors.ErrUnsupported.
	ErrUnsupported = errors.ErrUnsupported
)

// Store is a flat key space of objects. Implementations are safe for
// concurrent use by many goroutines, and the file store also by many
// processes sharing one directory.
type Store interface {
	// Put stores the bytes read from r until io.EOF under key, replacing any
	// object there, or, with opts.CreateOnly, only if no object is there.
	//
	// The object becomes visible, to Get, Stat and List, all at once and
	// only when Put returns nil. If Put returns an error (r failed, ctx was
	// cancelled, storage failed) it leaves no new object and no partial
	// one; an object it was to replace is unchanged. The one exception is
	// an error that strikes after the backend committed but before it
	// could say so (a lost response), which may leave the new object in
	// place.
	//
	// Put reads r in a stream: memory stays bounded whatever the length.
	// It does not close r; if r fails, Put's error wraps r's. Put does not
	// start the whole upload over after a failure; store/retry does, and
	// only when r is an io.Seeker it can rewind. A create-only Put that
	// finds an object at key returns an error wrapping ErrExists, and of
	// concurrent create-only Puts of one key exactly one succeeds. A Put
	// with opts.IfMatch replaces the object only if it is still the
	// version with that ETag, else fails with ErrConflict: of concurrent
	// such Puts with one ETag at most one succeeds.
	Put(ctx context.Context, key string, r io.Reader, opts PutOptions) error

	// Get opens the object at key for reading. The caller closes the
	// reader. A missing object gives an error wrapping ErrNotFound from Get
	// itself, not from the first Read. The reader reads the object as it
	// was when Get returned; cancelling ctx fails its later Reads.
	Get(ctx context.Context, key string) (io.ReadCloser, error)

	// Stat describes the object at key, or returns an error wrapping
	// ErrNotFound.
	Stat(ctx context.Context, key string) (ObjectInfo, error)

	// List calls fn for every object whose key starts with prefix (a plain
	// string prefix: "a/b" matches "a/b/c" and "a/bc"), in ascending byte
	// order of key; the empty prefix lists everything. Objects being
	// written are not listed until their Put has returned nil. If fn
	// returns an error, List stops and returns that error unwrapped. An
	// object put or deleted while List runs may or may not be reported.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error

	// Delete removes the object at key. Deleting a missing key is not an
	// error (S3 cannot tell the two apart). An object under retention or
	// legal hold cannot be deleted: Delete returns an error wrapping
	// ErrLocked.
	Delete(ctx context.Context, key string) error
}

// PutOptions are per-call options for Put. The zero value is a plain
// overwriting put.
type PutOptions struct {
	// CreateOnly makes Put fail with ErrExists instead of replacing an
	// object already at the key (S3: If-None-Match: *; file: link(2)).
	CreateOnly bool
	// IfMatch, if set, makes Put replace the object only if its ETag (from
	// Stat or List) is still IfMatch, and fail with ErrConflict otherwise,
	// also if the object is gone: a compare-and-swap for read-modify-write
	// (S3: If-Match; file: a lock on the object's file). Not with
	// CreateOnly.
	IfMatch string

	// Retention, if its Mode is set, locks the object against deletion
	// until Retention.Until (a later Put of the key adds a newer version;
	// the locked one stays). It needs a bucket made with object locking;
	// backends without object lock, and buckets made without it, return
	// ErrUnsupported (see ObjectLocker).
	Retention Retention

	// LegalHold puts the object under legal hold, which blocks deletion
	// until it is lifted whatever the retention. As for Retention.
	LegalHold bool
}

// RetentionMode is an object-lock retention mode.
type RetentionMode string

// Retention modes, as S3 defines them.
const (
	// Governance: users with the bypass permission may still delete.
	Governance RetentionMode = "GOVERNANCE"
	// Compliance: nobody, not even the root account, may delete before
	// the date.
	Compliance RetentionMode = "COMPLIANCE"
)

// Retention is an object-lock retention. The zero value means none.
type Retention struct {
	Mode  RetentionMode
	Until time.Time
}

// Validate reports whether r is either unset or complete.
func (r Retention) Validate() error {
	switch r.Mode {
	case "":
		if !r.Until.IsZero() {
			return errors.New("retention date given without a mode")
		}
		return nil
	case Governance, Compliance:
		if r.Until.IsZero() {
			return fmt.Errorf("%s retention without a date", r.Mode)
		}
		return nil
	default:
		return fmt.Errorf("unknown retention mode %q", r.Mode)
	}
}

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
	// ETag names the object's version: a Put that changes the object's
	// bytes gives it another (S3's is the MD5 of the bytes, so a Put of
	// the same bytes may keep it). It is opaque, for PutOptions.IfMatch.
	ETag string
}

// MaxKeyLen is the longest key in bytes, S3's limit.
const MaxKeyLen = 1024

// ValidKey reports, wrapping ErrInvalidKey, why key is not a valid key:
// a key is 1 to MaxKeyLen bytes of valid UTF-8 without control characters
// or backslashes, made of non-empty slash-separated segments none of which
// is "." or "..". So no leading or trailing slash, no "//". Backends may
// add limits of their own (the file store: 255 bytes per segment).
func ValidKey(key string) error {
	if err := validKey(key); err != nil {
		return fmt.Errorf("%w %q: %s", ErrInvalidKey, key, err)
	}
	return nil
}

func validKey(key string) error {
	if key == "" {
		return errors.New("empty")
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("longer than %d bytes", MaxKeyLen)
	}
	if !utf8.ValidString(key) {
		return errors.New("not UTF-8")
	}
	start := 0
	for i := 0; i <= len(key); i++ {
		if i < len(key) {
			c := key[i]
			if c < 0x20 || c == 0x7f {
				return errors.New("control character")
			}
			if c == '\\' {
				return errors.New("backslash")
			}
			if c != '/' {
				continue
			}
		}
		switch key[start:i] {
		case "":
			return errors.New("empty segment")
		case ".", "..":
			return errors.New(`"." or ".." segment`)
		}
		start = i + 1
	}
	return nil
}

// ValidPrefix reports, wrapping ErrInvalidKey, why prefix cannot start any
// valid key. The empty prefix is valid, and so is any prefix of a valid key
// that is cut between two UTF-8 characters.
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	// A prefix of a valid key is a valid key, maybe followed by a slash,
	// maybe cut inside its last segment: checking it with a stand-in last
	// segment covers all three.
	if err := validKey(prefix + "x"); err != nil && !(len(prefix) >= MaxKeyLen && validKey(prefix) == nil) {
		return fmt.Errorf("%w: prefix %q: %s", ErrInvalidKey, prefix, err)
	}
	return nil
}

// transient marks an error as ErrTransient without changing its message.
type transient struct{ err error }

func (e transient) Error() string        { return e.err.Error() }
func (e transient) Unwrap() error        { return e.err }
func (e transient) Is(target error) bool { return target == ErrTransient }

// Transient marks err as one a retry may cure (see ErrTransient), keeping
// its message and its chain. Transient(nil) is nil.
func Transient(err error) error {
	if err == nil {
		return nil
	}
	return transient{err}
}

// IsTransient reports whether err is worth retrying: it is marked
// ErrTransient and is not a context error.
func IsTransient(err error) bool {
	return errors.Is(err, ErrTransient) &&
		!errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// StaleUploadRemover is implemented by stores in which an interrupted Put
// (a killed process) can leave unfinished upload state that is never
// listed but takes space: S3 incomplete multipart uploads, file-store
// temporary files.
type StaleUploadRemover interface {
	// RemoveStaleUploads removes the leftovers of uploads last active
	// before olderThan and reports how many it removed. An upload still in
	// progress but idle since before olderThan is removed too and its Put
	// will fail, so pass a time well in the past (a day, say).
	RemoveStaleUploads(ctx context.Context, olderThan time.Time) (int, error)
}

// ObjectLocker is implemented by stores that can lock objects against
// deletion (PutOptions.Retention and LegalHold): S3. A store without it
// cannot lock, and its Put refuses a retention with ErrUnsupported.
type ObjectLocker interface {
	// CheckObjectLock reports whether Puts with a retention can succeed
	// here, cheaply and without writing: nil if they can; an error
	// wrapping ErrUnsupported if the store cannot lock (an S3 bucket made
	// without object lock); any other error if it could not tell.
	CheckObjectLock(ctx context.Context) error

	// ObjectLock returns the lock of the object at key (its newest
	// version): the retention, zero if none, and whether it is under
	// legal hold; an error wrapping ErrNotFound if there is no object.
	// A service may withhold the lock from a caller not permitted to read
	// it (AWS without s3:GetObjectRetention), so a zero answer does not
	// prove that Delete will succeed.
	ObjectLock(ctx context.Context, key string) (Retention, bool, error)
}

// Prefixed is implemented by a store whose keys are names under a prefix
// of a larger namespace: an S3 store opened at s3://BUCKET/PREFIX stores
// key k as object PREFIX/k of its bucket. A file store has none: its
// directory is the namespace, as a bucket is.
type Prefixed interface {
	// KeyPrefix returns what the store puts before every key: "" or a
	// string ending in a slash.
	KeyPrefix() string
}

// KeyPrefix returns the key prefix of s (Prefixed, found through
// decorators), or "" if it has none.
func KeyPrefix(s Store) string {
	if p, ok := As[Prefixed](s); ok {
		return p.KeyPrefix()
	}
	return ""
}

// Wrapper is implemented by decorators: Unwrap returns the Store they wrap.
type Wrapper interface {
	Unwrap() Store
}

// As finds the first store in s's chain of decorators (s itself, then
// what each Wrapper unwraps to) that is a T, for reaching optional
// interfaces such as StaleUploadRemover through decorators.
func As[T any](s Store) (T, bool) {
	for s != nil {
		if t, ok := s.(T); ok {
			return t, true
		}
		w, ok := s.(Wrapper)
		if !ok {
			break
		}
		s = w.Unwrap()
	}
	var zero T
	return zero, false
}
