package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestValidKey(t *testing.T) {
	for _, k := range []string{"a", "a/b", "a.b", "...", "a/.x/b", ".tmp", "é/ü", "a b", strings.Repeat("k", MaxKeyLen)} {
		if err := ValidKey(k); err != nil {
			t.Errorf("ValidKey(%q) = %v", k, err)
		}
	}
	for _, k := range []string{"", "/", "/a", "a/", "a//b", ".", "..", "./a", "a/./b", "a/..", `a\b`, "a\x00", "a\x7f", "\xff", strings.Repeat("k", MaxKeyLen+1)} {
		if err := ValidKey(k); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ValidKey(%q) = %v, want ErrInvalidKey", k, err)
		}
	}
}

func TestValidPrefix(t *testing.T) {
	for _, p := range []string{"", "a", "a/", "a/b", "a/.", "a/..", ".", "..", strings.Repeat("k", MaxKeyLen)} {
		if err := ValidPrefix(p); err != nil {
			t.Errorf("ValidPrefix(%q) = %v", p, err)
		}
	}
	for _, p := range []string{"/", "/a", "a//", "./", "../", "a/../", `a\`, "\xff", strings.Repeat("k", MaxKeyLen+1)} {
		if err := ValidPrefix(p); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ValidPrefix(%q) = %v, want ErrInvalidKey", p, err)
		}
	}
}

// FuzzValidKey checks that every prefix of a valid key, cut at a rune
// boundary, is a valid prefix, and that validation never panics.
func FuzzValidKey(f *testing.F) {
	for _, k := range []string{"a", "a/b", "a/../b", "./x", "é/ü", "a//b", "a\\b"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		if err := ValidKey(key); err != nil {
			if !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("ValidKey(%q) = %v", key, err)
			}
			return
		}
		for i := range key { // rune boundaries
			if err := ValidPrefix(key[:i]); err != nil {
				t.Fatalf("prefix %q of valid key %q: %v", key[:i], key, err)
			}
		}
		if err := ValidPrefix(key); err != nil {
			t.Fatalf("valid key %q as a prefix: %v", key, err)
		}
	})
}

func TestTransient(t *testing.T) {
	base := errors.New("503")
	err := fmt.Errorf("put k: %w", Transient(base))
	if !IsTransient(err) || !errors.Is(err, base) || err.Error() != "put k: 503" {
		t.Errorf("Transient: %v, transient %v", err, IsTransient(err))
	}
	if IsTransient(base) || IsTransient(nil) || Transient(nil) != nil {
		t.Error("unmarked errors are transient")
	}
	if IsTransient(Transient(fmt.Errorf("x: %w", context.Canceled))) {
		t.Error("a cancelled context is transient")
	}
}

func TestRetentionValidate(t *testing.T) {
	now := time.Now()
	for _, r := range []Retention{{}, {Mode: Governance, Until: now}, {Mode: Compliance, Until: now}} {
		if err := r.Validate(); err != nil {
			t.Errorf("%+v: %v", r, err)
		}
	}
	for _, r := range []Retention{{Until: now}, {Mode: Compliance}, {Mode: "forever", Until: now}} {
		if err := r.Validate(); err == nil {
			t.Errorf("%+v: valid", r)
		}
	}
}

type fakeStore struct{ Store }

type wrapper struct{ Store }

func (w wrapper) Unwrap() Store { return w.Store }

type remover struct{ fakeStore }

func (remover) RemoveStaleUploads(context.Context, time.Time) (int, error) { return 0, nil }

func TestAs(t *testing.T) {
	if _, ok := As[StaleUploadRemover](wrapper{wrapper{fakeStore{}}}); ok {
		t.Error("found a remover that is not there")
	}
	if _, ok := As[StaleUploadRemover](wrapper{wrapper{remover{}}}); !ok {
		t.Error("remover not found through two decorators")
	}
}
