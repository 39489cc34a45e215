package s3

import (
	"os"
	"path/filepath"
	"testing"
)

func TestAWSProfile(t *testing.T) {
	const file = `# ~/.aws/config
[default]
region = eu-west-1

[profile minio]
region = us-east-1
endpoint_url = http://10.0.0.1:9000
services = local

[profile other]
endpoint_url = https://s3.example.com

[services local]
s3 =
  endpoint_url = http://127.0.0.1:9000
dynamodb =
  endpoint_url = http://127.0.0.1:8000
`
	for _, tc := range []struct {
		profile string
		want    awsProfile
	}{
		{"", awsProfile{region: "eu-west-1"}},
		{"minio", awsProfile{region: "us-east-1", endpoint: "http://127.0.0.1:9000"}},
		{"other", awsProfile{endpoint: "https://s3.example.com"}},
		{"nosuch", awsProfile{}},
	} {
		path := filepath.Join(t.TempDir(), "config")
		if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
		env := map[string]string{"AWS_CONFIG_FILE": path, "AWS_PROFILE": tc.profile}
		got, err := loadAWSProfile(func(k string) string { return env[k] })
		if err != nil || got != tc.want {
			t.Errorf("profile %q: %+v, %v; want %+v", tc.profile, got, err, tc.want)
		}
	}
}

// The environment and the store's own settings win over the profile.
func TestAWSProfileRanks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(path, []byte("[default]\nregion = eu-west-1\nendpoint_url = http://127.0.0.1:9000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name         string
		cfg          Config
		env          map[string]string
		host, region string
		secure       bool
	}{
		{"profile", Config{}, nil, "127.0.0.1:9000", "eu-west-1", false},
		{"env endpoint", Config{}, map[string]string{"AWS_ENDPOINT_URL_S3": "https://s3.test"}, "s3.test", "eu-west-1", true},
		{"env region", Config{}, map[string]string{"AWS_REGION": "ap-south-1"}, "127.0.0.1:9000", "ap-south-1", false},
		{"store's own", Config{Endpoint: "https://mine.test", Region: "us-west-2"}, nil, "mine.test", "us-west-2", true},
		{"ignored", Config{}, map[string]string{"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}, "s3.amazonaws.com", "eu-west-1", true},
	} {
		env := map[string]string{"AWS_CONFIG_FILE": path}
		for k, v := range tc.env {
			env[k] = v
		}
		ep, err := tc.cfg.resolve(func(k string) string { return env[k] })
		if err != nil || ep.host != tc.host || ep.region != tc.region || ep.secure != tc.secure {
			t.Errorf("%s: %+v, %v; want %s %s secure=%t", tc.name, ep, err, tc.host, tc.region, tc.secure)
		}
	}
}

func FuzzAWSIni(f *testing.F) {
	f.Add([]byte("[default]\nregion = x\n[services a]\ns3 =\n  endpoint_url = http://h\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		parseAWSProfile(data, "default")
	})
}
