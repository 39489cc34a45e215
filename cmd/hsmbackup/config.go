package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// config is the YAML file given with --config. Every path in it is
// relative to the file's directory. Flags override it; docs/CLI.md
// describes it with an example.
type config struct {
	// Store is the store URL (file://DIR or s3://BUCKET/PREFIX?…).
	Store string `yaml:"store"`
	// The master keys of the outer layer (docs/CLI.md, "Master keys"):
	// Keyring is the AES master keyring file (mode 0600), which wraps and
	// opens; HPKERecipients are HPKE public key files, which only wrap;
	// HPKEIdentities their private key files (mode 0600), which open;
	// HSMKey an AES key held by an HSM cluster, which wraps and opens.
	Keyring        string        `yaml:"keyring"`
	HPKERecipients []string      `yaml:"hpke_recipients"`
	HPKEIdentities []string      `yaml:"hpke_identities"`
	HSMKey         *hsmKeyConfig `yaml:"hsm_key"`
	// SigningKey is the Ed25519 manifest signing key (PEM PKCS #8, 0600);
	// PublicKey its public key (PEM), enough to verify without secrets.
	SigningKey string `yaml:"signing_key"`
	PublicKey  string `yaml:"public_key"`
	// ManufacturerRoot and OperatorRoot are PEM files of the roots that
	// certify HSM device keys: restores attest their targets against them.
	ManufacturerRoot string `yaml:"manufacturer_root"`
	OperatorRoot     string `yaml:"operator_root"`
	// Retention is the default retention policy of every cluster.
	Retention retentionConfig `yaml:"retention"`
	// Clusters are the clusters backed up, by id.
	Clusters map[string]*clusterConfig `yaml:"clusters"`
}

type retentionConfig struct {
	Days     int `yaml:"days"`
	KeepLast int `yaml:"keep_last"`
}

// clusterConfig says how to reach and log in to one cluster.
type clusterConfig struct {
	Members      []string          `yaml:"members"`
	CustomerCA   string            `yaml:"customer_ca"`
	Cert         string            `yaml:"cert"`
	Key          string            `yaml:"key"`
	User         string            `yaml:"user"`
	PasswordFile string            `yaml:"password_file"`
	Tags         map[string]string `yaml:"tags"`
	Retention    *retentionConfig  `yaml:"retention"`
}

// hsmKeyConfig names a master key held by an HSM cluster: an AES key of a
// cluster of this file (reached with that entry's members and client
// certificate), used by the crypto user that owns it.
type hsmKeyConfig struct {
	Cluster      string `yaml:"cluster"`
	Handle       uint64 `yaml:"handle"`
	User         string `yaml:"user"`
	PasswordFile string `yaml:"password_file"`
}

var unknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)

// maxConfigSize bounds the config file.
const maxConfigSize = 1 << 20

// loadConfig reads the YAML config at path. Unknown keys are errors, so
// that a misspelt setting is not silently ignored.
func loadConfig(path string) (*config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("config %s: larger than %d bytes", path, maxConfigSize)
	}
	cfg, err := parseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	cfg.resolve(filepath.Dir(path))
	return cfg, nil
}

func parseConfig(data []byte) (*config, error) {
	cfg := new(config)
	d := yaml.NewDecoder(bytes.NewReader(data))
	d.KnownFields(true)
	if err := d.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		// yaml.v3 names Go types ("field x not found in type
		// main.config"); say it in the file's terms.
		return nil, errors.New(unknownField.ReplaceAllString(err.Error(), `unknown setting "$1"`))
	}
	var more yaml.Node
	if err := d.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	if k := cfg.HSMKey; k != nil {
		switch {
		case k.Cluster == "" || k.Handle == 0 || k.User == "":
			return nil, errors.New("hsm_key: cluster, handle and user are required")
		case cfg.Clusters[k.Cluster] == nil:
			return nil, fmt.Errorf("hsm_key: cluster %q is not in clusters", k.Cluster)
		}
	}
	for id, cl := range cfg.Clusters {
		if cl == nil {
			return nil, fmt.Errorf("cluster %q: empty", id)
		}
		if len(cl.Members) == 0 {
			return nil, fmt.Errorf("cluster %q: no members", id)
		}
	}
	return cfg, nil
}

// resolve makes the config's relative paths relative to dir.
func (c *config) resolve(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	for _, p := range []*string{&c.Keyring, &c.SigningKey, &c.PublicKey, &c.ManufacturerRoot, &c.OperatorRoot} {
		abs(p)
	}
	for _, list := range [][]string{c.HPKERecipients, c.HPKEIdentities} {
		for i := range list {
			abs(&list[i])
		}
	}
	if c.HSMKey != nil {
		abs(&c.HSMKey.PasswordFile)
	}
	for _, cl := range c.Clusters {
		for _, p := range []*string{&cl.CustomerCA, &cl.Cert, &cl.Key, &cl.PasswordFile} {
			abs(p)
		}
	}
	if rest, ok := strings.CutPrefix(c.Store, "file://"); ok && rest != "" && !filepath.IsAbs(rest) {
		c.Store = "file://" + filepath.Join(dir, rest)
	}
}

// clusterIDs returns the configured cluster ids, sorted.
func (c *config) clusterIDs() []string {
	ids := make([]string, 0, len(c.Clusters))
	for id := range c.Clusters {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}
