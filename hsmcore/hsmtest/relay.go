package hsmtest

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
)

// RelayConfig configures a Relay.
type RelayConfig struct {
	// Certificate is what the relay presents when it terminates TLS
	// itself: the TLS identity of a genuine device it does not serve (see
	// ImpersonateDevice), say.
	Certificate tls.Certificate
	// Upstream, if set, answers the health, attestation and certificate
	// requests the relay forwards to it (over a connection of its own).
	Upstream *client.Client
	// Health, if set, is the relay's answer to health requests instead of
	// Upstream's: a rogue server claims whatever it likes.
	Health *api.Health
	// Passthrough connections, the first ones, are relayed byte for byte
	// to PassthroughAddr, TLS and all, not terminated: the client talks to
	// the genuine HSM on them. Later connections are terminated.
	Passthrough     int
	PassthroughAddr string
}

// Call is one request a relay terminated and answered itself.
type Call struct {
	Method, Path string
	// BodyBytes is how many bytes of body the client sent.
	BodyBytes int64
}

// Relay is a man in the middle on loopback, for tests of attacks: it
// presents another certificate than the HSM it relays to, forwards the
// requests that prove an HSM's identity (health, attestation,
// certificates) to the genuine HSM, and records every other request it
// receives (its body read in full) before refusing it. It stops when the
// test ends.
type Relay struct {
	Addr string
	cfg  RelayConfig

	mu    sync.Mutex
	calls []Call
	conns int
}

// NewRelay starts a relay.
func NewRelay(tb testing.TB, cfg RelayConfig) *Relay {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	r := &Relay{Addr: ln.Addr().String(), cfg: cfg}
	terminated := &chanListener{ch: make(chan net.Conn), done: make(chan struct{}), addr: ln.Addr()}
	hs := &http.Server{
		Handler:           http.HandlerFunc(r.serve),
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{cfg.Certificate}},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	hs.Protocols = new(http.Protocols)
	hs.Protocols.SetHTTP2(true)
	go hs.ServeTLS(terminated, "", "")
	go r.accept(ln, terminated)
	tb.Cleanup(func() {
		ln.Close()
		hs.Close()
		terminated.Close()
	})
	return r
}

// ImpersonateDevice is the TLS identity an uninitialized device presents:
// its manufacturer-issued device certificate and a signer of its device
// key. A test hands it to a Relay to play the operator of that genuine
// HSM, who can make it sign handshakes for any address.
func ImpersonateDevice(tb testing.TB, h *Daemon) tls.Certificate {
	tb.Helper()
	id, err := h.Dev.TLSIdentity()
	if err != nil {
		tb.Fatal(err)
	}
	if id.ClientCAs != nil {
		tb.Fatal("impersonate: the device's cluster is initialized; it presents the cluster certificate")
	}
	return id.Certificate
}

// Calls returns the requests the relay answered itself so far.
func (r *Relay) Calls() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Call(nil), r.calls...)
}

// Connections is how many connections the relay accepted.
func (r *Relay) Connections() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns
}

func (r *Relay) accept(ln net.Listener, terminated *chanListener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		n := r.conns
		r.conns++
		r.mu.Unlock()
		if n < r.cfg.Passthrough {
			go passthrough(c, r.cfg.PassthroughAddr)
			continue
		}
		select {
		case terminated.ch <- c:
		case <-terminated.done:
			c.Close()
			return
		}
	}
}

func passthrough(c net.Conn, addr string) {
	defer c.Close()
	up, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
}

func (r *Relay) serve(w http.ResponseWriter, req *http.Request) {
	ctx := req.Context()
	switch {
	case req.Method == "GET" && req.URL.Path == "/v1/health" && r.cfg.Health != nil:
		reply(w, *r.cfg.Health, nil)
		return
	case req.Method == "GET" && req.URL.Path == "/v1/health" && r.cfg.Upstream != nil:
		h, err := r.cfg.Upstream.Health(ctx)
		reply(w, h, err)
		return
	case req.Method == "GET" && req.URL.Path == "/v1/certificates" && r.cfg.Upstream != nil:
		c, err := r.cfg.Upstream.Certificates(ctx)
		reply(w, c, err)
		return
	case req.Method == "POST" && req.URL.Path == "/v1/attest" && r.cfg.Upstream != nil:
		var in api.AttestRequest
		if err := json.NewDecoder(io.LimitReader(req.Body, 64<<10)).Decode(&in); err != nil {
			reply(w, nil, err)
			return
		}
		a, err := r.cfg.Upstream.Attest(ctx, in.Nonce)
		reply(w, a, err)
		return
	}
	n, _ := io.Copy(io.Discard, req.Body)
	r.mu.Lock()
	r.calls = append(r.calls, Call{Method: req.Method, Path: req.URL.Path, BodyBytes: n})
	r.mu.Unlock()
	reply(w, nil, errors.New("relay: not forwarded"))
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(http.StatusForbidden)
		json.NewEncoder(w).Encode(api.Error{Code: "permission", Message: "relay: refused"})
		return
	}
	json.NewEncoder(w).Encode(v)
}

// chanListener is a net.Listener of the connections the relay terminates.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// State is what a test compares of a device before and after an attack.
type State struct {
	Digest string
	// AuditEntries is how many entries the audit log held.
	AuditEntries int
}

// State returns the device's state digest and audit log length, after
// checking that its audit log verifies: its hash chain, to a head signed
// by the device key.
func (h *Daemon) State(tb testing.TB) State {
	tb.Helper()
	entries, head, err := h.Dev.AuditLog()
	if err != nil {
		tb.Fatal(err)
	}
	mc, _ := h.Dev.Certificates()
	if err := hsmcore.VerifyAuditLog(entries, head, mc); err != nil {
		tb.Fatalf("%s: %v", h.Addr, err)
	}
	return State{Digest: h.Dev.StateDigest(), AuditEntries: len(entries)}
}

// AssertUnchanged fails the test if the device's state digest differs
// from before's or its audit log no longer verifies.
func (h *Daemon) AssertUnchanged(tb testing.TB, before State) {
	tb.Helper()
	if now := h.State(tb); now.Digest != before.Digest {
		tb.Errorf("HSM at %s changed: state digest %s, before %s", h.Addr, now.Digest, before.Digest)
	}
}
