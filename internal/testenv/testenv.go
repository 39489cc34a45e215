// Package testenv is what tests share about their environment: whether a
// missing outside component may skip a test, and where such components are.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// DisallowSkipVar names the environment variable that, set to 1 (as
// `make test` and CI do), turns every skip for a missing component into a
// failure.
const DisallowSkipVar = "HSMBACKUP_TEST_DISALLOW_SKIP"

// Skip skips tb with a message saying what is missing, or fails it when
// skipping is disallowed.
func Skip(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if os.Getenv(DisallowSkipVar) == "1" {
		tb.Fatalf(format+" (and "+DisallowSkipVar+"=1)", args...)
	}
	tb.Skipf(format, args...)
}

// LookPath returns the path of the outside program name, or skips tb (see
// Skip) if it is not on PATH.
func LookPath(tb testing.TB, name string) string {
	tb.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		Skip(tb, "skipped: %s not found on PATH: %v", name, err)
	}
	return path
}
