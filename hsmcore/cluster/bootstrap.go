package cluster

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
)

// CloudHSM's cluster initialization, step by step: RequestCSR (attest the
// new HSM, have it make the cluster key and its CSR), the customer's CA
// signs the CSR, Install (the cluster certificate and the CA), Activate
// (the first crypto officer). Bootstrap runs them all.

// NewHSM is an HSM whose cluster is not initialized, reached through its
// device certificate. *hsmcore/client.Client satisfies it.
type NewHSM interface {
	hsmcore.Attester
	// Bind pins the connection to the HSM of a verified attestation
	// (client.Client.Bind).
	Bind(st *hsmcore.Statement) error
	Health(ctx context.Context) (api.Health, error)
	ClusterCSR(ctx context.Context, clusterID string) ([]byte, error)
	InitializeCluster(ctx context.Context, cert, ca []byte) error
}

// challenge is hsmcore.Challenge with a failure to attest named.
func challenge(ctx context.Context, a hsmcore.Attester, opts hsmcore.ChallengeOptions) (*hsmcore.Statement, error) {
	st, err := hsmcore.Challenge(ctx, a, opts)
	if err != nil && !errors.Is(err, hsmcore.ErrAttestation) {
		return nil, fmt.Errorf("attest: %w", err)
	}
	return st, err
}

// RequestCSR is step 1: it challenges hsm as opts say, pins hsm to the
// attested HSM (so that the claim proof goes to it alone), has it make the
// cluster key and a CSR for cluster clusterID, checks the CSR (self-signed,
// naming clusterID), and challenges hsm again, which binds the CSR's key to
// the attested HSM. It returns the CSR (DER) and the second statement.
func RequestCSR(ctx context.Context, hsm NewHSM, clusterID string, opts hsmcore.ChallengeOptions) ([]byte, *hsmcore.Statement, error) {
	st, err := challenge(ctx, hsm, opts)
	if err != nil {
		return nil, nil, err
	}
	if err := hsm.Bind(st); err != nil {
		return nil, nil, err
	}
	der, err := hsm.ClusterCSR(ctx, clusterID)
	if re := (*client.RemoteError)(nil); err != nil && !errors.As(err, &re) {
		err = fmt.Errorf("cluster csr: %w", err) // the HSM's own errors name it
	}
	if err != nil {
		return nil, nil, err
	}
	csr, err := ParseCSR(der, clusterID)
	if err != nil {
		return nil, nil, err
	}
	// The CSR came over a channel to the attested device; a second
	// attestation also binds its key to that HSM.
	st, err = challenge(ctx, hsm, opts)
	if err != nil {
		return nil, nil, err
	}
	if err := CheckCSRKey(csr, st); err != nil {
		return nil, nil, err
	}
	return der, st, nil
}

// ParseCSR parses a cluster CSR and checks that it is self-signed and
// names cluster clusterID.
func ParseCSR(der []byte, clusterID string) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("cluster csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("cluster csr: %w", err)
	}
	if csr.Subject.CommonName != clusterID {
		return nil, fmt.Errorf("cluster csr: names %q, not cluster %q", csr.Subject.CommonName, clusterID)
	}
	return csr, nil
}

// CheckCSRKey checks that csr's key is the cluster key the verified
// statement st names: the CSR comes from the attested HSM.
func CheckCSRKey(csr *x509.CertificateRequest, st *hsmcore.Statement) error {
	want, err := hsmcore.PublicKeyHash(csr.PublicKey)
	if err != nil {
		return fmt.Errorf("cluster csr: %w", err)
	}
	if !bytes.Equal(st.ClusterKeyHash, want) {
		return fmt.Errorf("cluster csr: its key is not the cluster key HSM %s attests to", st.Serial)
	}
	return nil
}

// CheckCertificate checks what the HSM checks of a cluster certificate
// too, for a clearer message: ca is a CA and cert chains to it.
func CheckCertificate(cert, ca *x509.Certificate) error {
	if !ca.IsCA {
		return fmt.Errorf("customer CA %q is not a CA certificate (basicConstraints CA:TRUE)", ca.Subject.CommonName)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: time.Now()}); err != nil {
		return fmt.Errorf("cluster certificate is not valid under the customer CA: %w", err)
	}
	return nil
}

// Install is step 2: it checks the cluster certificate against the
// customer CA (CheckCertificate) and that hsm made its CSR for the cluster
// the certificate names and is not initialized yet, then installs both.
// From then on hsm presents the cluster certificate and accepts only
// clients with certificates from ca. It returns hsm's health from before
// the install.
func Install(ctx context.Context, hsm NewHSM, cert, ca *x509.Certificate) (api.Health, error) {
	if err := CheckCertificate(cert, ca); err != nil {
		return api.Health{}, err
	}
	h, err := hsm.Health(ctx)
	if err != nil {
		return api.Health{}, fmt.Errorf("health: %w", err)
	}
	switch {
	case h.ClusterInitialized:
		return h, fmt.Errorf("HSM %s: cluster %s is already initialized: %w", h.Serial, h.ClusterID, hsmcore.ErrPermission)
	case h.ClusterID == "":
		return h, fmt.Errorf("HSM %s has no cluster CSR: run step 1 (--csr-out) first", h.Serial)
	case h.ClusterID != cert.Subject.CommonName:
		return h, fmt.Errorf("HSM %s made its CSR for cluster %q, but the certificate names %q", h.Serial, h.ClusterID, cert.Subject.CommonName)
	}
	if err := hsm.InitializeCluster(ctx, cert.Raw, ca.Raw); err != nil {
		return h, fmt.Errorf("install cluster certificate: %w", err)
	}
	return h, nil
}

// Officer is a member of an initialized cluster without users, reached
// with a client certificate from the customer CA. *hsmcore/client.Client
// satisfies it.
type Officer interface {
	Initialize(ctx context.Context, user, password string) error
	Login(ctx context.Context, user, password string) (hsmcore.Role, error)
	Logout(ctx context.Context) error
}

// Activate is the last step: it creates the first crypto officer, user,
// with password, as activating a CloudHSM cluster does, and logs in and
// out once to confirm it.
func Activate(ctx context.Context, m Officer, user, password string) error {
	if err := m.Initialize(ctx, user, password); err != nil {
		return fmt.Errorf("create crypto officer %s: %w", user, err)
	}
	if _, err := m.Login(ctx, user, password); err != nil {
		return fmt.Errorf("log in as %s: %w", user, err)
	}
	if err := m.Logout(ctx); err != nil {
		return fmt.Errorf("log out: %w", err)
	}
	return nil
}

// BootstrapConfig configures Bootstrap.
type BootstrapConfig struct {
	// Client reaches the new HSM once initialized: its Addr, a client
	// Certificate from CustomerCA, the CustomerCA that signs the cluster
	// certificate, ClusterID, the new cluster's id, and Claims, which hold
	// the new HSM's claim secret.
	Client client.Config
	// Challenge attests the new HSM; its ManufacturerRoots also trust the
	// HSM's device certificate before the cluster is initialized.
	Challenge hsmcore.ChallengeOptions
	// Sign is the customer CA: it signs the cluster CSR (DER) and returns
	// the cluster certificate (DER).
	Sign func(csrDER []byte) (certDER []byte, err error)
	// Officer and Password are the first crypto officer's.
	Officer, Password string
}

// Bootstrap initializes the cluster of the new HSM at cfg.Client.Addr in
// one go: RequestCSR, cfg.Sign, Install, Activate. It returns the verified
// statement and the installed cluster certificate.
func Bootstrap(ctx context.Context, cfg BootstrapConfig) (*hsmcore.Statement, *x509.Certificate, error) {
	id, ca := cfg.Client.ClusterID, cfg.Client.CustomerCA
	if id == "" || ca == nil || cfg.Client.Certificate == nil || cfg.Sign == nil || cfg.Challenge.ManufacturerRoots == nil {
		return nil, nil, errors.New("bootstrap: cluster id, customer CA, client certificate, signer and manufacturer roots are required")
	}
	pre, err := client.New(client.Config{Addr: cfg.Client.Addr, ManufacturerRoots: cfg.Challenge.ManufacturerRoots, Timeout: cfg.Client.Timeout, Claims: cfg.Client.Claims})
	if err != nil {
		return nil, nil, err
	}
	defer pre.Close()
	csr, st, err := RequestCSR(ctx, pre, id, cfg.Challenge)
	if err != nil {
		return nil, nil, err
	}
	der, err := cfg.Sign(csr)
	if err != nil {
		return nil, nil, fmt.Errorf("sign cluster csr: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("sign cluster csr: %w", err)
	}
	if _, err := Install(ctx, pre, cert, ca); err != nil {
		return nil, nil, err
	}
	co, err := client.New(cfg.Client)
	if err != nil {
		return nil, nil, err
	}
	defer co.Close()
	if err := Activate(ctx, co, cfg.Officer, cfg.Password); err != nil {
		return nil, nil, err
	}
	return st, cert, nil
}
