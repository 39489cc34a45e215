// Package server serves one device.Device over HTTP/2 on mutual TLS 1.3:
// the HSM daemon of `hsmbackup hsm serve`.
//
// Before its cluster is initialized the daemon presents the device
// certificate (from the manufacturer) and asks for no client certificate;
// only health, attestation, certificates, the cluster CSR, cluster
// initialization and image import into an empty device are served. Once
// the cluster certificate is installed the daemon presents it, requires a
// client certificate from the customer CA on every connection, and serves
// everything; calls other than health and attestation need a session token
// from login, bound to the client certificate that logged in.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
)

// Config configures a Server. Device is required; zero values elsewhere
// take the documented defaults.
type Config struct {
	Device *device.Device
	// Logger receives one line per request and per refusal; nil discards.
	Logger *slog.Logger
	// SessionTTL bounds a session token's life; 0 means one hour.
	SessionTTL time.Duration
	// MaxSessions bounds open sessions; 0 means 1024.
	MaxSessions int
	// Now returns the time; nil means time.Now.
	Now func() time.Time
}

// ShutdownGrace is how long Serve lets calls in flight finish once its
// context is done.
const ShutdownGrace = 10 * time.Second

// Server is an HSM daemon.
type Server struct {
	dev    *device.Device
	log    *slog.Logger
	ttl    time.Duration
	maxSes int
	now    func() time.Time

	mu       sync.Mutex
	sessions map[[32]byte]*sessionEntry // by SHA-256 of the token
}

type sessionEntry struct {
	s        *device.Session
	certHash [32]byte // client certificate that logged in
	expires  time.Time
}

// New returns a server for cfg.Device.
func New(cfg Config) (*Server, error) {
	if cfg.Device == nil {
		return nil, errors.New("server: a device is required")
	}
	s := &Server{dev: cfg.Device, log: cfg.Logger, ttl: cfg.SessionTTL, maxSes: cfg.MaxSessions, now: cfg.Now, sessions: map[[32]byte]*sessionEntry{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.ttl == 0 {
		s.ttl = time.Hour
	}
	if s.maxSes == 0 {
		s.maxSes = 1024
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// TLSConfig returns the daemon's TLS configuration: TLS 1.3 only, and the
// certificate and client-certificate policy the device's state calls for
// at each handshake.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			id, err := s.dev.TLSIdentity()
			if err != nil {
				return nil, err
			}
			c := &tls.Config{
				MinVersion:   tls.VersionTLS13,
				NextProtos:   []string{"h2"},
				Certificates: []tls.Certificate{id.Certificate},
				ClientAuth:   tls.NoClientCert,
			}
			if id.ClientCAs != nil {
				c.ClientAuth = tls.RequireAndVerifyClientCert
				c.ClientCAs = id.ClientCAs
			}
			return c, nil
		},
	}
}

// Serve accepts connections on ln until ctx is done, then shuts down
// gracefully: it stops accepting, lets calls in flight finish for up to
// ShutdownGrace (an image export included: ctx's end does not cut it), then
// closes the connections that remain, which cuts their calls, and returns
// nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.routes(),
		TLSConfig:         s.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		// Calls in flight outlive ctx: they finish within the grace
		// below, after which closing their connections cancels them.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	hs.Protocols = new(http.Protocols)
	hs.Protocols.SetHTTP2(true)
	done := make(chan error, 1)
	go func() { done <- hs.ServeTLS(ln, "", "") }()
	select {
	case err := <-done:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownGrace)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// certHash names the verified client certificate of a request, or is zero
// when there is none.
func certHash(r *http.Request) [32]byte {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return [32]byte{}
	}
	return sha256.Sum256(r.TLS.VerifiedChains[0][0].Raw)
}

// newSession stores a logged-in session and returns its token.
func (s *Server) newSession(r *http.Request, hs *device.Session, token string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for k, e := range s.sessions {
		if now.After(e.expires) {
			e.s.Logout()
			delete(s.sessions, k)
		}
	}
	if len(s.sessions) >= s.maxSes {
		return fmt.Errorf("too many open sessions: %w", hsmcore.ErrFull)
	}
	s.sessions[sha256.Sum256([]byte(token))] = &sessionEntry{s: hs, certHash: certHash(r), expires: now.Add(s.ttl)}
	return nil
}

// session returns the request's session: its bearer token must name a live
// session opened over the same client certificate.
func (s *Server) session(r *http.Request) (*device.Session, error) {
	const prefix = "Bearer "
	h := r.Header.Get("Authorization")
	if len(h) <= len(prefix) || h[:len(prefix)] != prefix {
		return nil, fmt.Errorf("no session token: %w", hsmcore.ErrAuth)
	}
	key := sha256.Sum256([]byte(h[len(prefix):]))
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.sessions[key]
	if e == nil || s.now().After(e.expires) || e.certHash != certHash(r) {
		return nil, fmt.Errorf("session token unknown, expired or from another client: %w", hsmcore.ErrAuth)
	}
	return e.s, nil
}

// endSession logs out the request's session.
func (s *Server) endSession(r *http.Request) {
	h := r.Header.Get("Authorization")
	key := sha256.Sum256([]byte(h[min(len(h), len("Bearer ")):]))
	s.mu.Lock()
	e := s.sessions[key]
	delete(s.sessions, key)
	s.mu.Unlock()
	if e != nil {
		e.s.Logout()
	}
}

// discard drains at most n bytes of a body so the connection can be reused.
func discard(r io.Reader, n int64) { io.Copy(io.Discard, io.LimitReader(r, n)) }
