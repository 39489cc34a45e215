package integration

import (
	"os"
	"testing"

	"github.com/hsmbackup/hsmbackup/internal/miniotest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	miniotest.StopShared()
	CleanupBinary()
	os.Exit(code)
}
