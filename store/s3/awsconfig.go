package s3

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// The AWS shared config file (~/.aws/config, or $AWS_CONFIG_FILE), read
// as the AWS CLI reads it for what a store needs: a profile's region and
// endpoint_url. A profile is [default] or [profile NAME] ($AWS_PROFILE,
// else default); its endpoint_url is for every service, and an s3
// endpoint_url in the [services NAME] section its "services" names is for
// S3 only, and wins:
//
//	[profile minio]
//	region = us-east-1
//	services = local
//	[services local]
//	s3 =
//	  endpoint_url = http://127.0.0.1:9000
//
// The environment (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS_REGION) and
// the store URL win over the file.

// maxAWSConfig bounds the config file read.
const maxAWSConfig = 1 << 20

// awsProfile is what a store takes from a profile of the config file.
type awsProfile struct {
	region   string
	endpoint string // the S3 endpoint_url, else the profile's
}

// loadAWSProfile returns the settings of the profile getenv names, from
// the config file it names (or ~/.aws/config). A missing file is no
// error.
func loadAWSProfile(getenv func(string) string) (awsProfile, error) {
	path := getenv("AWS_CONFIG_FILE")
	if path == "" {
		home := getenv("HOME")
		if home == "" {
			return awsProfile{}, nil
		}
		path = filepath.Join(home, ".aws", "config")
	}
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return awsProfile{}, nil
	}
	if err != nil {
		return awsProfile{}, fmt.Errorf("aws config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxAWSConfig+1))
	if err != nil {
		return awsProfile{}, fmt.Errorf("aws config %s: %w", path, err)
	}
	if len(data) > maxAWSConfig {
		return awsProfile{}, fmt.Errorf("aws config %s: larger than %d bytes", path, maxAWSConfig)
	}
	name := getenv("AWS_PROFILE")
	if name == "" {
		name = "default"
	}
	return parseAWSProfile(data, name), nil
}

// parseAWSProfile reads profile name's region and S3 endpoint from a
// config file's text. What it does not understand it ignores, as the AWS
// CLI ignores settings of other tools.
func parseAWSProfile(data []byte, name string) awsProfile {
	sections := parseAWSIni(data)
	key := "profile " + name
	if name == "default" {
		if _, ok := sections["default"]; ok {
			key = "default"
		}
	}
	prof := sections[key]
	p := awsProfile{region: prof["region"], endpoint: prof["endpoint_url"]}
	if svc := prof["services"]; svc != "" {
		if e := sections["services "+svc]["s3.endpoint_url"]; e != "" {
			p.endpoint = e
		}
	}
	return p
}

// parseAWSIni parses the INI dialect of the AWS config file: [section]
// lines, "key = value" lines, and indented "key = value" lines under a
// "name =" line, kept as "name.key".
func parseAWSIni(data []byte) map[string]map[string]string {
	out := map[string]map[string]string{}
	var section map[string]string
	parent := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		raw := sc.Text()
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			name := strings.Join(strings.Fields(line[1:len(line)-1]), " ")
			section = map[string]string{}
			out[name] = section
			parent = ""
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == nil {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		indented := raw != "" && (raw[0] == ' ' || raw[0] == '\t')
		switch {
		case indented && parent != "":
			section[parent+"."+k] = v
		case v == "":
			parent = k
		default:
			parent = ""
			section[k] = v
		}
	}
	return out
}
