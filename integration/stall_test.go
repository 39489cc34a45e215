package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
)

// stallTimeout is the clients' Timeout in TestImageTransferStalls: how
// long a transfer may make no progress.
const stallTimeout = 2 * time.Second

// TestImageTransferStalls: an HSM that stops in the middle of an image
// transfer (SIGSTOP) fails it with client.ErrStalled within about the
// client's Timeout, instead of hanging, and never as an interruption
// (which the CLI reports with exit code 130); a caller that is slow to
// read is not a stall.
func TestImageTransferStalls(t *testing.T) {
	t.Parallel()
	const keys = 20000 // an image of ~14 MB: more than HTTP/2 and TCP buffer
	c := newCluster(t, "--capacity", fmt.Sprint(keys+100))
	ctx := context.Background()
	pair, err := tls.LoadX509KeyPair(c.cert, c.key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := client.Config{Addr: c.addr, CustomerCA: loadCert(t, c.ca.Cert), ClusterID: testCluster, Certificate: &pair, Timeout: stallTimeout}
	co, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	if _, err := co.Login(ctx, testOfficer, c.password); err != nil {
		t.Fatal(err)
	}
	fillKeys(t, c, keys)

	t.Run("slow reader is not a stall", func(t *testing.T) {
		rc, err := co.ExportImage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		if _, err := io.ReadFull(rc, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * stallTimeout) // the caller busy elsewhere, as a store uploading a part
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("export after a slow caller: %v", err)
		}
	})

	var img []byte
	t.Run("export", func(t *testing.T) {
		rc, err := co.ExportImage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		Signal(t, c.addr, syscall.SIGSTOP)
		defer Signal(t, c.addr, syscall.SIGCONT)
		start := time.Now()
		n, err := io.Copy(io.Discard, rc)
		if !errors.Is(err, client.ErrStalled) || errors.Is(err, context.Canceled) {
			t.Fatalf("export from a stopped HSM: %d bytes, then %v; want ErrStalled, not an interruption", n, err)
		}
		if took := time.Since(start); took > 5*stallTimeout {
			t.Errorf("stall reported after %v, timeout %v", took, stallTimeout)
		}
		t.Logf("%d bytes before the stall: %v", n, err)
	})
	// The HSM goes on once continued.
	rc, err := co.ExportImage(ctx)
	if err == nil {
		img, err = io.ReadAll(rc)
		rc.Close()
	}
	if err != nil {
		t.Fatalf("export after SIGCONT: %v", err)
	}

	t.Run("import", func(t *testing.T) {
		dir := filepath.Join(c.dir, "hsm-fresh")
		c.run(t, "hsm", "manufacture", "--class", testClass, "--firmware", testFirmware,
			"--manufacturer", filepath.Join(c.dir, "mfr"), "--operator", filepath.Join(c.dir, "op"), "--out", dir)
		addr := StartDaemon(t, dir)
		roots := x509.NewCertPool()
		roots.AddCert(loadCert(t, c.mfrRoot))
		fresh, err := client.New(client.Config{Addr: addr, ManufacturerRoots: roots, Timeout: stallTimeout})
		if err != nil {
			t.Fatal(err)
		}
		defer fresh.Close()
		before, err := fresh.Health(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// An image goes only to the device that attested (client.Bind).
		ops := x509.NewCertPool()
		ops.AddCert(loadCert(t, c.opRoot))
		st, err := hsmcore.Challenge(ctx, fresh, hsmcore.ChallengeOptions{ManufacturerRoots: roots, OperatorRoots: ops, Certified: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := fresh.Bind(st); err != nil {
			t.Fatal(err)
		}
		Signal(t, addr, syscall.SIGSTOP)
		start := time.Now()
		_, err = fresh.ImportImage(ctx, bytes.NewReader(img))
		Signal(t, addr, syscall.SIGCONT)
		if !errors.Is(err, client.ErrStalled) || errors.Is(err, context.Canceled) {
			t.Fatalf("import into a stopped HSM: %v; want ErrStalled, not an interruption", err)
		}
		if took := time.Since(start); took > 5*stallTimeout {
			t.Errorf("stall reported after %v, timeout %v", took, stallTimeout)
		}
		after, err := fresh.Health(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after.StateDigest != before.StateDigest || after.Initialized {
			t.Fatalf("HSM changed by a stalled import: %+v, was %+v", after, before)
		}
	})
}
