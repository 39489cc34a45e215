// Package client calls one HSM daemon (hsmcore/server) over HTTP/2 on
// mutual TLS 1.3. Errors the daemon reports come back as *RemoteError,
// which unwraps to the hsmcore sentinel, so errors.Is works as it would
// in-process.
package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
)

// Config says how to reach and trust one HSM.
//
// A daemon proves one of two identities: the cluster's (the cluster
// certificate, from the customer CA) once its cluster is initialized, or
// a device's (the device certificate, from the manufacturer) before. The
// client trusts them for different things. The cluster identity is
// trusted with everything. A device identity is trusted only with what
// carries no secret (health, attestation, certificates, the cluster CSR,
// installing the cluster certificate), and, once pinned (DeviceKey,
// Bind), with an image for that one device. Passwords, session tokens and
// quorum approvals go only to the cluster identity: a client that holds
// none of its trust (no CustomerCA) refuses to send them.
type Config struct {
	// Addr is the daemon's host:port.
	Addr string
	// Certificate is the client certificate, issued by the customer CA;
	// nil before the cluster is initialized.
	Certificate *tls.Certificate
	// CustomerCA verifies the cluster certificate the daemon presents once
	// initialized; ClusterID, if set, must be its common name.
	CustomerCA *x509.Certificate
	ClusterID  string
	// ManufacturerRoots verify the device certificate a daemon presents
	// before its cluster is initialized. One of CustomerCA,
	// ManufacturerRoots and DeviceKey is required; with more than one,
	// either identity is accepted, each for what it is trusted with.
	ManufacturerRoots *x509.CertPool
	// DeviceKey pins the device: a daemon that presents a device
	// certificate must present one for this public key (the attested
	// device key), on every connection, and then is trusted with an image
	// sent without a session (ImportImage into a new HSM). Bind sets it
	// from a verified attestation.
	DeviceKey crypto.PublicKey
	// Timeout bounds each call, and how long an image transfer may make
	// no progress (ErrStalled); 0 means 30 seconds.
	Timeout time.Duration
	// Claims are the claim secrets of new HSMs, by serial: with them the
	// client proves, on each call that sets up a new HSM (ClusterCSR,
	// InitializeCluster, ImportImage without a session), that it holds
	// the secret of the HSM that answers (hsmcore.Claim). The secret
	// itself is never sent.
	Claims hsmcore.Claims
}

// peer is what a request's TLS peer must have proven to be.
type peer int

const (
	// anyPeer: the cluster, or a device the manufacturer roots certify
	// (the pinned device, if DeviceKey is set). Calls that carry no
	// secret.
	anyPeer peer = iota
	// imagePeer: the cluster, or the pinned device. An image sent
	// without a session.
	imagePeer
	// memberPeer: the cluster only. Passwords, and every request with a
	// session token or quorum approvals.
	memberPeer
	numPeers
)

// trustsDevice reports whether cfg lets a peer verified as a device
// receive requests of kind p.
func (cfg *Config) trustsDevice(p peer) bool {
	switch p {
	case anyPeer:
		return cfg.ManufacturerRoots != nil || cfg.DeviceKey != nil
	case imagePeer:
		return cfg.DeviceKey != nil
	}
	return false
}

// Client is a connection to one HSM daemon. It is safe for concurrent use;
// Login sets the session all later calls use.
type Client struct {
	base    string
	timeout time.Duration

	mu       sync.Mutex
	cfg      Config
	peers    [numPeers]*http.Client // nil: no peer may receive that kind
	token    string
	approval string         // the quorum header, while set
	attested []attestedPeer // the peers of the latest attestations
}

// attestedPeer is the certificate the peer that answered an attestation
// request presented, by the request's nonce.
type attestedPeer struct {
	nonce string
	cert  *x509.Certificate
}

// maxAttested bounds how many attestations' peers a client remembers.
const maxAttested = 8

// New returns a client for cfg.
func New(cfg Config) (*Client, error) {
	if cfg.CustomerCA == nil && cfg.ManufacturerRoots == nil && cfg.DeviceKey == nil {
		return nil, errors.New("client: a customer CA or manufacturer roots are required to trust the HSM")
	}
	c := &Client{base: "https://" + cfg.Addr, timeout: cfg.Timeout, cfg: cfg}
	if c.timeout == 0 {
		c.timeout = 30 * time.Second
	}
	c.peers = transports(cfg)
	return c, nil
}

// transports returns an HTTP client for each kind of request, whose TLS
// verification accepts exactly the peers that kind may go to; kinds that
// accept the same peers share one, and a kind no peer may receive has
// none.
func transports(cfg Config) [numPeers]*http.Client {
	var out [numPeers]*http.Client
	byTrust := map[bool]*http.Client{}
	for p := range numPeers {
		device := cfg.trustsDevice(p)
		if cfg.CustomerCA == nil && !device {
			continue
		}
		if hc := byTrust[device]; hc != nil {
			out[p] = hc
			continue
		}
		tc := &tls.Config{
			MinVersion: tls.VersionTLS13,
			NextProtos: []string{"h2"},
			// The daemon's certificate names a cluster or a device, not a
			// host: VerifyConnection checks it instead of the host name
			// check, on every connection.
			InsecureSkipVerify: true,
			VerifyConnection:   verifier(cfg, device),
		}
		if cfg.Certificate != nil {
			tc.Certificates = []tls.Certificate{*cfg.Certificate}
		}
		tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Minute}
		out[p] = &http.Client{Transport: tr}
		byTrust[device] = out[p]
	}
	return out
}

// verifier accepts the cluster identity, if cfg has a customer CA, and,
// if device, a device identity: a certificate chaining to cfg's
// manufacturer roots (if set) for cfg's DeviceKey (if set).
func verifier(cfg Config, device bool) func(tls.ConnectionState) error {
	var clusterRoots *x509.CertPool
	if cfg.CustomerCA != nil {
		clusterRoots = x509.NewCertPool()
		clusterRoots.AddCert(cfg.CustomerCA)
	}
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("hsm presented no certificate")
		}
		leaf := cs.PeerCertificates[0]
		opts := x509.VerifyOptions{KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, Intermediates: x509.NewCertPool()}
		for _, c := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(c)
		}
		var errs []error
		if clusterRoots != nil {
			opts.Roots = clusterRoots
			_, err := leaf.Verify(opts)
			if err == nil && cfg.ClusterID != "" && leaf.Subject.CommonName != cfg.ClusterID {
				err = fmt.Errorf("cluster certificate names %q, want %q", leaf.Subject.CommonName, cfg.ClusterID)
			}
			if err == nil {
				return nil
			}
			errs = append(errs, fmt.Errorf("as cluster: %w", err))
		}
		switch {
		case device:
			err := verifyDevice(leaf, opts, cfg)
			if err == nil {
				return nil
			}
			errs = append(errs, fmt.Errorf("as device: %w", err))
		case (cfg.ManufacturerRoots != nil || cfg.DeviceKey != nil) && verifyDevice(leaf, opts, cfg) == nil:
			// A genuine device, but this call is not for a device.
			errs = append(errs, fmt.Errorf("as device: %w", ErrDeviceOnly))
		}
		return fmt.Errorf("%w: %w", ErrUntrusted, errors.Join(errs...))
	}
}

// verifyDevice checks a device certificate: it chains to cfg's
// manufacturer roots, if set, and certifies cfg's DeviceKey, if set.
func verifyDevice(leaf *x509.Certificate, opts x509.VerifyOptions, cfg Config) error {
	if cfg.ManufacturerRoots != nil {
		opts.Roots = cfg.ManufacturerRoots
		if _, err := leaf.Verify(opts); err != nil {
			return err
		}
	}
	if cfg.DeviceKey != nil {
		k, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
		if !ok || !k.Equal(cfg.DeviceKey) {
			return fmt.Errorf("device %q is not the attested device", leaf.Subject.SerialNumber)
		}
	}
	return nil
}

// Bind pins the client to the HSM that made st, an attestation that
// hsmcore.Challenge verified and that came over this client (Attest):
// the connection that delivered it must have been to that HSM (its peer
// presented the device certificate of the attested device key, or a
// cluster certificate for the cluster key it attests to), else Bind fails
// with hsmcore.ErrAttestation. From then on the client is as if made with
// DeviceKey set to the attested key: every connection to a daemon that
// presents a device certificate must present that device's, and an image
// may be sent to it. Connections opened before are closed.
func (c *Client) Bind(st *hsmcore.Statement) error {
	if st == nil || st.Certificate == nil {
		return fmt.Errorf("bind: a verified statement is required: %w", hsmcore.ErrInvalid)
	}
	c.mu.Lock()
	var peerCert *x509.Certificate
	for _, a := range c.attested {
		if a.nonce == string(st.Nonce) {
			peerCert = a.cert
		}
	}
	c.mu.Unlock()
	if peerCert == nil {
		return fmt.Errorf("bind: the attestation did not come over this client: %w", hsmcore.ErrAttestation)
	}
	if err := hsmcore.CheckPeer(st, peerCert); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	c.mu.Lock()
	old := c.peers
	c.cfg.DeviceKey = st.Certificate.PublicKey
	c.peers = transports(c.cfg)
	c.mu.Unlock()
	closeAll(old)
	return nil
}

func closeAll(hcs [numPeers]*http.Client) {
	for _, hc := range hcs {
		if hc != nil {
			hc.CloseIdleConnections()
		}
	}
}

// Sentinel errors, besides the hsmcore sentinels a *RemoteError unwraps to.
var (
	// ErrUntrusted: the daemon's certificate is neither a cluster
	// certificate from the customer CA (naming the cluster) nor a device
	// certificate from the manufacturer roots (for the pinned key), as the
	// Config asks; or it is a device certificate and the call carries a
	// password, a session token or an image it is not trusted with.
	ErrUntrusted = errors.New("hsm certificate not trusted")
	// ErrDeviceOnly, with ErrUntrusted: the call carries a password, a
	// session token, quorum approvals or an image, and the daemon proved
	// (or the Config can prove) only a device identity, which is not
	// trusted with it: only the cluster certificate is (and, with an
	// image, the attested device: Bind).
	ErrDeviceOnly = errors.New("a device certificate is trusted with no password, session token or image (only the attested device, with an image)")
	// ErrStalled: an image transfer made no progress for the client's
	// Timeout: the HSM stopped sending (export) or reading or answering
	// (import). Image transfers have no overall deadline, as an image's
	// size is not known in advance; this bounds how long one can hang.
	ErrStalled = errors.New("image transfer stalled")
)

// RemoteError is an error the daemon reported.
type RemoteError struct {
	Status  int
	Code    string
	Message string
}

func (e *RemoteError) Error() string { return e.Message }

// Unwrap returns the hsmcore sentinel for the error's code, if any.
func (e *RemoteError) Unwrap() error { return api.CodeError(e.Code) }

// requestError is the error of a request that got no answer, said without
// what the caller knows already: the method, the URL and the address. It
// unwraps to the original error, so errors.Is and errors.As see the
// *url.Error, the *net.OpError and their causes.
type requestError struct {
	msg string
	err error
}

func (e *requestError) Error() string { return e.msg }
func (e *requestError) Unwrap() error { return e.err }

// bare drops from err (of http.Client.Do) the method and URL of its
// *url.Error and the address of its *net.OpError: "dial: connect:
// connection refused", not `Post "https://10.0.0.1:2225/v1/attest": dial
// tcp 10.0.0.1:2225: connect: connection refused`. The caller names the
// HSM; a context's end is left as it is.
func bare(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	inner := ue.Err
	if errors.Is(inner, context.Canceled) || errors.Is(inner, context.DeadlineExceeded) {
		return &requestError{msg: inner.Error(), err: err}
	}
	var op *net.OpError
	if errors.As(inner, &op) && op.Err != nil {
		cause := op.Err
		var sys *os.SyscallError // "read: connection reset by peer", not "read: read: …"
		if errors.As(cause, &sys) && sys.Syscall == op.Op {
			cause = sys.Err
		}
		return &requestError{msg: op.Op + ": " + cause.Error(), err: err}
	}
	return &requestError{msg: inner.Error(), err: err}
}

// Close releases idle connections.
func (c *Client) Close() {
	c.mu.Lock()
	hcs := c.peers
	c.mu.Unlock()
	closeAll(hcs)
}

// do is a call that carries no secret (but a session token, if set).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	_, err := c.call(ctx, anyPeer, method, path, in, out, nil)
	return err
}

// call makes a JSON call whose peer must be as p says, with the extra
// header hdr, and returns the TLS state of the connection that answered.
func (c *Client) call(ctx context.Context, p peer, method, path string, in, out any, hdr http.Header) (*tls.ConnectionState, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	resp, err := c.send(ctx, p, method, path, "application/json", body, hdr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if out == nil {
		return resp.TLS, nil
	}
	dec := json.NewDecoder(io.LimitReader(resp.Body, 64<<20))
	if err := dec.Decode(out); err != nil {
		return nil, fmt.Errorf("%s %s: answer: %w", method, path, err)
	}
	return resp.TLS, nil
}

// send makes a request over a connection whose peer is as p says (as
// memberPeer if a session token or approvals go with it) and turns a
// non-2xx answer into a *RemoteError. A request no configured peer may
// receive fails with ErrUntrusted before any connection.
func (c *Client) send(ctx context.Context, p peer, method, path, contentType string, body io.Reader, hdr http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	c.mu.Lock()
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
		p = memberPeer
	}
	if c.approval != "" {
		req.Header.Set(api.QuorumHeader, c.approval)
		p = memberPeer
	}
	hc := c.peers[p]
	c.mu.Unlock()
	if hc == nil {
		return nil, fmt.Errorf("%w: %w (%s)", ErrUntrusted, ErrDeviceOnly, refusal(p))
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, bare(err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	var e api.Error
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e); err != nil {
		return nil, fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	return nil, &RemoteError{Status: resp.StatusCode, Code: e.Code, Message: e.Message}
}

// refusal says why a request of kind p has no peer to go to.
func refusal(p peer) string {
	if p == imagePeer {
		return "no customer CA, no attested device"
	}
	return "no customer CA"
}

// Health returns the HSM's identity and state.
func (c *Client) Health(ctx context.Context) (api.Health, error) {
	var h api.Health
	return h, c.do(ctx, "GET", "/v1/health", nil, &h)
}

// Attest asks the HSM for an attestation bound to nonce. Verify it with
// hsmcore.VerifyAttestation (hsmcore.Challenge); Bind then checks that it
// came from the attested HSM, and pins it. The client remembers the
// certificate the answering peer presented, for Bind.
func (c *Client) Attest(ctx context.Context, nonce []byte) (*hsmcore.Attestation, error) {
	var a hsmcore.Attestation
	cs, err := c.call(ctx, anyPeer, "POST", "/v1/attest", api.AttestRequest{Nonce: nonce}, &a, nil)
	if err != nil {
		return &a, err
	}
	if cs != nil && len(cs.PeerCertificates) > 0 {
		c.mu.Lock()
		c.attested = append(c.attested, attestedPeer{nonce: string(nonce), cert: cs.PeerCertificates[0]})
		if len(c.attested) > maxAttested {
			c.attested = c.attested[1:]
		}
		c.mu.Unlock()
	}
	return &a, nil
}

// Certificates returns the HSM's certificates.
func (c *Client) Certificates(ctx context.Context) (api.Certificates, error) {
	var out api.Certificates
	return out, c.do(ctx, "GET", "/v1/certificates", nil, &out)
}

// ClusterCSR asks an uninitialized HSM for its cluster CSR (DER), with a
// claim proof.
func (c *Client) ClusterCSR(ctx context.Context, clusterID string) ([]byte, error) {
	hdr, err := c.claim(ctx, hsmcore.ClaimCSR, clusterID)
	if err != nil {
		return nil, err
	}
	var out api.CSRResponse
	if _, err := c.call(ctx, anyPeer, "POST", "/v1/cluster/csr", api.CSRRequest{ClusterID: clusterID}, &out, hdr); err != nil {
		return nil, err
	}
	return out.CSR, nil
}

// InitializeCluster installs the signed cluster certificate and the
// customer CA (both DER), with a claim proof.
func (c *Client) InitializeCluster(ctx context.Context, cert, ca []byte) error {
	hdr, err := c.claim(ctx, hsmcore.ClaimInit, hsmcore.ClusterInitObject(cert, ca))
	if err != nil {
		return err
	}
	_, err = c.call(ctx, anyPeer, "POST", "/v1/cluster/initialize", api.ClusterInitRequest{Certificate: cert, CustomerCA: ca}, nil, hdr)
	return err
}

// claim returns the header that proves, for op on object, that the client
// holds the claim secret of the HSM that answers; nil if the client holds
// none (the HSM then refuses, naming what is missing). The nonce comes
// from the HSM and is good for this one call.
func (c *Client) claim(ctx context.Context, op, object string) (http.Header, error) {
	if len(c.cfg.Claims) == 0 {
		return nil, nil
	}
	var n api.ClaimNonceResponse
	if err := c.do(ctx, "POST", "/v1/claim/nonce", nil, &n); err != nil {
		return nil, fmt.Errorf("claim nonce: %w", err)
	}
	cl, err := c.cfg.Claims.For(n.Serial)
	if err != nil {
		return nil, err
	}
	return http.Header{api.ClaimHeader: {cl.Prove(n.Nonce, op, object).String()}}, nil
}

// sessionless reports whether the client is not logged in.
func (c *Client) sessionless() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token == ""
}

// secret is a call that carries a password or needs a session: it goes
// only to a member of the cluster.
func (c *Client) secret(ctx context.Context, method, path string, in, out any) error {
	_, err := c.call(ctx, memberPeer, method, path, in, out, nil)
	return err
}

// Initialize creates the first crypto officer. The password goes only to
// a member of the cluster.
func (c *Client) Initialize(ctx context.Context, user, password string) error {
	return c.secret(ctx, "POST", "/v1/initialize", api.Credentials{User: user, Password: password}, nil)
}

// Login opens a session that later calls use. The password goes only to a
// member of the cluster: a daemon that proves only a device identity gets
// nothing (ErrUntrusted).
func (c *Client) Login(ctx context.Context, user, password string) (hsmcore.Role, error) {
	var out api.LoginResponse
	if err := c.secret(ctx, "POST", "/v1/login", api.Credentials{User: user, Password: password}, &out); err != nil {
		return "", err
	}
	c.mu.Lock()
	c.token = out.Token
	c.mu.Unlock()
	return out.Role, nil
}

// Logout ends the session.
func (c *Client) Logout(ctx context.Context) error {
	err := c.do(ctx, "POST", "/v1/logout", nil, nil)
	c.mu.Lock()
	c.token = ""
	c.mu.Unlock()
	return err
}

// ChangePassword sets the logged-in user's password.
func (c *Client) ChangePassword(ctx context.Context, password string) error {
	return c.secret(ctx, "PUT", "/v1/password", api.PasswordRequest{Password: password}, nil)
}

// Users lists the users.
func (c *Client) Users(ctx context.Context) ([]hsmcore.UserInfo, error) {
	var out api.UsersResponse
	return out.Users, c.do(ctx, "GET", "/v1/users", nil, &out)
}

// Inventory lists the HSM's users and token keys by name (crypto
// officers): what a backup's manifest records. The keys are listed if
// there are at most maxKeys, else only counted.
func (c *Client) Inventory(ctx context.Context, maxKeys int) (hsmcore.Inventory, error) {
	var out api.InventoryResponse
	return out, c.do(ctx, "GET", "/v1/inventory?max_keys="+strconv.Itoa(maxKeys), nil, &out)
}

// CreateUser adds a user.
func (c *Client) CreateUser(ctx context.Context, name string, role hsmcore.Role, password string) error {
	return c.secret(ctx, "POST", "/v1/users", api.CreateUserRequest{Name: name, Role: role, Password: password}, nil)
}

// DeleteUser removes a user.
func (c *Client) DeleteUser(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/users/"+name, nil, nil)
}

// UnlockUser lifts a user's lockout after failed logins on this HSM
// (crypto officers only).
func (c *Client) UnlockUser(ctx context.Context, name string) error {
	return c.do(ctx, "POST", "/v1/users/"+url.PathEscape(name)+"/unlock", nil, nil)
}

// Keys lists the keys the session may see.
func (c *Client) Keys(ctx context.Context) ([]hsmcore.KeyInfo, error) {
	var out api.KeysResponse
	return out.Keys, c.do(ctx, "GET", "/v1/keys", nil, &out)
}

// GenerateKeys creates keys, all or none.
func (c *Client) GenerateKeys(ctx context.Context, specs []hsmcore.KeySpec) ([]hsmcore.KeyInfo, error) {
	var out api.KeysResponse
	return out.Keys, c.do(ctx, "POST", "/v1/keys", api.GenerateKeysRequest{Keys: specs}, &out)
}

// Key returns one key's attributes.
func (c *Client) Key(ctx context.Context, h uint64) (hsmcore.KeyInfo, error) {
	var out hsmcore.KeyInfo
	return out, c.do(ctx, "GET", keyPath(h, ""), nil, &out)
}

func keyPath(h uint64, op string) string {
	p := "/v1/keys/" + strconv.FormatUint(h, 10)
	if op != "" {
		p += "/" + op
	}
	return p
}

// DeleteKey destroys a key.
func (c *Client) DeleteKey(ctx context.Context, h uint64) error {
	return c.do(ctx, "DELETE", keyPath(h, ""), nil, nil)
}

// SetAttributes changes a key's attributes.
func (c *Client) SetAttributes(ctx context.Context, h uint64, change hsmcore.AttributeChange) error {
	return c.do(ctx, "PATCH", keyPath(h, ""), change, nil)
}

// ShareKey shares a key with another crypto user, or stops sharing it.
func (c *Client) ShareKey(ctx context.Context, h uint64, user string, share bool) error {
	return c.do(ctx, "POST", keyPath(h, "share"), api.ShareRequest{User: user, Share: share}, nil)
}

// SetTrusted marks a key trusted or not.
func (c *Client) SetTrusted(ctx context.Context, h uint64, trusted bool) error {
	return c.do(ctx, "POST", keyPath(h, "trust"), api.TrustRequest{Trusted: trusted}, nil)
}

func (c *Client) crypto(ctx context.Context, h uint64, op string, req api.CryptoRequest) ([]byte, error) {
	var out api.CryptoResponse
	return out.Data, c.do(ctx, "POST", keyPath(h, op), req, &out)
}

// Encrypt seals data with AES-GCM under key h.
func (c *Client) Encrypt(ctx context.Context, h uint64, data, aad []byte) ([]byte, error) {
	return c.crypto(ctx, h, "encrypt", api.CryptoRequest{Data: data, AAD: aad})
}

// Decrypt opens what Encrypt sealed.
func (c *Client) Decrypt(ctx context.Context, h uint64, data, aad []byte) ([]byte, error) {
	return c.crypto(ctx, h, "decrypt", api.CryptoRequest{Data: data, AAD: aad})
}

// Sign signs data with key h.
func (c *Client) Sign(ctx context.Context, h uint64, data []byte) ([]byte, error) {
	return c.crypto(ctx, h, "sign", api.CryptoRequest{Data: data})
}

// Verify checks a signature with key h.
func (c *Client) Verify(ctx context.Context, h uint64, data, sig []byte) error {
	return c.do(ctx, "POST", keyPath(h, "verify"), api.CryptoRequest{Data: data, Signature: sig}, nil)
}

// NewTransportKey has the HSM make a transport key of mech (hpke or
// rsa-aes) for the logged-in crypto user and attest to it over nonce
// (hsmcore.TransportOffer).
func (c *Client) NewTransportKey(ctx context.Context, nonce []byte, mech hsmcore.Mechanism) (hsmcore.TransportOffer, error) {
	var out hsmcore.TransportOffer
	err := c.do(ctx, "POST", "/v1/migrate/transport-key", api.TransportKeyRequest{Nonce: nonce, Mechanism: string(mech)}, &out)
	return out, err
}

// ExportBundle has the HSM write keys handles in a bundle under offer's
// transport key, once it has checked offer against opRoots (DER).
func (c *Client) ExportBundle(ctx context.Context, offer hsmcore.TransportOffer, opRoots [][]byte, handles []uint64, dryRun bool) (api.ExportBundleResponse, error) {
	var out api.ExportBundleResponse
	err := c.do(ctx, "POST", "/v1/migrate/export", api.ExportBundleRequest{Offer: offer, OperatorRoots: opRoots, Handles: handles, DryRun: dryRun}, &out)
	return out, err
}

// ImportBundle has the HSM import a bundle made for one of its transport
// keys.
func (c *Client) ImportBundle(ctx context.Context, b *hsmcore.Bundle) ([]hsmcore.Migrated, error) {
	var out api.ImportBundleResponse
	err := c.do(ctx, "POST", "/v1/migrate/import", api.ImportBundleRequest{Bundle: b}, &out)
	return out.Results, err
}

// WrapKey wraps key target under key wrapping with mech.
func (c *Client) WrapKey(ctx context.Context, wrapping, target uint64, mech hsmcore.Mechanism) ([]byte, error) {
	var out api.WrapResponse
	if err := c.do(ctx, "POST", "/v1/wrap", api.WrapRequest{Wrapping: wrapping, Target: target, Mechanism: string(mech)}, &out); err != nil {
		return nil, err
	}
	return out.Wrapped, nil
}

// WrapKeyToPublic wraps key target with mech under pub, an outside RSA
// public key (PKIX DER).
func (c *Client) WrapKeyToPublic(ctx context.Context, pub []byte, target uint64, mech hsmcore.Mechanism) ([]byte, error) {
	var out api.WrapResponse
	if err := c.do(ctx, "POST", "/v1/wrap", api.WrapRequest{PublicKey: pub, Target: target, Mechanism: string(mech)}, &out); err != nil {
		return nil, err
	}
	return out.Wrapped, nil
}

// UnwrapKey imports a key wrapped with mech under key unwrapping.
func (c *Client) UnwrapKey(ctx context.Context, unwrapping uint64, mech hsmcore.Mechanism, wrapped []byte, spec hsmcore.KeySpec) (hsmcore.KeyInfo, error) {
	var out hsmcore.KeyInfo
	if err := c.do(ctx, "POST", "/v1/unwrap", api.UnwrapRequest{Unwrapping: unwrapping, Mechanism: string(mech), Wrapped: wrapped, Spec: spec}, &out); err != nil {
		return hsmcore.KeyInfo{}, err
	}
	return out, nil
}

// ExportChanges returns the change records the HSM made after its
// sequence number since, for the member with serial to (at most 256), and
// the sequence number of the last.
func (c *Client) ExportChanges(ctx context.Context, since uint64, to string) ([][]byte, uint64, error) {
	var out api.Changes
	err := c.do(ctx, "POST", "/v1/sync/export", api.ChangesRequest{Since: since, To: to}, &out)
	return out.Records, out.Upto, err
}

// ImportChange applies a change record another member made.
func (c *Client) ImportChange(ctx context.Context, rec []byte) error {
	return c.do(ctx, "POST", "/v1/sync/import", api.Record{Record: rec}, nil)
}

// ImportChanges applies change records in order with one commit of the
// HSM's state; at the first refused it stops, keeping those before it.
func (c *Client) ImportChanges(ctx context.Context, recs [][]byte) error {
	return c.do(ctx, "POST", "/v1/sync/import", api.Record{Records: recs}, nil)
}

// AddMember adds the HSM with manufacturer-issued device certificate
// certDER (DER) to the cluster's member list on this HSM.
func (c *Client) AddMember(ctx context.Context, certDER []byte) error {
	return c.do(ctx, "POST", "/v1/cluster/members", api.MemberRequest{Certificate: certDER}, nil)
}

// AuditLog reads the HSM's whole audit log, a page at a time (GET
// /v1/audit?from=…), up to the head the first page brings, and calls
// visit with each page's entries in order; it returns that head, signed
// by the device. The pages must form one chain, from the first entry to
// that head: one that does not continue the ones before, or a log that
// stops short of the head, fails with an error wrapping audit.ErrBroken
// and hsmcore.ErrTampered. The head's signature is the caller's to check,
// against the device certificate of an attestation
// (hsmcore.VerifyAuditHead); the log is then the device's.
func (c *Client) AuditLog(ctx context.Context, visit func([]audit.Entry) error) (hsmcore.SignedHead, error) {
	return readAuditLog(func(from uint64) (api.AuditResponse, error) {
		var page api.AuditResponse
		return page, c.do(ctx, "GET", "/v1/audit?from="+strconv.FormatUint(from, 10), nil, &page)
	}, visit)
}

// readAuditLog is AuditLog with the pages from fetch.
func readAuditLog(fetch func(from uint64) (api.AuditResponse, error), visit func([]audit.Entry) error) (hsmcore.SignedHead, error) {
	var head hsmcore.SignedHead
	at := audit.Head{} // the last entry checked
	for first := true; first || at.Seq < head.Head.Seq; first = false {
		page, err := fetch(at.Seq + 1)
		if err != nil {
			return hsmcore.SignedHead{}, err
		}
		if first {
			head = page.Head
		}
		entries := page.Entries
		if len(entries) == 0 && at.Seq < head.Head.Seq {
			return hsmcore.SignedHead{}, fmt.Errorf("audit log: the HSM sent no entry after %d, its head is %d: %w: %w", at.Seq, head.Head.Seq, audit.ErrBroken, hsmcore.ErrTampered)
		}
		if err := audit.VerifyFrom(at, entries, nil); err != nil {
			return hsmcore.SignedHead{}, fmt.Errorf("audit log: %w: %w", err, hsmcore.ErrTampered)
		}
		if n := head.Head.Seq - at.Seq; uint64(len(entries)) > n {
			entries = entries[:n] // appended since the first page: past its head
		}
		if len(entries) > 0 {
			if err := visit(entries); err != nil {
				return hsmcore.SignedHead{}, err
			}
			last := entries[len(entries)-1]
			at = audit.Head{Seq: last.Seq, Hash: last.Hash}
		}
	}
	if at != head.Head {
		return hsmcore.SignedHead{}, fmt.Errorf("audit log: the chain ends at entry %d, not at the head the HSM signed: %w: %w", at.Seq, audit.ErrBroken, hsmcore.ErrTampered)
	}
	return head, nil
}

// ExportImage streams the HSM's image; the caller closes it. Cancelling
// ctx stops the transfer; so does a stall: a Read that waits for the HSM
// longer than the client's Timeout fails with an error wrapping
// ErrStalled. A stream the daemon aborts, or a connection that ends,
// fails a Read; after io.EOF the stream's ImageStatement is the HSM's
// signed statement of what it sent, from the answer's trailers (decoded,
// not verified).
func (c *Client) ExportImage(ctx context.Context) (hsmcore.ImageStream, error) {
	w := newWatchdog(ctx, c.timeout)
	resp, err := c.send(w.ctx, memberPeer, "GET", "/v1/image", "", nil, nil)
	if err != nil {
		w.stop()
		return nil, w.explain(err)
	}
	w.disarm() // armed again by each Read
	return &exportBody{body: resp.Body, w: w, resp: resp}, nil
}

// ImportImage streams an image into the HSM. A stall (the HSM takes in
// nothing more, or does not answer once it has all, for the client's
// Timeout; time spent reading img does not count) fails it with an error
// wrapping ErrStalled.
func (c *Client) ImportImage(ctx context.Context, img io.Reader) (api.ImportResponse, error) {
	var out api.ImportResponse
	var hdr http.Header
	if c.sessionless() {
		var err error
		if hdr, err = c.claim(ctx, hsmcore.ClaimImport, ""); err != nil {
			return out, err
		}
	}
	w := newWatchdog(ctx, c.timeout)
	defer w.stop()
	resp, err := c.send(w.ctx, imagePeer, "PUT", "/v1/image", "application/octet-stream", io.NopCloser(&importBody{img, w}), hdr)
	if err != nil {
		return out, w.explain(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&out); err != nil {
		return out, fmt.Errorf("import image: answer: %w", w.explain(err))
	}
	return out, nil
}

// Zeroize returns the HSM to its factory state: its users, keys, quorum
// policy and cluster membership are erased; its device identity stays. It
// is a crypto officer's call, with quorum approvals (Approve) for
// operation "device.zeroize" on the HSM's serial if the HSM's policy asks.
// The session ends with it, and the client's connections are closed: the
// HSM now presents its device certificate, which only ManufacturerRoots
// trust.
func (c *Client) Zeroize(ctx context.Context) error {
	if err := c.do(ctx, "POST", "/v1/zeroize", nil, nil); err != nil {
		return err
	}
	c.mu.Lock()
	c.token = ""
	hcs := c.peers
	c.mu.Unlock()
	closeAll(hcs)
	return nil
}

// RegisterSigningKey sets the logged-in officer's quorum signing key.
func (c *Client) RegisterSigningKey(ctx context.Context, pub ed25519.PublicKey) error {
	return c.do(ctx, "POST", "/v1/quorum/key", api.SigningKeyRequest{PublicKey: pub}, nil)
}

// Quorum returns the HSM's quorum policy.
func (c *Client) Quorum(ctx context.Context) (quorum.Policy, error) {
	var p quorum.Policy
	return p, c.do(ctx, "GET", "/v1/quorum/policy", nil, &p)
}

// SetQuorum makes op need m approvals (0: none).
func (c *Client) SetQuorum(ctx context.Context, op string, m int) error {
	return c.do(ctx, "PUT", "/v1/quorum/policy", api.QuorumPolicyRequest{Op: op, M: m}, nil)
}

// QuorumToken asks for a token for op on object; sealed is set on a
// cluster member, for the other members to adopt.
func (c *Client) QuorumToken(ctx context.Context, op, object string) (tok quorum.Token, sealed []byte, err error) {
	var out api.QuorumTokenResponse
	err = c.do(ctx, "POST", "/v1/quorum/token", api.QuorumTokenRequest{Op: op, Object: object}, &out)
	return out.Token, out.Sealed, err
}

// AdoptQuorumToken accepts a token another member issued.
func (c *Client) AdoptQuorumToken(ctx context.Context, sealed []byte) (quorum.Token, error) {
	var tok quorum.Token
	return tok, c.do(ctx, "POST", "/v1/quorum/adopt", api.Record{Record: sealed}, &tok)
}

// Approve sends approvals of token id with every later call until
// Approve(id, nil) or ClearApproval; the HSM consumes them with the first
// protected operation.
func (c *Client) Approve(id [16]byte, approvals []quorum.Approval) error {
	b, err := json.Marshal(api.Approvals{TokenID: hex.EncodeToString(id[:]), Approvals: approvals})
	if err != nil {
		return err
	}
	h := base64.RawURLEncoding.EncodeToString(b)
	if len(h) > api.MaxQuorumHeader {
		return fmt.Errorf("approve: too many approvals: %w", hsmcore.ErrInvalid)
	}
	c.mu.Lock()
	c.approval = h
	if approvals == nil {
		c.approval = ""
	}
	c.mu.Unlock()
	return nil
}

// ClearApproval stops sending approvals.
func (c *Client) ClearApproval() {
	c.mu.Lock()
	c.approval = ""
	c.mu.Unlock()
}
