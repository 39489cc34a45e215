// Package s3 stores objects in an S3-compatible bucket (AWS S3, MinIO, Ceph
// RGW…) through minio-go; URL s3://BUCKET/PREFIX.
//
// Puts stream: a body of unknown length is read a part (Config.PartSize,
// 5 MiB unless set) at a time, and each part uploads while the next one
// fills, so memory stays at two parts whatever the object's size; a body
// under S3's smallest part (5 MiB) goes up in one PUT, a longer one as a
// multipart upload whose first part is that smallest, so that the upload
// starts early. A body that knows its length (it has a Len
// method, like *bytes.Reader, or is an io.Seeker) is handed to minio-go's
// PutObject, which uploads large ones in parallel parts. Create-only puts
// send If-None-Match: * with the PUT or with both the start and the
// completion of the multipart upload. A failed multipart upload is aborted
// before Put returns (see RemoveStaleUploads for uploads whose process
// died).
//
// minio-go itself retries each request (and each part, which it holds in
// memory) up to Config.MaxRetries times, within about ten seconds; a
// streamed Put then goes on repeating its requests (each part it holds,
// the upload's start and completion) for Config.Persist (30 s), and the
// abort of an upload that failed as long again, so that a SlowDown
// episode or a short outage neither fails a backup nor leaves an upload
// behind. A read of an object that fails on the way resumes where it
// stopped (a GET of the rest, if the object is still the same) with the
// same persistence. Errors still retryable after that are marked
// store.ErrTransient for store/retry.
package s3

import (
	"bytes"
	"cmp"
	"context"
	"crypto/md5"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/encrypt"

	"github.com/hsmbackup/hsmbackup/internal/ctxio"
	"github.com/hsmbackup/hsmbackup/store"
)

// Encryption selects server-side encryption.
type Encryption string

// Server-side encryption modes.
const (
	// NoEncryption leaves encryption to the bucket's default.
	NoEncryption Encryption = ""
	// SSES3 asks for SSE-S3: keys the service manages (AES256).
	SSES3 Encryption = "SSE-S3"
	// SSEKMS asks for SSE-KMS under Config.KMSKeyID.
	SSEKMS Encryption = "SSE-KMS"
)

// Part sizes.
const (
	// DefaultPartSize is the multipart part size when Config.PartSize is 0:
	// S3's smallest, so that a streamed Put holds 10 MiB (two parts) and
	// sends its first part early. 10,000 parts of it make 48.8 GiB, far
	// beyond any HSM image (a million RSA-4096 keys are about 2.5 GB).
	DefaultPartSize = MinPartSize
	// MinPartSize is S3's smallest part (but the last).
	MinPartSize = 5 << 20
)

// DefaultPersist is Config.Persist's default: a streamed upload rides out
// a SlowDown episode or an outage of half a minute (minio-go's own
// retries give up within about ten seconds).
const DefaultPersist = 30 * time.Second

// Config configures a Store. Only Bucket is required; the zero value of
// every other field is a documented default.
type Config struct {
	// Bucket is the bucket's name.
	Bucket string

	// Prefix, if set, is put before every key with a slash between:
	// key k is the object Prefix/k. Leading and trailing slashes are
	// ignored.
	Prefix string

	// Endpoint is the service's address, as "host[:port]" (HTTPS unless
	// Insecure) or as an "http://" or "https://" URL. Empty means the
	// environment's AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else the
	// AWS profile's endpoint_url (its S3 one first; awsconfig.go), else
	// s3.amazonaws.com.
	Endpoint string

	// Insecure uses plain HTTP for an Endpoint given without a scheme.
	Insecure bool

	// Region is the bucket's region. Empty means AWS_REGION, else
	// AWS_DEFAULT_REGION, else the AWS profile's region (awsconfig.go),
	// else minio-go asks the service (and caches it).
	Region string

	// Credentials signs requests. Nil means, in order: the AWS environment
	// variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
	// AWS_SESSION_TOKEN), the AWS shared config and credentials files
	// (AWS_PROFILE), then an IAM role from the instance or container.
	Credentials *credentials.Credentials

	// Encryption, if set, asks for server-side encryption of every object
	// put; KMSKeyID names the key for SSEKMS (required then).
	Encryption Encryption
	KMSKeyID   string

	// PartSize is the multipart part size in bytes: 0 means
	// DefaultPartSize; otherwise at least MinPartSize.
	PartSize uint64

	// SendContentMD5 sends Content-MD5 with every PUT and part, which some
	// S3-compatible services want instead of streaming signatures. It is
	// always sent when a Put asks for retention or legal hold, as AWS
	// requires.
	SendContentMD5 bool

	// MaxRetries bounds minio-go's retries of each request: 0 means its
	// default (10), 1 means no retries.
	MaxRetries int

	// Persist is how long a streamed Put (a body of unknown length, such
	// as an image coming from its HSM) keeps repeating a request that
	// failed transiently (503 SlowDown, a reset, a refused connection)
	// after minio-go's own retries gave up: each part, which it holds in
	// memory, the upload's start and completion, and the abort of an
	// upload that failed. 0 means DefaultPersist; negative, never. A body
	// of known length is repeated whole by store/retry instead.
	Persist time.Duration

	// Transport carries the requests; nil means minio-go's default. Tests
	// use it to inject faults; deployments to add a CA.
	Transport http.RoundTripper
}

// Store is a bucket, or a prefix of one.
type Store struct {
	client   *minio.Client
	bucket   string
	prefix   string // "" or ending in "/"
	partSize uint64
	persist  time.Duration
	md5      bool
	sse      encrypt.ServerSide
	url      string
	region   string // the configured region; "" to let minio-go ask

	creds   *credentials.Credentials
	chained bool // creds is the default chain (env, shared files, IAM)
}

var (
	_ store.Store              = (*Store)(nil)
	_ store.StaleUploadRemover = (*Store)(nil)
	_ store.Prefixed           = (*Store)(nil)
)

// endpoint is Config's resolved address.
type endpoint struct {
	host   string // host[:port]
	secure bool
	region string
}

// resolve applies the defaults and environment variables to c.
func (c Config) resolve(getenv func(string) string) (endpoint, error) {
	ep := endpoint{region: c.Region}
	if ep.region == "" {
		ep.region = getenv("AWS_REGION")
	}
	if ep.region == "" {
		ep.region = getenv("AWS_DEFAULT_REGION")
	}
	raw, insecure := c.Endpoint, c.Insecure
	if raw == "" {
		insecure = false
		if raw = getenv("AWS_ENDPOINT_URL_S3"); raw == "" {
			raw = getenv("AWS_ENDPOINT_URL")
		}
	}
	if raw == "" || ep.region == "" {
		prof, err := loadAWSProfile(getenv)
		if err != nil {
			return ep, err
		}
		if ep.region == "" {
			ep.region = prof.region
		}
		if raw == "" && !strings.EqualFold(getenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"), "true") {
			raw = prof.endpoint
		}
	}
	if raw == "" {
		ep.host, ep.secure = "s3.amazonaws.com", true
		return ep, nil
	}
	if !strings.Contains(raw, "://") {
		ep.host, ep.secure = raw, !insecure
		if strings.ContainsAny(raw, "/?#") {
			return ep, fmt.Errorf("endpoint %q: want host[:port] or a URL", raw)
		}
		return ep, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return ep, fmt.Errorf("endpoint: %w", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return ep, fmt.Errorf("endpoint %q: scheme must be http or https", raw)
	case u.Host == "":
		return ep, fmt.Errorf("endpoint %q: no host", raw)
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.User != nil:
		return ep, fmt.Errorf("endpoint %q: want only scheme, host and port", raw)
	}
	ep.host, ep.secure = u.Host, u.Scheme == "https"
	return ep, nil
}

// New makes a Store from cfg. It does no I/O: a wrong bucket or
// credentials show on the first call.
func New(cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3 store: no bucket")
	}
	ep, err := cfg.resolve(os.Getenv)
	if err != nil {
		return nil, fmt.Errorf("s3 store: %w", err)
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		if err := store.ValidKey(prefix); err != nil {
			return nil, fmt.Errorf("s3 store: prefix: %w", err)
		}
		prefix += "/"
	}
	partSize := cfg.PartSize
	switch {
	case partSize == 0:
		partSize = DefaultPartSize
	case partSize < MinPartSize:
		return nil, fmt.Errorf("s3 store: part size %d is below S3's minimum %d", partSize, MinPartSize)
	}
	var sse encrypt.ServerSide
	switch cfg.Encryption {
	case NoEncryption:
		if cfg.KMSKeyID != "" {
			return nil, errors.New("s3 store: a KMS key id without SSE-KMS encryption")
		}
	case SSES3:
		if cfg.KMSKeyID != "" {
			return nil, errors.New("s3 store: a KMS key id with SSE-S3 encryption")
		}
		sse = encrypt.NewSSE()
	case SSEKMS:
		if cfg.KMSKeyID == "" {
			return nil, errors.New("s3 store: SSE-KMS needs a KMS key id")
		}
		if sse, err = encrypt.NewSSEKMS(cfg.KMSKeyID, nil); err != nil {
			return nil, fmt.Errorf("s3 store: SSE-KMS: %w", err)
		}
	default:
		return nil, fmt.Errorf("s3 store: unknown encryption %q (want %q or %q)", cfg.Encryption, SSES3, SSEKMS)
	}
	creds, chained := cfg.Credentials, cfg.Credentials == nil
	if chained {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{},
			&credentials.FileAWSCredentials{},
			&credentials.IAM{},
		})
	}
	transport := cfg.Transport
	if transport == nil {
		if transport, err = minio.DefaultTransport(ep.secure); err != nil {
			return nil, fmt.Errorf("s3 store: %w", err)
		}
	}
	client, err := minio.New(ep.host, &minio.Options{
		Creds:      creds,
		Secure:     ep.secure,
		Region:     ep.region,
		Transport:  countingTransport{transport},
		MaxRetries: cfg.MaxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 store: %w", err)
	}
	return &Store{
		client:   client,
		bucket:   cfg.Bucket,
		prefix:   prefix,
		partSize: partSize,
		persist:  cmp.Or(cfg.Persist, DefaultPersist),
		md5:      cfg.SendContentMD5,
		sse:      sse,
		url:      "s3://" + cfg.Bucket + "/" + strings.TrimSuffix(prefix, "/"),
		region:   ep.region,
		creds:    creds,
		chained:  chained,
	}, nil
}

// BucketOptions are the options of InitBucket.
type BucketOptions struct {
	// Create makes a missing bucket (in the configured region).
	Create bool
	// ObjectLock requires a bucket with object lock: a bucket made is
	// made with it (and so with versioning), and an existing one must
	// have it.
	ObjectLock bool
}

// InitBucket checks that the store's bucket exists and, if it does not
// and opts.Create is set, creates it (in the configured region). It
// reports whether it created it; a missing bucket it may not create is an
// error wrapping store.ErrNoStore. With opts.ObjectLock a bucket it makes
// has object lock, and an existing bucket without it is an error wrapping
// store.ErrUnsupported: S3 turns object lock on only when a bucket is
// made (or, on AWS, through its versioning and object-lock settings).
func (s *Store) InitBucket(ctx context.Context, opts BucketOptions) (bool, error) {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return false, fmt.Errorf("bucket %s: %w", s.bucket, s.classify(ctx, err, nil))
	}
	if ok {
		if opts.ObjectLock {
			if err := s.CheckObjectLock(ctx); err != nil {
				return false, err
			}
		}
		return false, nil
	}
	if !opts.Create {
		return false, fmt.Errorf("bucket %s: %w (create it, or give --create-bucket)", s.bucket, store.ErrNoStore)
	}
	mo := minio.MakeBucketOptions{Region: s.region, ObjectLocking: opts.ObjectLock}
	if err := s.client.MakeBucket(ctx, s.bucket, mo); err != nil {
		return false, fmt.Errorf("create bucket %s: %w", s.bucket, s.classify(ctx, err, nil))
	}
	return true, nil
}

var _ store.ObjectLocker = (*Store)(nil)

// CheckObjectLock implements store.ObjectLocker: it reads the bucket's
// object-lock configuration (one GET, s3:GetBucketObjectLockConfiguration).
func (s *Store) CheckObjectLock(ctx context.Context) error {
	enabled, _, _, _, err := s.client.GetObjectLockConfig(ctx, s.bucket)
	var resp minio.ErrorResponse
	switch {
	case err == nil && enabled == "Enabled":
		return nil
	case err == nil, errors.As(err, &resp) && resp.Code == "ObjectLockConfigurationNotFoundError":
		return fmt.Errorf("bucket %s has no object lock (a bucket gets it when it is made): %w", s.bucket, store.ErrUnsupported)
	}
	return fmt.Errorf("bucket %s: object lock configuration: %w", s.bucket, s.classify(ctx, err, nil))
}

// ObjectLock implements store.ObjectLocker from the headers of a HEAD of
// the object, which AWS sends only to callers allowed to read the
// retention and legal hold.
func (s *Store) ObjectLock(ctx context.Context, key string) (store.Retention, bool, error) {
	if err := store.ValidKey(key); err != nil {
		return store.Retention{}, false, fmt.Errorf("object lock: %w", err)
	}
	oi, err := s.client.StatObject(ctx, s.bucket, s.prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return store.Retention{}, false, fmt.Errorf("object lock %s: %w", key, s.classify(ctx, err, nil))
	}
	var r store.Retention
	if mode := store.RetentionMode(strings.ToUpper(oi.Metadata.Get("X-Amz-Object-Lock-Mode"))); mode != "" {
		until, err := time.Parse(time.RFC3339, oi.Metadata.Get("X-Amz-Object-Lock-Retain-Until-Date"))
		if err != nil {
			return store.Retention{}, false, fmt.Errorf("object lock %s: retain-until date: %w", key, err)
		}
		r = store.Retention{Mode: mode, Until: until.UTC()}
		if err := r.Validate(); err != nil {
			return store.Retention{}, false, fmt.Errorf("object lock %s: %w", key, err)
		}
	}
	hold := strings.EqualFold(oi.Metadata.Get("X-Amz-Object-Lock-Legal-Hold"), "ON")
	return r, hold, nil
}

// String returns the store's URL.
func (s *Store) String() string { return s.url }

// Client returns the minio-go client, for what the Store does not cover.
func (s *Store) Client() *minio.Client { return s.client }

// Bucket returns the bucket's name.
func (s *Store) Bucket() string { return s.bucket }

// KeyPrefix implements store.Prefixed: the configured prefix, "" or
// ending in a slash.
func (s *Store) KeyPrefix() string { return s.prefix }

// ObjectName returns the object name that key is stored under.
func (s *Store) ObjectName(key string) string { return s.prefix + key }

// Put implements store.Store. With opts.CreateOnly it sends
// If-None-Match: * with the PUT, or with the initiation and the completion
// of a multipart upload; 412 and 409 answers mean store.ErrExists.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, opts store.PutOptions) error {
	if err := store.ValidKey(key); err != nil {
		return fmt.Errorf("put: %w", err)
	}
	if err := opts.Retention.Validate(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	size, err := sizeOf(r)
	if err != nil {
		return fmt.Errorf("put %s: size body: %w", key, err)
	}
	po := minio.PutObjectOptions{
		ContentType:          "application/octet-stream",
		PartSize:             s.partSize,
		ServerSideEncryption: s.sse,
		SendContentMd5:       s.md5,
	}
	if opts.CreateOnly && opts.IfMatch != "" {
		return fmt.Errorf("put %s: create-only and if-match together", key)
	}
	setCondition(&po, opts)
	if opts.Retention.Mode != "" {
		po.Mode = minio.RetentionMode(opts.Retention.Mode)
		po.RetainUntilDate = opts.Retention.Until.UTC()
		po.SendContentMd5 = true
	}
	if opts.LegalHold {
		po.LegalHold = minio.LegalHoldEnabled
		po.SendContentMd5 = true
	}
	if size < 0 || (condition(opts) != nil && size > int64(s.partSize)) {
		err = s.putStream(ctx, s.prefix+key, r, po, opts)
	} else {
		_, err = s.client.PutObject(ctx, s.bucket, s.prefix+key, r, size, po)
	}
	if err != nil {
		if opts.Retention.Mode != "" || opts.LegalHold {
			err = lockRefused(err)
		}
		return fmt.Errorf("put %s: %w", key, s.classify(ctx, err, condition(opts)))
	}
	return nil
}

// lockRefused marks as store.ErrUnsupported the refusal of a lock in a
// bucket without object lock: MinIO and AWS answer 400 InvalidRequest,
// "Bucket is missing ObjectLockConfiguration" (AWS: "Object Lock
// Configuration").
func lockRefused(err error) error {
	var resp minio.ErrorResponse
	if errors.As(err, &resp) && resp.Code == "InvalidRequest" {
		msg := strings.ToLower(strings.ReplaceAll(resp.Message, " ", ""))
		if strings.Contains(msg, "objectlockconfiguration") {
			return fmt.Errorf("%w: %w", store.ErrUnsupported, err)
		}
	}
	return err
}

// putStream uploads r, of unknown length, holding at most two parts in
// memory, one uploading while the next fills: a body under MinPartSize
// goes in one PUT, a longer one as a multipart upload. It drives the
// multipart upload itself, through minio.Core, because minio-go's
// PutObject (v7.4.1) drops If-None-Match from CompleteMultipartUpload,
// checking a create-only upload only when it starts: two creators that
// start together would both win. A failed multipart upload is aborted
// before putStream returns, even when ctx is cancelled.
//
// abortTimeout bounds each try to abort a failed multipart upload, which
// runs detached from the (maybe cancelled) context of the Put. An upload
// the store failed is aborted with the store's persistence (the outage
// that failed it may go on); an upload its caller interrupted is tried
// once, so that it ends within seconds even against a slow endpoint. An
// upload whose abort fails is left for RemoveStaleUploads (or the
// bucket's lifecycle rule).
const abortTimeout = 4 * time.Second

func (s *Store) putStream(ctx context.Context, name string, r io.Reader, po minio.PutObjectOptions, opts store.PutOptions) (err error) {
	caller := ctx // cancelled only by the caller; ctx also by a failed part
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r = ctxio.Reader(ctx, r)
	// The first part is S3's smallest, so that the upload starts as soon
	// as that much of the body is there, not a whole part later.
	part, rerr := readPart(r, nil, int(min(s.partSize, MinPartSize)))
	if rerr == io.EOF {
		return again(ctx, s.persist, func(ctx context.Context) error {
			_, err := s.client.PutObject(ctx, s.bucket, name, bytes.NewReader(part), int64(len(part)), po)
			return err
		})
	}
	if rerr != nil {
		return rerr
	}
	core := minio.Core{Client: s.client}
	var uploadID string
	var starts atomic.Int32 // requests sent to start the upload
	err = again(ctx, s.persist, func(ctx context.Context) (err error) {
		uploadID, err = core.NewMultipartUpload(context.WithValue(ctx, requestsKey{}, &starts), s.bucket, name, po)
		return err
	})
	if err != nil {
		return fmt.Errorf("start multipart upload: %w", err)
	}
	defer func() {
		if err != nil {
			if aerr := s.abort(caller, core, name, uploadID); aerr != nil {
				err = fmt.Errorf("%w (and abort multipart upload %s: %w)", err, uploadID, aerr)
			}
		}
		if starts.Load() > 1 && opts.CreateOnly {
			s.abortStrays(caller, core, name, uploadID)
		}
	}()

	// One part uploads while the next one fills: two buffers in all.
	type job struct {
		n    int
		part []byte
	}
	jobs := make(chan job)
	free := make(chan []byte, 2)
	free <- make([]byte, 0, s.partSize) // the second buffer, at its size: no growing garbage
	var parts []minio.CompletePart
	uploaded := make(chan error, 1)
	go func() {
		var uerr error
		for j := range jobs {
			if uerr == nil {
				var popts minio.PutObjectPartOptions
				if po.SendContentMd5 {
					sum := md5.Sum(j.part)
					popts.Md5Base64 = base64.StdEncoding.EncodeToString(sum[:])
				}
				var p minio.ObjectPart
				err := again(ctx, s.persist, func(ctx context.Context) (err error) {
					p, err = core.PutObjectPart(ctx, s.bucket, name, uploadID, j.n, bytes.NewReader(j.part), int64(len(j.part)), popts)
					return err
				})
				if err != nil {
					uerr = fmt.Errorf("upload part %d: %w", j.n, err)
					cancel() // the body need not be read further
				} else {
					parts = append(parts, minio.CompletePart{PartNumber: j.n, ETag: p.ETag})
				}
			}
			free <- j.part
		}
		uploaded <- uerr
	}()
	rerr = func() error {
		for n := 1; ; n++ {
			if n > maxParts {
				return fmt.Errorf("object larger than %d parts of %d bytes", maxParts, s.partSize)
			}
			select {
			case jobs <- job{n, part}:
			case <-ctx.Done():
				return ctx.Err()
			}
			if rerr == io.EOF {
				return nil
			}
			var buf []byte
			select {
			case buf = <-free:
			case <-ctx.Done():
				return ctx.Err()
			}
			part, rerr = readPart(r, buf, int(s.partSize))
			if rerr != nil && rerr != io.EOF {
				return rerr
			}
			if len(part) == 0 {
				return nil
			}
		}
	}()
	close(jobs)
	if uerr := <-uploaded; uerr != nil {
		return uerr // the cause, rather than the cancelled read it made
	}
	if rerr != nil {
		return rerr
	}
	var copts minio.PutObjectOptions
	setCondition(&copts, opts)
	err = again(ctx, s.persist, func(ctx context.Context) error {
		_, err := core.CompleteMultipartUpload(ctx, s.bucket, name, uploadID, parts, copts)
		return err
	})
	if err != nil {
		return fmt.Errorf("complete multipart upload: %w", err)
	}
	return nil
}

// abort aborts a failed multipart upload, detached from ctx, the Put's:
// once if ctx is done (the caller gave up); else, as the store failed
// it, with the store's persistence again (at least 10 s), since the
// outage that failed the upload may well go on. An upload already gone
// counts as aborted.
func (s *Store) abort(ctx context.Context, core minio.Core, name, uploadID string) error {
	try := func(actx context.Context) error {
		tctx, cancel := context.WithTimeout(actx, abortTimeout)
		defer cancel()
		err := core.AbortMultipartUpload(tctx, s.bucket, name, uploadID)
		if err != nil && errors.Is(classify(tctx, err, nil), store.ErrNotFound) {
			return nil // a repeat after a lost answer
		}
		return err
	}
	actx := context.WithoutCancel(ctx)
	if ctx.Err() != nil || s.persist < 0 {
		return try(actx)
	}
	return again(actx, max(s.persist, 10*time.Second), try)
}

// abortStrays aborts the multipart uploads of name other than ours, once
// the start of ours took more than one request. A start whose answer was
// lost (a reset, a response cut short) is sent again, by minio-go or by
// again, and the upload the store began for the lost one would stay,
// never completed, until RemoveStaleUploads sweeps it a day later. A
// create-only streamed Put writes a new name (an image under a new backup
// id), so every other upload of it is one of its own. (Were another
// writer racing for the name, its upload aborted would fail it, as its
// completion would have.) Best effort: what a failed listing leaves, the
// sweep removes.
func (s *Store) abortStrays(ctx context.Context, core minio.Core, name, ours string) {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	var strays []string
	for u := range s.client.ListIncompleteUploads(lctx, s.bucket, name, false) {
		if u.Err != nil {
			break
		}
		if u.Key == name && u.UploadID != ours {
			strays = append(strays, u.UploadID)
		}
	}
	for _, id := range strays {
		s.abort(ctx, core, name, id)
	}
}

// requestsKey keys a context's *atomic.Int32 that countingTransport adds
// each request sent with it to: minio-go repeats a request whose answer
// was lost without telling its caller.
type requestsKey struct{}

type countingTransport struct{ inner http.RoundTripper }

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if n, ok := r.Context().Value(requestsKey{}).(*atomic.Int32); ok {
		n.Add(1)
	}
	return t.inner.RoundTrip(r)
}

// again runs op, a request of a streamed Put, until it succeeds, fails
// other than transiently, ctx is done, or persist is spent in waits
// between tries (the last one shortened to fit): 0.5 s doubling to 8 s,
// drawn from the upper half of each so that uploads that failed together
// do not come back together.
func again(ctx context.Context, persist time.Duration, op func(context.Context) error) error {
	var waited time.Duration
	backoff := 500 * time.Millisecond
	for {
		err := op(ctx)
		if err == nil || !errors.Is(classify(ctx, err, nil), store.ErrTransient) || waited >= persist {
			return err
		}
		d := min(backoff/2+rand.N(backoff/2), persist-waited)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(d):
		}
		waited += d
		backoff = min(2*backoff, 8*time.Second)
	}
}

// setCondition adds opts' condition, if any, to po: If-None-Match: * for
// a create-only Put, If-Match for an if-match one.
func setCondition(po *minio.PutObjectOptions, opts store.PutOptions) {
	switch {
	case opts.CreateOnly:
		po.SetMatchETagExcept("*")
	case opts.IfMatch != "":
		po.SetMatchETag(opts.IfMatch)
	}
}

// condition is the error a failed precondition of opts means: ErrExists
// for create-only, ErrConflict for if-match, nil without one.
func condition(opts store.PutOptions) error {
	switch {
	case opts.CreateOnly:
		return store.ErrExists
	case opts.IfMatch != "":
		return store.ErrConflict
	}
	return nil
}

// maxParts is S3's limit on the parts of one upload.
const maxParts = 10000

// readPart reads from r into buf, reusing its memory, until it holds size
// bytes or r ends. It returns io.EOF when r ended, with the bytes read
// before. buf grows as data comes, so a small body costs little memory.
func readPart(r io.Reader, buf []byte, size int) ([]byte, error) {
	buf = buf[:0]
	for len(buf) < size {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(max(cap(buf), 64<<10), size-len(buf)))
		}
		n, err := r.Read(buf[len(buf):min(cap(buf), size)])
		buf = buf[:len(buf)+n]
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// sizeOf returns how many bytes r has left when it can tell cheaply, or
// -1 (stream it).
func sizeOf(r io.Reader) (int64, error) {
	switch r := r.(type) {
	case interface{ Len() int }:
		return int64(r.Len()), nil
	case io.Seeker:
		cur, err := r.Seek(0, io.SeekCurrent)
		if err != nil {
			return -1, nil // a pipe, say: stream it
		}
		end, err := r.Seek(0, io.SeekEnd)
		if err != nil {
			return -1, err
		}
		if _, err := r.Seek(cur, io.SeekStart); err != nil {
			return -1, err
		}
		return end - cur, nil
	}
	return -1, nil
}

// Get implements store.Store. The reader is minio-go's *minio.Object, which
// also seeks and reads at offsets.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := store.ValidKey(key); err != nil {
		return nil, fmt.Errorf("get: %w", err)
	}
	obj, err := s.client.GetObject(ctx, s.bucket, s.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, s.classify(ctx, err, errReplaced))
	}
	// Stat sends the GET, so a missing object shows here, not on Read.
	info, err := obj.Stat()
	if err != nil {
		obj.Close()
		return nil, fmt.Errorf("get %s: %w", key, s.classify(ctx, err, errReplaced))
	}
	return &objectReader{obj: obj, s: s, ctx: ctx, key: key, etag: info.ETag}, nil
}

// errReplaced is a GET's failed precondition: the object was replaced
// while it was read. It is ErrConflict, but a missing object stays
// ErrNotFound.
var errReplaced = fmt.Errorf("replaced while read: %w", store.ErrConflict)

// objectReader classifies a GET's later errors as Get's, and resumes a
// read that fails transiently (a reset connection, a restarted server)
// where it stopped: a GET of the rest, with If-Match on the ETag first
// seen, repeated with the store's persistence. An object replaced
// meanwhile fails the read with ErrConflict instead of mixing two
// versions.
type objectReader struct {
	obj  *minio.Object
	s    *Store
	ctx  context.Context
	key  string
	etag string
	off  int64 // bytes read
	// stuck counts resumes since the last byte read: a server that
	// answers each resumed GET and then fails it is given up on.
	stuck int
}

// maxStuckResumes bounds the resumes of a read that get no byte further.
const maxStuckResumes = 3

func (r *objectReader) Read(p []byte) (int, error) {
	for {
		n, err := r.obj.Read(p)
		r.off += int64(n)
		if n > 0 {
			r.stuck = 0
		}
		if err == nil || err == io.EOF {
			return n, err
		}
		err = r.s.classify(r.ctx, err, errReplaced)
		if !store.IsTransient(err) || r.s.persist < 0 || r.stuck >= maxStuckResumes || r.resume() != nil {
			return n, fmt.Errorf("get %s: %w", r.key, err)
		}
		if n > 0 {
			return n, nil
		}
	}
}

// resume replaces the failed GET with one of the rest of the same object.
func (r *objectReader) resume() error {
	r.obj.Close()
	r.stuck++
	return again(r.ctx, r.s.persist, func(ctx context.Context) error {
		opts := minio.GetObjectOptions{}
		if err := opts.SetMatchETag(r.etag); err != nil {
			return err
		}
		if r.off > 0 {
			if err := opts.SetRange(r.off, 0); err != nil {
				return err
			}
		}
		obj, err := r.s.client.GetObject(ctx, r.s.bucket, r.s.prefix+r.key, opts)
		if err == nil {
			if _, err = obj.Stat(); err != nil {
				obj.Close()
			}
		}
		if err != nil {
			return err
		}
		r.obj = obj
		return nil
	})
}

func (r *objectReader) Close() error { return r.obj.Close() }

// Stat implements store.Store.
func (s *Store) Stat(ctx context.Context, key string) (store.ObjectInfo, error) {
	if err := store.ValidKey(key); err != nil {
		return store.ObjectInfo{}, fmt.Errorf("stat: %w", err)
	}
	oi, err := s.client.StatObject(ctx, s.bucket, s.prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return store.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, s.classify(ctx, err, nil))
	}
	return store.ObjectInfo{Key: key, Size: oi.Size, ModTime: oi.LastModified, ETag: oi.ETag}, nil
}

// List implements store.Store. S3 lists keys in ascending byte order, a
// page of up to 1,000 at a time.
func (s *Store) List(ctx context.Context, prefix string, fn func(store.ObjectInfo) error) error {
	if err := store.ValidPrefix(prefix); err != nil {
		return fmt.Errorf("list: %w", err)
	}
	// MinIO refuses a prefix ending in a "." or ".." segment ("a/."):
	// list the directory above and filter.
	listPrefix := prefix
	if last := prefix[strings.LastIndexByte(prefix, '/')+1:]; last == "." || last == ".." {
		listPrefix = prefix[:len(prefix)-len(last)]
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops minio-go's lister if fn stops early
	for oi := range s.client.ListObjects(lctx, s.bucket, minio.ListObjectsOptions{
		Prefix:    s.prefix + listPrefix,
		Recursive: true,
	}) {
		if oi.Err != nil {
			return fmt.Errorf("list %q: %w", prefix, s.classify(ctx, oi.Err, nil))
		}
		key := strings.TrimPrefix(oi.Key, s.prefix)
		if strings.HasSuffix(key, "/") || !strings.HasPrefix(key, prefix) {
			continue // a "directory" marker some tools make, or filtered
		}
		if err := fn(store.ObjectInfo{Key: key, Size: oi.Size, ModTime: oi.LastModified, ETag: oi.ETag}); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %q: %w", prefix, err)
	}
	return nil
}

// Delete implements store.Store. In a bucket with versioning (every bucket
// with object lock has it) it deletes every version of the key, newest
// first, instead of hiding them under a delete marker, so that an object
// under retention or legal hold makes Delete fail with store.ErrLocked and
// an older version does not come back.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := store.ValidKey(key); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	name := s.prefix + key
	oi, err := s.client.StatObject(ctx, s.bucket, name, minio.StatObjectOptions{})
	if err != nil {
		err = s.classify(ctx, err, nil)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if oi.VersionID == "" || oi.VersionID == "null" {
		if err := s.client.RemoveObject(ctx, s.bucket, name, minio.RemoveObjectOptions{}); err != nil {
			return fmt.Errorf("delete %s: %w", key, s.classifyDelete(ctx, err))
		}
		return nil
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for v := range s.client.ListObjects(lctx, s.bucket, minio.ListObjectsOptions{
		Prefix:       name,
		Recursive:    true,
		WithVersions: true,
	}) {
		if v.Err != nil {
			return fmt.Errorf("delete %s: list versions: %w", key, s.classify(ctx, v.Err, nil))
		}
		if v.Key != name {
			continue
		}
		if err := s.client.RemoveObject(ctx, s.bucket, name, minio.RemoveObjectOptions{VersionID: v.VersionID}); err != nil {
			return fmt.Errorf("delete %s: version %s: %w", key, v.VersionID, s.classifyDelete(ctx, err))
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// Upload is an incomplete multipart upload.
type Upload struct {
	Key       string // the store key, without the store's prefix
	UploadID  string
	Initiated time.Time
}

// ListIncompleteUploads calls fn for each multipart upload begun under
// prefix and neither completed nor aborted. MinIO lists only the uploads
// of one exact key: pass a whole key there; AWS S3 takes any prefix.
func (s *Store) ListIncompleteUploads(ctx context.Context, prefix string, fn func(Upload) error) error {
	if err := store.ValidPrefix(prefix); err != nil {
		return fmt.Errorf("list incomplete uploads: %w", err)
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for u := range s.client.ListIncompleteUploads(lctx, s.bucket, s.prefix+prefix, true) {
		if u.Err != nil {
			return fmt.Errorf("list incomplete uploads %q: %w", prefix, s.classify(ctx, u.Err, nil))
		}
		up := Upload{Key: strings.TrimPrefix(u.Key, s.prefix), UploadID: u.UploadID, Initiated: u.Initiated}
		if err := fn(up); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list incomplete uploads %q: %w", prefix, err)
	}
	return nil
}

// AbortUpload aborts one incomplete multipart upload, deleting its parts.
func (s *Store) AbortUpload(ctx context.Context, u Upload) error {
	core := minio.Core{Client: s.client}
	if err := core.AbortMultipartUpload(ctx, s.bucket, s.prefix+u.Key, u.UploadID); err != nil {
		err = s.classify(ctx, err, nil)
		if errors.Is(err, store.ErrNotFound) {
			return nil // already gone
		}
		return fmt.Errorf("abort upload %s of %s: %w", u.UploadID, u.Key, err)
	}
	return nil
}

// RemoveStaleUploads implements store.StaleUploadRemover: it aborts the
// incomplete multipart uploads under the store's prefix begun before
// olderThan. It lists the whole bucket's uploads and keeps those under
// the prefix, because MinIO lists uploads only for a whole bucket or one
// exact object name, never for a prefix.
func (s *Store) RemoveStaleUploads(ctx context.Context, olderThan time.Time) (int, error) {
	var stale []Upload
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for u := range s.client.ListIncompleteUploads(lctx, s.bucket, "", true) {
		if u.Err != nil {
			return 0, fmt.Errorf("remove stale uploads: %w", s.classify(ctx, u.Err, nil))
		}
		key, ok := strings.CutPrefix(u.Key, s.prefix)
		if ok && u.Initiated.Before(olderThan) {
			stale = append(stale, Upload{Key: key, UploadID: u.UploadID, Initiated: u.Initiated})
		}
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("remove stale uploads: %w", err)
	}
	n := 0
	for _, u := range stale {
		if err := s.AbortUpload(ctx, u); err != nil {
			return n, fmt.Errorf("remove stale uploads: %w", err)
		}
		n++
	}
	return n, nil
}

// retryableCodes are the S3 error codes worth another attempt, as minio-go
// counts them (retry.go).
var retryableCodes = map[string]bool{
	"RequestError": true, "RequestTimeout": true, "Throttling": true,
	"ThrottlingException": true, "RequestLimitExceeded": true,
	"RequestThrottled": true, "InternalError": true, "ExpiredToken": true,
	"ExpiredTokenException": true, "SlowDown": true, "SlowDownWrite": true,
	"SlowDownRead": true, "ServiceUnavailable": true,
}

// retryableStatus are the HTTP statuses worth another attempt, as minio-go
// counts them.
var retryableStatus = map[int]bool{
	http.StatusRequestTimeout: true, http.StatusTooManyRequests: true,
	499: true, http.StatusInternalServerError: true,
	http.StatusBadGateway: true, http.StatusServiceUnavailable: true,
	http.StatusGatewayTimeout: true, 520: true,
}

// classify maps a minio-go error to the store's sentinels, keeping err in
// the chain. cond is what a 412 or 409 means, for a conditional Put
// (store.ErrExists or store.ErrConflict), and nil for other calls.
// classify is the package's classify, and a refusal of a request made
// with no credentials at all says which sources were tried, instead of a
// bare "Access Denied.".
func (s *Store) classify(ctx context.Context, err error, cond error) error {
	err = classify(ctx, err, cond)
	if s.chained && errors.Is(err, store.ErrAccessDenied) {
		if v, gerr := s.creds.GetWithContext(nil); gerr == nil && v.SignerType == credentials.SignatureAnonymous {
			err = fmt.Errorf("%w (no credentials found: tried $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY, the shared credentials file %s, and an IAM role of the instance or container)", err, sharedCredentialsFile())
		}
	}
	return err
}

// sharedCredentialsFile names the file FileAWSCredentials reads, with its
// profile.
func sharedCredentialsFile() string {
	path := os.Getenv("AWS_SHARED_CREDENTIALS_FILE")
	if path == "" {
		path = "~/.aws/credentials"
	}
	profile := os.Getenv("AWS_PROFILE")
	if profile == "" {
		profile = "default"
	}
	return path + " (profile " + profile + ")"
}

func classify(ctx context.Context, err error, cond error) error {
	if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		switch {
		case cond == store.ErrConflict && resp.Code == "NoSuchKey": // if-match, and the object is gone
			return fmt.Errorf("%w: %w", store.ErrConflict, err)
		case resp.Code == "NoSuchKey" || resp.Code == "NoSuchVersion" || resp.Code == "NoSuchUpload":
			return fmt.Errorf("%w: %w", store.ErrNotFound, err)
		case resp.Code == "NoSuchBucket":
			return fmt.Errorf("%w: %w", store.ErrNoStore, err)
		case resp.Code == "AccessDenied" || resp.Code == "InvalidAccessKeyId" || resp.Code == "SignatureDoesNotMatch" ||
			resp.Code == "InvalidToken" || resp.Code == "ExpiredToken" || resp.StatusCode == http.StatusForbidden:
			return fmt.Errorf("%w: %w", store.ErrAccessDenied, err)
		case cond != nil && (resp.Code == "PreconditionFailed" || resp.StatusCode == http.StatusPreconditionFailed ||
			resp.StatusCode == http.StatusConflict):
			return fmt.Errorf("%w: %w", cond, err)
		case retryableCodes[resp.Code] || retryableStatus[resp.StatusCode]:
			return store.Transient(err)
		}
		return err
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) {
		return store.Transient(err)
	}
	return err
}

// classifyDelete is classify that also recognises an object-lock refusal:
// MinIO says 400 "Object is WORM protected", AWS 403 "…protected by object
// lock".
func (s *Store) classifyDelete(ctx context.Context, err error) error {
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		msg := strings.ToLower(resp.Message)
		if strings.Contains(msg, "worm") || strings.Contains(msg, "object lock") {
			return fmt.Errorf("%w: %w", store.ErrLocked, err)
		}
	}
	return s.classify(ctx, err, nil)
}
