// Package storeurl opens the store a URL names, so that package store need
// not import its backends:
//
//	file://DIR                  the file store in DIR (file:///abs/dir, or
//	                            file://rel/dir relative to the working
//	                            directory)
//	s3://BUCKET[/PREFIX][?…]    the S3 store, wrapped in store/retry
//
// An s3 URL may carry region=, endpoint= (a URL; http:// for plain HTTP),
// sse=s3 or sse=kms with kms-key-id=; everything else comes from
// Options.S3 and the AWS environment (see s3.Config).
package storeurl

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/file"
	"github.com/hsmbackup/hsmbackup/store/retry"
	"github.com/hsmbackup/hsmbackup/store/s3"
)

// Options are what a URL does not say. The zero value is valid.
type Options struct {
	// S3 is the template for s3 URLs: the URL sets Bucket and Prefix and
	// overrides the fields its query names.
	S3 s3.Config
	// Retry bounds the retries around S3 stores (zero: retry's defaults).
	// The file store is not wrapped: its errors are never transient.
	Retry retry.Config
	// Create makes a file store's directory if it is missing; without it a
	// missing directory is an error wrapping store.ErrNoStore. Commands
	// that only read leave it unset, so that a mistyped path is not taken
	// for an empty store. An S3 bucket is never created here (see Init);
	// a missing one fails the first call with store.ErrNoStore.
	Create bool
}

// Open returns the store rawURL names. It does no I/O beyond checking for
// (or, with Create, creating) a file store's directory.
func Open(rawURL string, opts Options) (store.Store, error) {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return nil, fmt.Errorf("store URL %q: want file://DIR or s3://BUCKET/PREFIX", rawURL)
	}
	switch scheme {
	case "file":
		if rest == "" || strings.ContainsAny(rest, "?#") {
			return nil, fmt.Errorf("store URL %q: want file://DIR", rawURL)
		}
		if opts.Create {
			return file.New(rest)
		}
		return file.Open(rest)
	case "s3":
		cfg, err := s3Config(rawURL, opts.S3)
		if err != nil {
			return nil, err
		}
		st, err := s3.New(cfg)
		if err != nil {
			return nil, err
		}
		return retry.New(st, opts.Retry)
	default:
		return nil, fmt.Errorf("store URL %q: unknown scheme %q (want file or s3)", rawURL, scheme)
	}
}

// s3Config applies an s3:// URL to the template cfg.
func s3Config(rawURL string, cfg s3.Config) (s3.Config, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return cfg, fmt.Errorf("store URL: %w", err)
	}
	if u.Host == "" || u.User != nil || u.Port() != "" || u.Fragment != "" {
		return cfg, fmt.Errorf("store URL %q: want s3://BUCKET[/PREFIX]", rawURL)
	}
	cfg.Bucket = u.Host
	cfg.Prefix = strings.Trim(u.Path, "/")
	for k, vs := range u.Query() {
		if len(vs) != 1 {
			return cfg, fmt.Errorf("store URL %q: %s given %d times", rawURL, k, len(vs))
		}
		v := vs[0]
		switch k {
		case "region":
			cfg.Region = v
		case "endpoint":
			cfg.Endpoint = v
		case "sse":
			switch v {
			case "s3":
				cfg.Encryption = s3.SSES3
			case "kms":
				cfg.Encryption = s3.SSEKMS
			default:
				return cfg, fmt.Errorf("store URL %q: sse=%s (want s3 or kms)", rawURL, v)
			}
		case "kms-key-id":
			cfg.KMSKeyID = v
		default:
			return cfg, fmt.Errorf("store URL %q: unknown parameter %q", rawURL, k)
		}
	}
	if cfg.Prefix != "" {
		if err := store.ValidKey(cfg.Prefix); err != nil {
			return cfg, fmt.Errorf("store URL %q: prefix: %w", rawURL, err)
		}
	}
	if cfg.Bucket == "" {
		return cfg, errors.New("store URL: no bucket")
	}
	return cfg, nil
}

// InitOptions are the options of Init. The zero value checks that the
// store exists, making only a file store's directory.
type InitOptions struct {
	// CreateBucket makes a missing S3 bucket (in the URL's or the
	// environment's region).
	CreateBucket bool
	// ObjectLock requires a store that can lock objects: an S3 bucket
	// with object lock. A bucket made is made with it; an existing bucket
	// without it, and a file store, are errors wrapping
	// store.ErrUnsupported.
	ObjectLock bool
}

// Init makes the store rawURL names ready for backups and reports whether
// it created it: a file store's directory is made if missing; an S3
// bucket must exist, unless init.CreateBucket, when a missing one is made.
func Init(ctx context.Context, rawURL string, opts Options, init InitOptions) (st store.Store, created bool, err error) {
	if strings.HasPrefix(rawURL, "file://") {
		if init.ObjectLock {
			return nil, false, fmt.Errorf("store %s: the file store cannot lock objects (object lock needs an S3 bucket made with it): %w", rawURL, store.ErrUnsupported)
		}
		if st, err = Open(rawURL, opts); err == nil {
			return st, false, nil
		}
		if !errors.Is(err, store.ErrNoStore) {
			return nil, false, err
		}
		opts.Create = true
		st, err = Open(rawURL, opts)
		return st, err == nil, err
	}
	if st, err = Open(rawURL, opts); err != nil {
		return nil, false, err
	}
	s3st, ok := store.As[*s3.Store](st)
	if !ok {
		return st, false, nil
	}
	created, err = s3st.InitBucket(ctx, s3.BucketOptions{Create: init.CreateBucket, ObjectLock: init.ObjectLock})
	return st, created, err
}
