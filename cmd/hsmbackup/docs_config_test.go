package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDocConfigExamples: every example config in the docs (a YAML block
// with clusters) passes the config check, so that an operator who copies
// one starts from a file that loads.
func TestDocConfigExamples(t *testing.T) {
	block := regexp.MustCompile("(?s)```yaml\n(.*?)```")
	found := 0
	for _, doc := range []string{"../../docs/CLI.md", "../../docs/SCHEDULER.md", "../../README.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range block.FindAllStringSubmatch(string(b), -1) {
			if !strings.Contains(m[1], "\nclusters:") {
				continue // not a config (Kubernetes, alert rules)
			}
			found++
			if _, err := parseConfig([]byte(m[1])); err != nil {
				t.Errorf("%s: an example config does not load:\n%v\n%s", doc, err, m[1])
			}
		}
	}
	if found < 2 {
		t.Fatalf("%d example configs found in the docs", found)
	}
}
