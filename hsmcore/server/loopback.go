package server

import (
	"context"
	"fmt"
	"net"
	"sync"
)

// ServeLoopback serves cfg.Device as Serve does, on the loopback address
// addr ("" means 127.0.0.1 on a free port), in the background: the HSM of
// a test or of the demo. It returns the address it listens on and stop,
// which shuts the server down gracefully and returns what Serve returned;
// later calls return the same. The device stays open.
func ServeLoopback(cfg Config, addr string) (bound string, stop func() error, err error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", nil, fmt.Errorf("serve loopback: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", nil, fmt.Errorf("serve loopback: %s is not a loopback address", addr)
	}
	srv, err := New(cfg)
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("serve loopback: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	var serveErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			serveErr = <-done
		})
		return serveErr
	}
	return ln.Addr().String(), stop, nil
}
