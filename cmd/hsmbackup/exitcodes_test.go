package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestExitCodesDocumented: every exit code of main's table is in
// docs/CLI.md, --help and the man page, with its JSON code.
func TestExitCodesDocumented(t *testing.T) {
	md, err := os.ReadFile("../../docs/CLI.md")
	if err != nil {
		t.Fatal(err)
	}
	page := manPage(newApp(nil, nil))
	if !strings.Contains(page, ".SH EXIT STATUS") {
		t.Error("man page: no EXIT STATUS section")
	}
	help := newApp(nil, nil).Description
	seen := map[int]bool{}
	for _, s := range exitCodes {
		if seen[s.code] {
			t.Errorf("exit code %d twice", s.code)
		}
		seen[s.code] = true
		if row := fmt.Sprintf("| %d | `%s` |", s.code, s.name); !strings.Contains(string(md), row) {
			t.Errorf("docs/CLI.md: no row %q", row)
		}
		if !strings.Contains(page, fmt.Sprintf(".B %d\n", s.code)) || !strings.Contains(help, fmt.Sprintf(" %d  %s", s.code, s.meaning)) {
			t.Errorf("exit code %d missing from the man page or --help", s.code)
		}
	}
}
