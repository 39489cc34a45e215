package s3

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/hsmbackup/hsmbackup/internal/miniotest"
	"github.com/hsmbackup/hsmbackup/store"
	"github.com/hsmbackup/hsmbackup/store/storetest"
)

func TestResolve(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		env  map[string]string
		want endpoint
		bad  bool
	}{
		{name: "aws default", want: endpoint{host: "s3.amazonaws.com", secure: true}},
		{name: "region env", env: map[string]string{"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "x"},
			want: endpoint{host: "s3.amazonaws.com", secure: true, region: "eu-west-1"}},
		{name: "default region env", env: map[string]string{"AWS_DEFAULT_REGION": "eu-north-1"},
			want: endpoint{host: "s3.amazonaws.com", secure: true, region: "eu-north-1"}},
		{name: "region option wins", cfg: Config{Region: "us-west-2"}, env: map[string]string{"AWS_REGION": "eu-west-1"},
			want: endpoint{host: "s3.amazonaws.com", secure: true, region: "us-west-2"}},
		{name: "endpoint env", env: map[string]string{"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"},
			want: endpoint{host: "127.0.0.1:9000"}},
		{name: "s3 endpoint env wins", env: map[string]string{"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "https://b:2/"},
			want: endpoint{host: "b:2", secure: true}},
		{name: "endpoint option wins", cfg: Config{Endpoint: "minio.local:9000", Insecure: true},
			env:  map[string]string{"AWS_ENDPOINT_URL_S3": "https://b:2"},
			want: endpoint{host: "minio.local:9000"}},
		{name: "bare host is https", cfg: Config{Endpoint: "minio.local"}, want: endpoint{host: "minio.local", secure: true}},
		{name: "url scheme decides", cfg: Config{Endpoint: "https://minio.local", Insecure: true}, want: endpoint{host: "minio.local", secure: true}},
		{name: "ftp", cfg: Config{Endpoint: "ftp://x"}, bad: true},
		{name: "path", cfg: Config{Endpoint: "http://x/bucket"}, bad: true},
		{name: "user", cfg: Config{Endpoint: "http://u:p@x"}, bad: true},
		{name: "host with path", cfg: Config{Endpoint: "x/y"}, bad: true},
		{name: "no host", cfg: Config{Endpoint: "http://"}, bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.cfg.resolve(func(k string) string { return tc.env[k] })
			if tc.bad {
				if err == nil {
					t.Errorf("accepted: %+v", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Bucket: "b", PartSize: MinPartSize - 1},
		{Bucket: "b", Encryption: SSEKMS},
		{Bucket: "b", Encryption: SSES3, KMSKeyID: "k"},
		{Bucket: "b", KMSKeyID: "k"},
		{Bucket: "b", Encryption: "rot13"},
		{Bucket: "b", Prefix: "a/../b"},
		{Bucket: "b", Endpoint: "ftp://x"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	s, err := New(Config{Bucket: "b", Prefix: "/backups/prod/", Endpoint: "x:1"})
	if err != nil {
		t.Fatal(err)
	}
	if s.ObjectName("k") != "backups/prod/k" || s.String() != "s3://b/backups/prod" || s.partSize != DefaultPartSize {
		t.Errorf("object name %q, url %q, part size %d", s.ObjectName("k"), s.String(), s.partSize)
	}
}

// TestDefaultsFromEnvironment: with only a bucket configured, the store
// finds endpoint, region and credentials in the standard AWS variables.
func TestDefaultsFromEnvironment(t *testing.T) {
	srv := miniotest.Shared(t)
	bucket := srv.NewBucket(t, miniotest.BucketOptions{})
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(home, "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(home, "none"))
	t.Setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1") // overridden by the S3 one
	t.Setenv("AWS_ENDPOINT_URL_S3", srv.URL())
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	s, err := New(Config{Bucket: bucket})
	if err != nil {
		t.Fatal(err)
	}
	storetest.Put(t, s, "env", []byte("x"), store.PutOptions{})
	if got := storetest.Read(t, s, "env"); string(got) != "x" {
		t.Errorf("read %q", got)
	}

	// The shared credentials file, when the variables are gone.
	os.WriteFile(filepath.Join(home, "creds"), []byte("[default]\naws_access_key_id = "+srv.AccessKey+
		"\naws_secret_access_key = "+srv.SecretKey+"\n"), 0o600)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(home, "creds"))
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	s, err = New(Config{Bucket: bucket})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(context.Background(), "env"); err != nil {
		t.Errorf("stat with file credentials: %v", err)
	}
}
