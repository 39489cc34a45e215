// Package api is the wire protocol between an HSM daemon (hsmcore/server)
// and its clients (hsmcore/client): JSON bodies over HTTP/2 on mutual TLS
// 1.3, images streamed as raw bytes. Byte slices travel as base64, as
// encoding/json writes them.
package api

import (
	"errors"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
)

// Limits a server enforces and a client respects.
const (
	// MaxBody bounds a JSON request body.
	MaxBody = 1 << 20
	// QuorumHeader carries quorum approvals (base64url of an Approvals
	// JSON object) for the protected operation the request makes.
	QuorumHeader = "Hsm-Quorum"
	// MaxQuorumHeader bounds that header.
	MaxQuorumHeader = 16 << 10
	// ClaimHeader carries a claim proof (hsmcore.ClaimProof in its
	// header form) on the calls that set up a new HSM: the cluster CSR,
	// the cluster initialization and an image import without a session.
	ClaimHeader = "Hsm-Claim"
	// MaxAuditPage bounds the entries of one answer to GET /v1/audit: a
	// segment's (the device's segments hold 65,536), so that a whole log
	// is read with each segment read once.
	MaxAuditPage = 1 << 16
	// MaxAuditPageBytes bounds the encoded entries of one such answer:
	// half of what a client reads of an answer (64 MiB). A log of
	// ordinary entries (some 300 bytes each) fits a segment in a page.
	MaxAuditPageBytes = 32 << 20
)

// ClaimNonceResponse answers POST /v1/claim/nonce: a nonce for one claim
// proof to the HSM Serial.
type ClaimNonceResponse struct {
	Serial string `json:"serial"`
	Nonce  []byte `json:"nonce"`
}

// Approvals are officers' approvals of a quorum token.
type Approvals struct {
	TokenID   string            `json:"token_id"` // 32 hex digits
	Approvals []quorum.Approval `json:"approvals"`
}

// SigningKeyRequest is POST /v1/quorum/key: the officer's Ed25519 public
// key.
type SigningKeyRequest struct {
	PublicKey []byte `json:"public_key"`
}

// QuorumPolicyRequest is PUT /v1/quorum/policy: M approvals for Op (0
// removes it). GET /v1/quorum/policy answers a quorum.Policy.
type QuorumPolicyRequest struct {
	Op string `json:"op"`
	M  int    `json:"m"`
}

// QuorumTokenRequest is POST /v1/quorum/token.
type QuorumTokenRequest struct {
	Op     string `json:"op"`
	Object string `json:"object"`
}

// QuorumTokenResponse carries the token, and on a cluster member the token
// sealed for the other members (POST /v1/quorum/adopt).
type QuorumTokenResponse struct {
	Token  quorum.Token `json:"token"`
	Sealed []byte       `json:"sealed,omitempty"`
}

// Health is the answer to GET /v1/health. It needs no login.
type Health struct {
	hsmcore.Identity
	ClusterID          string `json:"cluster_id"`
	ClusterInitialized bool   `json:"cluster_initialized"`
	Initialized        bool   `json:"initialized"` // has users
	// Capacity is how many keys the HSM holds at most (0 from daemons
	// before it was sent).
	Capacity       int    `json:"capacity,omitempty"`
	StateDigest    string `json:"state_digest"`
	PBKFingerprint []byte `json:"pbk_fingerprint"`
	// KeyCount and UserCount are how many token keys and users the HSM
	// holds: counts only, no names. Added after version 1 of the answer;
	// a daemon that predates them sends neither (zero).
	KeyCount  int `json:"key_count"`
	UserCount int `json:"user_count"`
	// StateVersion is, per member serial, the sequence number of the last
	// change of that member the state holds (see docs/CLUSTER.md); it and
	// StateDigest are read together. Absent from daemons that predate it.
	StateVersion map[string]uint64 `json:"state_version,omitempty"`
}

// AttestRequest is POST /v1/attest; the answer is an hsmcore.Attestation.
type AttestRequest struct {
	Nonce []byte `json:"nonce"`
}

// Certificates is the answer to GET /v1/certificates: the device's two
// certificates (DER), and the cluster's once initialized.
type Certificates struct {
	Manufacturer []byte `json:"manufacturer"`
	Operator     []byte `json:"operator"`
	Cluster      []byte `json:"cluster,omitempty"`
	CustomerCA   []byte `json:"customer_ca,omitempty"`
}

// CSRRequest is POST /v1/cluster/csr; the answer is a CSRResponse.
type CSRRequest struct {
	ClusterID string `json:"cluster_id"`
}

// CSRResponse carries a DER certificate signing request.
type CSRResponse struct {
	CSR []byte `json:"csr"`
}

// ClusterInitRequest is POST /v1/cluster/initialize.
type ClusterInitRequest struct {
	Certificate []byte `json:"certificate"` // DER
	CustomerCA  []byte `json:"customer_ca"` // DER
}

// Credentials is POST /v1/initialize (the first crypto officer) and
// POST /v1/login.
type Credentials struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// LoginResponse carries the session token for later calls.
type LoginResponse struct {
	Token string       `json:"token"`
	Role  hsmcore.Role `json:"role"`
}

// CreateUserRequest is POST /v1/users.
type CreateUserRequest struct {
	Name     string       `json:"name"`
	Role     hsmcore.Role `json:"role"`
	Password string       `json:"password"`
}

// PasswordRequest is PUT /v1/password.
type PasswordRequest struct {
	Password string `json:"password"`
}

// UsersResponse is the answer to GET /v1/users.
type UsersResponse struct {
	Users []hsmcore.UserInfo `json:"users"`
}

// InventoryResponse is the answer to GET /v1/inventory (crypto officers).
type InventoryResponse = hsmcore.Inventory

// GenerateKeysRequest is POST /v1/keys; the answer is a KeysResponse.
type GenerateKeysRequest struct {
	Keys []hsmcore.KeySpec `json:"keys"`
}

// KeysResponse lists keys.
type KeysResponse struct {
	Keys []hsmcore.KeyInfo `json:"keys"`
}

// ShareRequest is POST /v1/keys/{handle}/share.
type ShareRequest struct {
	User  string `json:"user"`
	Share bool   `json:"share"`
}

// TrustRequest is POST /v1/keys/{handle}/trust.
type TrustRequest struct {
	Trusted bool `json:"trusted"`
}

// CryptoRequest is POST /v1/keys/{handle}/{encrypt,decrypt,sign,verify}.
type CryptoRequest struct {
	Data      []byte `json:"data"`
	AAD       []byte `json:"aad,omitempty"`
	Signature []byte `json:"signature,omitempty"` // verify only
}

// CryptoResponse carries the result of encrypt, decrypt or sign.
type CryptoResponse struct {
	Data []byte `json:"data"`
}

// WrapRequest is POST /v1/wrap; the answer is a WrapResponse.
type WrapRequest struct {
	Wrapping uint64 `json:"wrapping"`
	Target   uint64 `json:"target"`
	// Mechanism is an hsmcore.Mechanism; absent, aes-kwp (what daemons
	// before it always did).
	Mechanism string `json:"mechanism,omitempty"`
	// PublicKey, if set, is an outside RSA public key (PKIX DER) to wrap
	// under instead of key Wrapping, which must then be 0.
	PublicKey []byte `json:"public_key,omitempty"`
}

// WrapResponse carries a wrapped key.
type WrapResponse struct {
	Wrapped []byte `json:"wrapped"`
}

// UnwrapRequest is POST /v1/unwrap; the answer is an hsmcore.KeyInfo.
type UnwrapRequest struct {
	Unwrapping uint64          `json:"unwrapping"`
	Mechanism  string          `json:"mechanism,omitempty"` // as in WrapRequest
	Wrapped    []byte          `json:"wrapped"`
	Spec       hsmcore.KeySpec `json:"spec"`
}

// TransportKeyRequest is POST /v1/migrate/transport-key: the answer is
// an hsmcore.TransportOffer attested over the verifier's Nonce.
type TransportKeyRequest struct {
	Nonce []byte `json:"nonce"`
	// Mechanism is hpke (absent: hpke) or rsa-aes.
	Mechanism string `json:"mechanism,omitempty"`
}

// ExportBundleRequest is POST /v1/migrate/export: the keys Handles, in a
// bundle under Offer's transport key, checked against OperatorRoots (DER
// certificates) for the destination's operator. The answer is an
// ExportBundleResponse.
type ExportBundleRequest struct {
	Offer         hsmcore.TransportOffer `json:"offer"`
	OperatorRoots [][]byte               `json:"operator_roots"`
	Handles       []uint64               `json:"handles"`
	DryRun        bool                   `json:"dry_run,omitempty"`
}

// ExportBundleResponse is the bundle (absent in a dry run, or if every key
// was refused) and what became of each key.
type ExportBundleResponse struct {
	Bundle  *hsmcore.Bundle    `json:"bundle,omitempty"`
	Results []hsmcore.Migrated `json:"results"`
}

// ImportBundleRequest is POST /v1/migrate/import; the answer is an
// ImportBundleResponse.
type ImportBundleRequest struct {
	Bundle *hsmcore.Bundle `json:"bundle"`
}

// ImportBundleResponse is what became of each key of the bundle.
type ImportBundleResponse struct {
	Results []hsmcore.Migrated `json:"results"`
}

// ChangesRequest is POST /v1/sync/export: the changes the HSM made after
// its sequence number Since, for the member with serial To.
type ChangesRequest struct {
	Since uint64 `json:"since"`
	To    string `json:"to"`
}

// Changes answers a ChangesRequest: at most 256 change records, in order,
// and the sequence number of the last.
type Changes struct {
	Records [][]byte `json:"records"`
	Upto    uint64   `json:"upto"`
}

// Record is a change record (the body of POST /v1/sync/import) or a
// sealed quorum token (POST /v1/quorum/adopt).
type Record struct {
	Record []byte `json:"record,omitempty"`
	// Records, on POST /v1/sync/import, are change records applied in
	// order and committed once (instead of Record).
	Records [][]byte `json:"records,omitempty"`
}

// MemberRequest is POST /v1/cluster/members: add the HSM whose
// manufacturer-issued device certificate (DER) it carries.
type MemberRequest struct {
	Certificate []byte `json:"certificate"`
}

// AuditResponse is the answer to GET /v1/audit?from=N&limit=M: the
// entries of the audit log from sequence number N (default 1), at most M
// (default and at most MaxAuditPage), at most MaxAuditPageBytes of them
// encoded (but at least one), and none past the end of the segment
// holding N, so possibly fewer, and the log's head as it is now, signed
// by the device. Past the head, Entries is empty.
type AuditResponse struct {
	Entries []audit.Entry      `json:"entries"`
	Head    hsmcore.SignedHead `json:"head"`
}

// ImportResponse is the answer to PUT /v1/image.
type ImportResponse struct {
	ImageID   []byte           `json:"image_id"`
	Source    hsmcore.Identity `json:"source"`
	ClusterID string           `json:"cluster_id"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// codes maps the hsmcore sentinels to stable wire codes and HTTP statuses,
// so a client gets back an error that errors.Is recognizes.
var codes = []struct {
	code   string
	err    error
	status int
}{
	{"auth", hsmcore.ErrAuth, 401},
	{"permission", hsmcore.ErrPermission, 403},
	{"not_found", hsmcore.ErrNotFound, 404},
	{"exists", hsmcore.ErrExists, 409},
	{"invalid", hsmcore.ErrInvalid, 400},
	{"malformed", hsmcore.ErrMalformed, 400},
	{"unsupported_version", hsmcore.ErrUnsupportedVersion, 400},
	{"hardware_mismatch", hsmcore.ErrHardwareMismatch, 422},
	{"firmware_downgrade", hsmcore.ErrFirmwareDowngrade, 422},
	{"fips_mode", hsmcore.ErrFIPSMode, 422},
	{"tampered", hsmcore.ErrTampered, 422},
	{"truncated", hsmcore.ErrTruncated, 422},
	{"trailing_data", hsmcore.ErrTrailingData, 422},
	{"attestation", hsmcore.ErrAttestation, 422},
	{"conflict", hsmcore.ErrConflict, 409},
	{"full", hsmcore.ErrFull, 507},
	{"quorum", hsmcore.ErrQuorum, 403},
}

// ErrorCode returns the wire code and HTTP status for err.
func ErrorCode(err error) (string, int) {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code, c.status
		}
	}
	return "internal", 500
}

// CodeError returns the sentinel for a wire code, or nil for an unknown
// one.
func CodeError(code string) error {
	for _, c := range codes {
		if c.code == code {
			return c.err
		}
	}
	return nil
}
