//go:build !cgo

package softhsm

import (
	"testing"

	"github.com/hsmbackup/hsmbackup/internal/testenv"
)

// TestNeedsCgo stands for the tests of this package, which load SoftHSMv2
// through cgo.
func TestNeedsCgo(t *testing.T) {
	testenv.Skip(t, "skipped: the SoftHSMv2 interop tests need cgo (CGO_ENABLED=1 and a C compiler)")
}
