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
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/hsmbackup/hsmbackup/scheduler"
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
	// Scheduler is how the scheduler runs the clusters' schedules
	// (docs/SCHEDULER.md); each setting unset takes its default.
	Scheduler schedulerConfig `yaml:"scheduler"`
	// Clusters are the clusters backed up, by id.
	Clusters map[string]*clusterConfig `yaml:"clusters"`
}

// schedulerConfig is the scheduler: section. A nil setting is unset: it
// takes its default (0 is a value of its own for jitter and drain_timeout).
type schedulerConfig struct {
	// Concurrency is how many clusters are backed up at once.
	Concurrency *int `yaml:"concurrency"`
	// Jitter is the most a run is delayed past its slot, at random, so
	// that clusters on one schedule do not start together.
	Jitter *time.Duration `yaml:"jitter"`
	// LeaseDuration is how long the leader's lease lasts unrenewed.
	LeaseDuration *time.Duration `yaml:"lease_duration"`
	// DrainTimeout is how long a stopping scheduler waits for its runs.
	DrainTimeout *time.Duration `yaml:"drain_timeout"`
}

// settings are the scheduler settings with the defaults filled in.
func (s schedulerConfig) settings() scheduler.Settings {
	d := scheduler.DefaultSettings
	return scheduler.Settings{
		Concurrency:   orDefault(s.Concurrency, d.Concurrency),
		Jitter:        orDefault(s.Jitter, d.Jitter),
		LeaseDuration: orDefault(s.LeaseDuration, d.LeaseDuration),
		DrainTimeout:  orDefault(s.DrainTimeout, d.DrainTimeout),
	}
}

// orDefault is *p, or d if p is nil (unset).
func orDefault[T any](p *T, d T) T {
	if p == nil {
		return d
	}
	return *p
}

type retentionConfig struct {
	Days     int `yaml:"days"`
	KeepLast int `yaml:"keep_last"`
}

// clusterConfig says how to reach and log in to one cluster.
type clusterConfig struct {
	Members      []string `yaml:"members"`
	CustomerCA   string   `yaml:"customer_ca"`
	Cert         string   `yaml:"cert"`
	Key          string   `yaml:"key"`
	User         string   `yaml:"user"`
	PasswordFile string   `yaml:"password_file"`
	// PasswordEnv names an environment variable holding the password,
	// for a secret store that injects variables; with password_file
	// unset.
	PasswordEnv string            `yaml:"password_env"`
	Tags        map[string]string `yaml:"tags"`
	Retention   *retentionConfig  `yaml:"retention"`
	// Schedule is when the scheduler backs the cluster up: a cron spec
	// (scheduler.ParseSchedule); "" for never.
	Schedule string `yaml:"schedule"`
	// ObjectLock, if set, locks every backup of the cluster (objectlock.go).
	ObjectLock *objectLockConfig `yaml:"object_lock"`
	// Drill is the cluster's restore drill, if it has one.
	Drill *drillConfig `yaml:"drill"`
}

// drillConfig is a cluster's drill: section: where and when its newest
// backup is proven restorable (scheduler drill).
type drillConfig struct {
	// Schedule is when the scheduler runs the drill: a cron spec
	// (scheduler.ParseSchedule); "" for never (scheduler drill runs it
	// by hand).
	Schedule string `yaml:"schedule"`
	// HSM is the scratch HSM's HOST:PORT: an uninitialized HSM of the
	// cluster's class, manufacturer and operator, never a member of a
	// cluster of the file (the config check refuses that).
	HSM string `yaml:"hsm"`
	// Claim is the scratch HSM's claim file (hsm manufacture wrote it,
	// mode 0600): the drill claims it anew for each restore, as the drill
	// zeroizes it after.
	Claim string `yaml:"claim"`
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
	if ce, ok := err.(*configErrors); ok {
		ce.file = path
		return nil, ce
	}
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	cfg.resolve(filepath.Dir(path))
	return cfg, nil
}

// parseConfig parses a config file's bytes. Every fault of the file is
// reported at once, a *configErrors with the line and key path of each.
func parseConfig(data []byte) (*config, error) {
	var root yaml.Node
	d := yaml.NewDecoder(bytes.NewReader(data))
	if err := d.Decode(&root); err != nil && !errors.Is(err, io.EOF) {
		return nil, &configErrors{problems: []configProblem{syntaxProblem(err)}}
	}
	var more yaml.Node
	if err := d.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, &configErrors{problems: []configProblem{{line: more.Line, msg: "more than one YAML document"}}}
	}
	cfg := new(config)
	if root.Kind == 0 {
		return cfg, nil // empty
	}
	if problems := checkConfig(&root); len(problems) > 0 {
		return nil, &configErrors{problems: problems}
	}
	if err := root.Decode(cfg); err != nil {
		return nil, &configErrors{problems: []configProblem{syntaxProblem(err)}}
	}
	return cfg, nil
}

var yamlLine = regexp.MustCompile(`^yaml: (?:unmarshal errors:\n\s*)?line (\d+): (.*)$`)

// syntaxProblem is a YAML parser's error as a problem with its line.
func syntaxProblem(err error) configProblem {
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		return configProblem{line: line, msg: m[2]}
	}
	return configProblem{msg: strings.TrimPrefix(err.Error(), "yaml: ")}
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
		if cl.Drill != nil {
			abs(&cl.Drill.Claim)
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
