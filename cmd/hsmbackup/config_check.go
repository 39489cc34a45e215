package main

import (
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/scheduler"
)

// configProblem is one fault of a config file: its line, the key path of
// the setting (clusters.prod-1.retention.days) and what is wrong.
type configProblem struct {
	line int
	path string
	msg  string
}

// configErrors are every fault found in a config file, reported together,
// one a line, so that an operator fixes them in one go.
type configErrors struct {
	file     string // "" when parsed from bytes
	problems []configProblem
}

func (e *configErrors) Error() string {
	return strings.Join(e.Lines(), "\n")
}

// Unwrap makes a fault of the config file a usage error: the setting, not
// the system, is wrong.
func (e *configErrors) Unwrap() error { return errUsage }

// Lines are the errors, one a line: "FILE:LINE: PATH: what is wrong".
func (e *configErrors) Lines() []string {
	file := e.file
	if file == "" {
		file = "config"
	}
	out := make([]string, 0, len(e.problems)+1)
	if len(e.problems) > 1 {
		out = append(out, fmt.Sprintf("config %s: %d problems:", file, len(e.problems)))
	}
	for _, p := range e.problems {
		where := file
		if p.line > 0 {
			where += ":" + strconv.Itoa(p.line)
		}
		if p.path != "" {
			where += ": " + p.path
		}
		out = append(out, where+": "+p.msg)
	}
	return out
}

// checker walks a config's YAML tree against the config struct, and
// checks each value it knows the rules of.
type checker struct {
	problems []configProblem
}

func (k *checker) add(n *yaml.Node, path, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	k.problems = append(k.problems, configProblem{line: line, path: path, msg: fmt.Sprintf(format, args...)})
}

// checkConfig reports every fault of the document root against the
// config's schema and value rules.
func checkConfig(root *yaml.Node) []configProblem {
	k := &checker{}
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil // an empty file
	}
	k.walk(root, "", reflect.TypeFor[config]())
	k.crossChecks(root)
	sort.SliceStable(k.problems, func(i, j int) bool { return k.problems[i].line < k.problems[j].line })
	return k.problems
}

// walk checks node n, at key path, against Go type t.
func (k *checker) walk(n *yaml.Node, path string, t reflect.Type) {
	if n.Kind == yaml.AliasNode {
		k.add(n, path, "aliases are not allowed")
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			k.add(n, path, "want a mapping of settings, not %s", kindName(n))
			return
		}
		fields := yamlFields(t)
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			p := join(path, key.Value)
			if seen[key.Value] {
				k.add(key, p, "set twice")
				continue
			}
			seen[key.Value] = true
			ft, ok := fields[key.Value]
			if !ok {
				msg := fmt.Sprintf("unknown setting %q", key.Value)
				if _, ok := fields["password_file"]; ok && key.Value == "password" {
					msg += " (a password is never written in the config: name a file with password_file or a variable with password_env)"
				} else if s := nearest(key.Value, sortedKeys(fields)); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				k.add(key, p, "%s", msg)
				continue
			}
			if val.Kind == yaml.ScalarNode && val.Tag == "!!null" && ft.Kind() == reflect.Pointer {
				k.add(val, p, "empty")
				continue
			}
			k.walk(val, p, ft)
			k.value(val, p)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			k.add(n, path, "want a mapping, not %s", kindName(n))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			p := join(path, key.Value)
			if t.Elem().Kind() == reflect.Pointer && val.Kind == yaml.ScalarNode && val.Tag == "!!null" {
				k.add(val, p, "empty")
				continue
			}
			k.walk(val, p, t.Elem())
			k.value(val, p)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			k.add(n, path, "want a list, not %s", kindName(n))
			return
		}
		for i, item := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			k.walk(item, p, t.Elem())
			k.value(item, p)
		}
	default:
		if n.Kind != yaml.ScalarNode {
			k.add(n, path, "want a single value, not %s", kindName(n))
			return
		}
		if t == durationType {
			// yaml decodes a bare number into a Duration as nanoseconds.
			if _, err := time.ParseDuration(n.Value); err != nil || n.Tag != "!!str" {
				k.add(n, path, "%q is not a duration (30s, 2m, 1h30m)", n.Value)
			}
			return
		}
		v := reflect.New(t)
		if err := n.Decode(v.Interface()); err != nil {
			k.add(n, path, "%q is not %s", n.Value, typeName(t))
		}
	}
}

// value checks the rules of the setting at path, whose node n has the
// right shape.
func (k *checker) value(n *yaml.Node, path string) {
	parts := strings.Split(path, ".")
	last := parts[len(parts)-1]
	inCluster := len(parts) >= 2 && parts[0] == "clusters"
	if k.objectLockValue(n, path, parts) { // objectlock.go
		return
	}
	switch {
	case path == "store":
		if !strings.HasPrefix(n.Value, "file://") && !strings.HasPrefix(n.Value, "s3://") {
			k.add(n, path, "%q: want file://DIR or s3://BUCKET[/PREFIX]", n.Value)
		}
	case last == "days" && (path == "retention.days" || inCluster):
		var d int
		if n.Decode(&d) == nil && d != 0 {
			if err := (backup.Policy{RetentionDays: d}).Validate(); err != nil {
				k.add(n, path, "%v (0 or absent: no age limit)", err)
			}
		}
	case last == "keep_last":
		var d int
		if n.Decode(&d) == nil && d < 0 {
			k.add(n, path, "%d: want 0 or more", d)
		}
	case inCluster && len(parts) == 2:
		if n.Kind == yaml.MappingNode && !hasKey(n, "members") {
			k.add(n, path, "no members")
		}
		if n.Kind == yaml.MappingNode && hasKey(n, "password_file") && hasKey(n, "password_env") {
			k.add(n, path, "password_file and password_env exclude each other: give one")
		}
	case inCluster && strings.HasPrefix(last, "members["):
		if _, port, err := net.SplitHostPort(n.Value); err != nil || port == "" {
			k.add(n, path, "%q: want HOST:PORT", n.Value)
		}
	case inCluster && last == "members":
		if n.Kind == yaml.SequenceNode && len(n.Content) == 0 {
			k.add(n, path, "no members")
		}
	case inCluster && last == "tags":
		var tags map[string]string
		if n.Decode(&tags) == nil {
			if err := backup.ValidateTags(tags); err != nil {
				k.add(n, path, "%v", err)
			}
		}
	case inCluster && len(parts) == 3 && last == "password_env":
		if !envName.MatchString(n.Value) {
			// Not echoed: it may be the password itself.
			k.add(n, path, "want the name of an environment variable (letters, digits, _), not a password (the value is not shown)")
		}
	case inCluster && (len(parts) == 3 || len(parts) == 4 && parts[2] == "drill") && last == "schedule":
		if _, err := scheduler.ParseSchedule(n.Value); err != nil {
			k.add(n, path, "%s", strings.TrimPrefix(err.Error(), scheduler.ErrSchedule.Error()+" "))
		}
	case inCluster && len(parts) == 3 && last == "drill":
		if n.Kind == yaml.MappingNode && !hasKey(n, "hsm") {
			k.add(n, path, "no hsm (the scratch HSM's HOST:PORT the drill restores into)")
		}
		if n.Kind == yaml.MappingNode && !hasKey(n, "claim") {
			k.add(n, path, "no claim (the scratch HSM's claim file, which hsm manufacture wrote: each drill claims the HSM anew)")
		}
	case inCluster && len(parts) == 4 && parts[2] == "drill" && last == "hsm":
		if _, port, err := net.SplitHostPort(n.Value); err != nil || port == "" {
			k.add(n, path, "%q: want HOST:PORT", n.Value)
		}
	case path == "scheduler.concurrency":
		var c int
		if n.Decode(&c) == nil {
			k.check(n, path, scheduler.CheckConcurrency(c))
		}
	case path == "scheduler.jitter":
		k.checkDuration(n, path, scheduler.CheckJitter)
	case path == "scheduler.lease_duration":
		k.checkDuration(n, path, scheduler.CheckLeaseDuration)
	case path == "scheduler.drain_timeout":
		k.checkDuration(n, path, scheduler.CheckDrainTimeout)
	case path == "hsm_key.handle":
		var h uint64
		if n.Decode(&h) == nil && h == 0 {
			k.add(n, path, "want the handle of the key (from 'hsmbackup masterkey generate-hsm')")
		}
	}
}

var durationType = reflect.TypeFor[time.Duration]()

// envName is an environment variable's name as POSIX shells take it.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// check adds err, if any, as the fault of the setting at path.
func (k *checker) check(n *yaml.Node, path string, err error) {
	if err != nil {
		k.add(n, path, "%v", err)
	}
}

// checkDuration checks a well-formed duration setting with rule.
func (k *checker) checkDuration(n *yaml.Node, path string, rule func(time.Duration) error) {
	if d, err := time.ParseDuration(n.Value); err == nil && n.Tag == "!!str" {
		k.check(n, path, rule(d))
	}
}

// crossChecks are the rules between settings, once each is well formed.
func (k *checker) crossChecks(root *yaml.Node) {
	k.drillChecks(root)
	hk := child(root, "hsm_key")
	if hk == nil {
		return
	}
	for _, req := range []string{"cluster", "handle", "user"} {
		if child(hk, req) == nil {
			k.add(hk, "hsm_key", "%s is required", req)
		}
	}
	if c := child(hk, "cluster"); c != nil {
		clusters := child(root, "clusters")
		if clusters == nil || child(clusters, c.Value) == nil {
			k.add(c, "hsm_key.cluster", "cluster %q is not in clusters", c.Value)
		}
	}
}

// drillChecks refuses a drill whose scratch HSM is a member of a cluster
// of the file: a drill restores into its scratch HSM and zeroizes it, so
// it must never be a production HSM. Addresses are compared as
// canonicalHostPort writes them.
func (k *checker) drillChecks(root *yaml.Node) {
	clusters := child(root, "clusters")
	if clusters == nil || clusters.Kind != yaml.MappingNode {
		return
	}
	memberOf := map[string]string{} // canonical address → cluster id
	for i := 0; i+1 < len(clusters.Content); i += 2 {
		id, members := clusters.Content[i].Value, child(clusters.Content[i+1], "members")
		if members == nil || members.Kind != yaml.SequenceNode {
			continue
		}
		for _, m := range members.Content {
			if a, ok := canonicalHostPort(m.Value); ok {
				if _, seen := memberOf[a]; !seen {
					memberOf[a] = id
				}
			}
		}
	}
	for i := 0; i+1 < len(clusters.Content); i += 2 {
		id := clusters.Content[i].Value
		hsm := child(child(clusters.Content[i+1], "drill"), "hsm")
		if hsm == nil || hsm.Kind != yaml.ScalarNode {
			continue
		}
		a, ok := canonicalHostPort(hsm.Value)
		if !ok {
			continue // reported as not HOST:PORT
		}
		if of, isMember := memberOf[a]; isMember {
			k.add(hsm, "clusters."+id+".drill.hsm", "%q is a member of cluster %s: a drill restores into its scratch HSM and zeroizes it, so it must never be a production HSM", hsm.Value, of)
		}
	}
}

// canonicalHostPort writes an address so that two spellings of one are
// equal: the host in lower case without a final dot, an IP address in its
// canonical form (an IPv4-mapped IPv6 address as IPv4), the port as a
// number. It does not resolve names.
func canonicalHostPort(addr string) (string, bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return "", false
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", false
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.Unmap().WithZone("").String()
	}
	return net.JoinHostPort(host, strconv.FormatUint(p, 10)), true
}

// yamlFields maps a struct's yaml keys to their field types.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			m[name] = f.Type
		}
	}
	return m
}

func child(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func hasKey(n *yaml.Node, key string) bool { return child(n, key) != nil }

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func sortedKeys(m map[string]reflect.Type) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "an alias"
}

func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int64, reflect.Uint64:
		return "a whole number"
	case reflect.Bool:
		return "true or false"
	}
	return "text"
}

// nearest returns the known key s is most likely a misspelling of, or "".
func nearest(s string, known []string) string {
	best, bestD := "", -1
	for _, k := range known {
		if len(s) >= 4 && (strings.HasPrefix(k, s) || strings.HasPrefix(s, k)) {
			return k
		}
		if d := editDistance(s, k); bestD < 0 || d < bestD {
			best, bestD = k, d
		}
	}
	if bestD < 0 || bestD > 2 || bestD*2 >= len(s) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
