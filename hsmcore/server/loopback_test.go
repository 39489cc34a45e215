package server_test

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
	"github.com/hsmbackup/hsmbackup/hsmcore/server"
)

func TestServeLoopback(t *testing.T) {
	e := newEnv(t)
	d, _, err := device.Manufacture(filepath.Join(t.TempDir(), "hsm"), device.ManufactureConfig{
		Class: "hsm2m.medium", Firmware: "2.1.0", Manufacturer: e.Mfr, Operator: e.Op,
	}, device.TestOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, _, err := server.ServeLoopback(server.Config{Device: d}, "192.0.2.1:0"); err == nil || !strings.Contains(err.Error(), "not a loopback address") {
		t.Fatalf("non-loopback address: %v", err)
	}
	addr, stop, err := server.ServeLoopback(server.Config{Device: d}, "")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(e.Mfr.Certificate())
	cl, err := client.New(client.Config{Addr: addr, ManufacturerRoots: roots})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if h, err := cl.Health(context.Background()); err != nil || h.Serial != d.Identity().Serial {
		t.Fatalf("health on %s: %+v, %v", addr, h, err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}
}
