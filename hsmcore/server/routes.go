package server

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
	"github.com/hsmbackup/hsmbackup/hsmcore/device"
)

// access is who may call a route.
type access int

const (
	public   access = iota // any TLS client: health, attestation, certificates
	preInit                // only before the cluster is initialized
	member                 // a client certificate from the customer CA
	loggedIn               // member, logged in
)

// handler serves one call and returns the JSON answer (nil for 204).
type handler func(r *http.Request, s *device.Session) (any, error)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, a access, h handler) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) { s.serve(w, r, pattern, a, h) })
	}
	route("GET /v1/health", public, s.health)
	route("POST /v1/attest", public, s.attest)
	route("GET /v1/certificates", public, s.certificates)
	route("POST /v1/claim/nonce", preInit, s.claimNonce)
	route("POST /v1/cluster/csr", preInit, s.clusterCSR)
	route("POST /v1/cluster/initialize", preInit, s.clusterInit)
	route("POST /v1/initialize", member, s.initialize)
	route("POST /v1/login", member, s.login)
	route("POST /v1/logout", loggedIn, s.logout)
	route("PUT /v1/password", loggedIn, s.password)
	route("GET /v1/users", loggedIn, s.users)
	route("POST /v1/users", loggedIn, s.createUser)
	route("DELETE /v1/users/{name}", loggedIn, s.deleteUser)
	route("POST /v1/users/{name}/unlock", loggedIn, s.unlockUser)
	route("GET /v1/keys", loggedIn, s.keys)
	route("GET /v1/inventory", loggedIn, s.inventory)
	route("POST /v1/keys", loggedIn, s.generateKeys)
	route("GET /v1/keys/{handle}", loggedIn, s.key)
	route("DELETE /v1/keys/{handle}", loggedIn, s.deleteKey)
	route("PATCH /v1/keys/{handle}", loggedIn, s.setAttributes)
	route("POST /v1/keys/{handle}/share", loggedIn, s.share)
	route("POST /v1/keys/{handle}/trust", loggedIn, s.trust)
	route("POST /v1/keys/{handle}/{op}", loggedIn, s.crypto)
	route("POST /v1/wrap", loggedIn, s.wrap)
	route("POST /v1/unwrap", loggedIn, s.unwrap)
	route("POST /v1/migrate/transport-key", loggedIn, s.transportKey)
	route("POST /v1/migrate/export", loggedIn, s.exportBundle)
	route("POST /v1/migrate/import", loggedIn, s.importBundle)
	route("POST /v1/sync/export", loggedIn, s.exportRecord)
	route("POST /v1/sync/import", loggedIn, s.importRecord)
	route("POST /v1/cluster/members", loggedIn, s.addMember)
	route("GET /v1/audit", loggedIn, s.audit)
	route("POST /v1/quorum/key", loggedIn, s.signingKey)
	route("GET /v1/quorum/policy", loggedIn, s.quorumPolicy)
	route("PUT /v1/quorum/policy", loggedIn, s.setQuorum)
	route("POST /v1/quorum/token", loggedIn, s.quorumToken)
	route("POST /v1/quorum/adopt", loggedIn, s.adoptToken)
	route("POST /v1/zeroize", loggedIn, s.zeroize)
	mux.HandleFunc("GET /v1/image", s.exportImage)
	mux.HandleFunc("PUT /v1/image", s.importImage)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, fmt.Errorf("no such call %s %s: %w", r.Method, r.URL.Path, hsmcore.ErrNotFound))
	})
	return mux
}

// serve checks access, runs h and writes its answer.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, name string, a access, h handler) {
	sess, err := s.authorize(r, a)
	var out any
	if err == nil {
		out, err = h(r, sess)
	}
	discard(r.Body, api.MaxBody)
	if err != nil {
		s.log.Info("refused", "call", name, "remote", r.RemoteAddr, "err", err)
		writeError(w, err)
		return
	}
	s.log.Debug("served", "call", name, "remote", r.RemoteAddr)
	if out == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

// authorize applies an access level to a request and returns its session
// where one is needed.
func (s *Server) authorize(r *http.Request, a access) (*device.Session, error) {
	switch a {
	case public:
		return nil, nil
	case preInit:
		if s.dev.ClusterInitialized() {
			return nil, fmt.Errorf("cluster already initialized: %w", hsmcore.ErrPermission)
		}
		return nil, nil
	}
	// A connection made before the cluster was initialized carries no
	// verified client certificate, and gets nothing more.
	if !s.dev.ClusterInitialized() {
		return nil, fmt.Errorf("cluster not initialized: %w", hsmcore.ErrPermission)
	}
	if certHash(r) == ([32]byte{}) {
		return nil, fmt.Errorf("a client certificate from the customer CA is required: %w", hsmcore.ErrPermission)
	}
	if a == member {
		return nil, nil
	}
	hs, err := s.session(r)
	if err != nil {
		return nil, err
	}
	if err := approve(r, hs); err != nil {
		return nil, err
	}
	return hs, nil
}

// approve attaches the request's quorum approvals, if any, to the session.
func approve(r *http.Request, hs *device.Session) error {
	h := r.Header.Get(api.QuorumHeader)
	if h == "" {
		return nil
	}
	bad := func(why string) error {
		return fmt.Errorf("%s header: %s: %w", api.QuorumHeader, why, hsmcore.ErrMalformed)
	}
	if len(h) > api.MaxQuorumHeader {
		return bad("too large")
	}
	raw, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		return bad("not base64url")
	}
	var a api.Approvals
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return bad(err.Error())
	}
	id, err := hex.DecodeString(a.TokenID)
	if err != nil || len(id) != 16 {
		return bad("token id is not 32 hex digits")
	}
	hs.Approve([16]byte(id), a.Approvals)
	return nil
}

func writeError(w http.ResponseWriter, err error) {
	code, status := api.ErrorCode(err)
	msg := err.Error()
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		code, status, msg = "too_large", http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", mbe.Limit)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(api.Error{Code: code, Message: msg})
}

// decode reads a bounded JSON body into v: one object, no unknown fields.
// A body over api.MaxBody fails with *http.MaxBytesError (413).
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, api.MaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return fmt.Errorf("request body: %v: %w", err, hsmcore.ErrMalformed)
	}
	if dec.More() {
		return fmt.Errorf("request body: one JSON object: %w", hsmcore.ErrMalformed)
	}
	return nil
}

func handle(r *http.Request) (uint64, error) {
	h, err := strconv.ParseUint(r.PathValue("handle"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("key handle %q: %w", r.PathValue("handle"), hsmcore.ErrInvalid)
	}
	return h, nil
}

func (s *Server) health(*http.Request, *device.Session) (any, error) {
	fp := s.dev.PBKFingerprint()
	keys, users := s.dev.Counts()
	digest, version := s.dev.State()
	return api.Health{Identity: s.dev.Identity(), ClusterID: s.dev.ClusterID(), ClusterInitialized: s.dev.ClusterInitialized(),
		Initialized: s.dev.Initialized(), StateDigest: digest, PBKFingerprint: fp[:],
		KeyCount: keys, UserCount: users, StateVersion: version, Capacity: s.dev.Capacity()}, nil
}

func (s *Server) attest(r *http.Request, _ *device.Session) (any, error) {
	var req api.AttestRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return s.dev.Attest(req.Nonce)
}

func (s *Server) certificates(*http.Request, *device.Session) (any, error) {
	m, o := s.dev.Certificates()
	out := api.Certificates{Manufacturer: m.Raw, Operator: o.Raw}
	if ca := s.dev.CustomerCA(); ca != nil {
		id, err := s.dev.TLSIdentity()
		if err != nil {
			return nil, err
		}
		out.Cluster, out.CustomerCA = id.Certificate.Certificate[0], ca.Raw
	}
	return out, nil
}

func (s *Server) claimNonce(*http.Request, *device.Session) (any, error) {
	n, err := s.dev.ClaimNonce()
	if err != nil {
		return nil, err
	}
	return api.ClaimNonceResponse{Serial: s.dev.Identity().Serial, Nonce: n}, nil
}

// claimProof is the request's claim proof, nil if it has none.
func claimProof(r *http.Request) (*hsmcore.ClaimProof, error) {
	h := r.Header.Get(api.ClaimHeader)
	if h == "" {
		return nil, nil
	}
	p, err := hsmcore.ParseClaimProof(h)
	if err != nil {
		return nil, err
	}
	return &p, nil
}

func (s *Server) clusterCSR(r *http.Request, _ *device.Session) (any, error) {
	var req api.CSRRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	p, err := claimProof(r)
	if err != nil {
		return nil, err
	}
	csr, err := s.dev.ClusterCSR(req.ClusterID, p)
	if err != nil {
		return nil, err
	}
	return api.CSRResponse{CSR: csr}, nil
}

func (s *Server) clusterInit(r *http.Request, _ *device.Session) (any, error) {
	var req api.ClusterInitRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	p, err := claimProof(r)
	if err != nil {
		return nil, err
	}
	return nil, s.dev.InitializeCluster(req.Certificate, req.CustomerCA, p)
}

func (s *Server) initialize(r *http.Request, _ *device.Session) (any, error) {
	var req api.Credentials
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return nil, s.dev.Initialize(req.User, req.Password)
}

func (s *Server) login(r *http.Request, _ *device.Session) (any, error) {
	var req api.Credentials
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	hs, err := s.dev.Login(req.User, req.Password)
	if err != nil {
		return nil, err
	}
	token := base64.RawURLEncoding.EncodeToString(randomBytes(32))
	if err := s.newSession(r, hs, token); err != nil {
		hs.Logout()
		return nil, err
	}
	return api.LoginResponse{Token: token, Role: hs.User().Role}, nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func (s *Server) logout(r *http.Request, _ *device.Session) (any, error) {
	s.endSession(r)
	return nil, nil
}

func (s *Server) password(r *http.Request, hs *device.Session) (any, error) {
	var req api.PasswordRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return nil, hs.ChangePassword(req.Password)
}

func (s *Server) users(_ *http.Request, hs *device.Session) (any, error) {
	u, err := hs.Users()
	return api.UsersResponse{Users: u}, err
}

func (s *Server) createUser(r *http.Request, hs *device.Session) (any, error) {
	var req api.CreateUserRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return nil, hs.CreateUser(req.Name, req.Role, req.Password)
}

func (s *Server) deleteUser(r *http.Request, hs *device.Session) (any, error) {
	return nil, hs.DeleteUser(r.PathValue("name"))
}

func (s *Server) unlockUser(r *http.Request, hs *device.Session) (any, error) {
	return nil, hs.UnlockUser(r.PathValue("name"))
}

func (s *Server) keys(_ *http.Request, hs *device.Session) (any, error) {
	k, err := hs.Keys()
	return api.KeysResponse{Keys: k}, err
}

// inventory answers GET /v1/inventory?max_keys=N: the keys listed if
// there are at most N (default: all the HSM can hold).
func (s *Server) inventory(r *http.Request, hs *device.Session) (any, error) {
	maxKeys := math.MaxInt
	if q := r.URL.Query().Get("max_keys"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("max_keys %q: %w", q, hsmcore.ErrInvalid)
		}
		maxKeys = n
	}
	inv, err := hs.Inventory(maxKeys)
	return api.InventoryResponse(inv), err
}

func (s *Server) generateKeys(r *http.Request, hs *device.Session) (any, error) {
	var req api.GenerateKeysRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	k, err := hs.GenerateKeys(req.Keys)
	return api.KeysResponse{Keys: k}, err
}

func (s *Server) key(r *http.Request, hs *device.Session) (any, error) {
	h, err := handle(r)
	if err != nil {
		return nil, err
	}
	return hs.Key(h)
}

func (s *Server) deleteKey(r *http.Request, hs *device.Session) (any, error) {
	h, err := handle(r)
	if err != nil {
		return nil, err
	}
	return nil, hs.DeleteKey(h)
}

func (s *Server) setAttributes(r *http.Request, hs *device.Session) (any, error) {
	h, err := handle(r)
	if err != nil {
		return nil, err
	}
	var req hsmcore.AttributeChange
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return nil, hs.SetAttributes(h, req)
}

func (s *Server) share(r *http.Request, hs *device.Session) (any, error) {
	h, err := handle(r)
	if err != nil {
		return nil, err
	}
	var req api.ShareRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return nil, hs.ShareKey(h, req.User, req.Share)
}

func (s *Server) trust(r *http.Request, hs *device.Session) (any, error) {
	h, err := handle(r)
	if err != nil {
		return nil, err
	}
	var req api.TrustRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return nil, hs.SetTrusted(h, req.Trusted)
}

func (s *Server) crypto(r *http.Request, hs *device.Session) (any, error) {
	h, err := handle(r)
	if err != nil {
		return nil, err
	}
	var req api.CryptoRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	var out []byte
	switch op := r.PathValue("op"); op {
	case "encrypt":
		out, err = hs.Encrypt(h, req.Data, req.AAD)
	case "decrypt":
		out, err = hs.Decrypt(h, req.Data, req.AAD)
	case "sign":
		out, err = hs.Sign(h, req.Data)
	case "verify":
		return nil, hs.Verify(h, req.Data, req.Signature)
	default:
		return nil, fmt.Errorf("no key operation %q: %w", op, hsmcore.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return api.CryptoResponse{Data: out}, nil
}

func (s *Server) transportKey(r *http.Request, hs *device.Session) (any, error) {
	var req api.TransportKeyRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	mech := hsmcore.HPKEWrap
	if req.Mechanism != "" {
		mech = hsmcore.Mechanism(req.Mechanism)
	}
	return hs.NewTransportKey(req.Nonce, mech)
}

func (s *Server) exportBundle(r *http.Request, hs *device.Session) (any, error) {
	var req api.ExportBundleRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	for _, der := range req.OperatorRoots {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("operator root: %v: %w", err, hsmcore.ErrInvalid)
		}
		roots.AddCert(c)
	}
	b, res, err := hs.ExportBundle(req.Offer, roots, req.Handles, req.DryRun)
	if err != nil {
		return nil, err
	}
	return api.ExportBundleResponse{Bundle: b, Results: res}, nil
}

func (s *Server) importBundle(r *http.Request, hs *device.Session) (any, error) {
	var req api.ImportBundleRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	res, err := hs.ImportBundle(req.Bundle)
	if err != nil {
		return nil, err
	}
	return api.ImportBundleResponse{Results: res}, nil
}

func (s *Server) wrap(r *http.Request, hs *device.Session) (any, error) {
	var req api.WrapRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	mech, err := hsmcore.ParseMechanism(req.Mechanism)
	if err != nil {
		return nil, err
	}
	var w []byte
	switch {
	case req.PublicKey == nil:
		w, err = hs.WrapKey(req.Wrapping, req.Target, mech)
	case req.Wrapping != 0:
		return nil, fmt.Errorf("wrap: a wrapping key handle and a public key: %w", hsmcore.ErrInvalid)
	default:
		w, err = hs.WrapKeyToPublic(req.PublicKey, req.Target, mech)
	}
	if err != nil {
		return nil, err
	}
	return api.WrapResponse{Wrapped: w}, nil
}

func (s *Server) unwrap(r *http.Request, hs *device.Session) (any, error) {
	var req api.UnwrapRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	mech, err := hsmcore.ParseMechanism(req.Mechanism)
	if err != nil {
		return nil, err
	}
	return hs.UnwrapKey(req.Unwrapping, mech, req.Wrapped, req.Spec)
}

func (s *Server) exportRecord(r *http.Request, hs *device.Session) (any, error) {
	var req api.ChangesRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	recs, upto, err := hs.ExportChanges(req.Since, req.To)
	if err != nil {
		return nil, err
	}
	return api.Changes{Records: recs, Upto: upto}, nil
}

func (s *Server) addMember(r *http.Request, hs *device.Session) (any, error) {
	var req api.MemberRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return nil, hs.AddMember(req.Certificate)
}

func (s *Server) importRecord(r *http.Request, hs *device.Session) (any, error) {
	var req api.Record
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Records != nil {
		if req.Record != nil {
			return nil, fmt.Errorf("import changes: a record and records: %w", hsmcore.ErrInvalid)
		}
		_, err := hs.ImportChanges(req.Records)
		return nil, err
	}
	return nil, hs.ImportChange(req.Record)
}

// audit answers a page of the audit log (api.AuditResponse): crypto
// officers only.
func (s *Server) audit(r *http.Request, hs *device.Session) (any, error) {
	if hs.User().Role != hsmcore.CryptoOfficer {
		return nil, fmt.Errorf("audit log: crypto officers only: %w", hsmcore.ErrPermission)
	}
	from, limit, err := auditQuery(r.URL.Query())
	if err != nil {
		return nil, err
	}
	entries, head, err := s.dev.AuditPage(from, limit)
	if err != nil {
		return nil, err
	}
	entries, err = pageWithin(entries, api.MaxAuditPageBytes)
	if err != nil {
		return nil, err
	}
	return api.AuditResponse{Entries: entries, Head: head}, nil
}

// pageWithin returns the first of entries whose JSON takes at most budget
// bytes, at least one: the rest go in the next page.
func pageWithin(entries []audit.Entry, budget int) ([]audit.Entry, error) {
	size := 0
	for i, e := range entries {
		b, err := json.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		if size += len(b) + 1; size > budget && i > 0 {
			return entries[:i], nil
		}
	}
	return entries, nil
}

// auditQuery reads the page GET /v1/audit asks for: from (default 1) and
// limit (default and at most api.MaxAuditPage).
func auditQuery(q url.Values) (from uint64, limit int, err error) {
	from, limit = 1, api.MaxAuditPage
	if v := q.Get("from"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n < 1 {
			return 0, 0, fmt.Errorf("audit log: from %.40q: want a sequence number, 1 or more: %w", v, hsmcore.ErrInvalid)
		}
		from = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > api.MaxAuditPage {
			return 0, 0, fmt.Errorf("audit log: limit %.40q: want 1 to %d entries: %w", v, api.MaxAuditPage, hsmcore.ErrInvalid)
		}
		limit = n
	}
	return from, limit, nil
}

// exportImage streams the device's image to the client: a crypto
// officer's call.
func (s *Server) exportImage(w http.ResponseWriter, r *http.Request) {
	hs, err := s.authorize(r, loggedIn)
	if err != nil {
		writeError(w, err)
		return
	}
	_, img, err := hs.ExportImage(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	defer img.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Trailer", api.ImageTrailers)
	_, err = io.Copy(w, img)
	var st *hsmcore.SignedImageStatement
	if err == nil {
		st, err = img.ImageStatement()
	}
	if err != nil {
		// The status is sent: abort, so that HTTP/2 resets the stream
		// and the client reads an error, never a clean end of a prefix.
		s.log.Info("image export cut", "remote", r.RemoteAddr, "err", err)
		panic(http.ErrAbortHandler)
	}
	api.SetImageStatement(w.Header(), st)
}

// importImage streams an image from the client into the device. A new HSM
// takes it from the holder of its claim secret (a new cluster member being
// cloned), a device with an initialized cluster and no users from a
// client with a certificate from the customer CA; otherwise a crypto
// officer's session is needed.
func (s *Server) importImage(w http.ResponseWriter, r *http.Request) {
	var hs *device.Session
	if r.Header.Get("Authorization") != "" {
		var err error
		if hs, err = s.authorize(r, loggedIn); err != nil {
			writeError(w, err)
			return
		}
	} else if s.dev.ClusterInitialized() && certHash(r) == ([32]byte{}) {
		writeError(w, fmt.Errorf("a client certificate from the customer CA is required: %w", hsmcore.ErrPermission))
		return
	}
	body := bufio.NewReaderSize(r.Body, 64<<10)
	var h *hsmcore.ImageHeader
	p, err := claimProof(r)
	switch {
	case err != nil:
	case hs == nil && p != nil:
		h, err = s.dev.ClaimImage(r.Context(), p, body)
	default:
		h, err = s.dev.ImportImage(r.Context(), hs, body)
	}
	if err != nil {
		s.log.Info("image import refused", "remote", r.RemoteAddr, "err", err)
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(api.ImportResponse{ImageID: h.ImageID[:], Source: h.Source, ClusterID: h.ClusterID})
}

func (s *Server) signingKey(r *http.Request, hs *device.Session) (any, error) {
	var req api.SigningKeyRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return nil, hs.RegisterSigningKey(req.PublicKey)
}

func (s *Server) quorumPolicy(*http.Request, *device.Session) (any, error) {
	return s.dev.Quorum(), nil
}

func (s *Server) setQuorum(r *http.Request, hs *device.Session) (any, error) {
	var req api.QuorumPolicyRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return nil, hs.SetQuorum(req.Op, req.M)
}

func (s *Server) quorumToken(r *http.Request, hs *device.Session) (any, error) {
	var req api.QuorumTokenRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	tok, sealed, err := hs.QuorumToken(req.Op, req.Object)
	if err != nil {
		return nil, err
	}
	return api.QuorumTokenResponse{Token: tok, Sealed: sealed}, nil
}

func (s *Server) adoptToken(r *http.Request, hs *device.Session) (any, error) {
	var req api.Record
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return hs.AdoptQuorumToken(req.Record)
}

// zeroize returns the device to its factory state: a crypto officer's
// call, over the member channel, with the quorum's approvals if its
// policy asks (device.Session.Zeroize). No body; 204. Every session ends:
// their users are gone. The next handshake gets the device certificate.
func (s *Server) zeroize(r *http.Request, hs *device.Session) (any, error) {
	if err := hs.Zeroize(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	clear(s.sessions)
	s.mu.Unlock()
	s.log.Warn("zeroized", "user", hs.User().Name, "remote", r.RemoteAddr, "serial", s.dev.Identity().Serial)
	return nil, nil
}
