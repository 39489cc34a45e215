package device

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// clusterRecord is the cluster an HSM belongs to, as CloudHSM initializes
// it: the HSM makes a cluster key and a CSR for it; the customer's own CA
// signs the CSR; the signed cluster certificate and the CA are installed.
// Every member of a cluster holds the same record, since members are
// cloned by image. The cluster certificate is the members' TLS identity,
// and the customer CA is what client certificates must chain to.
type clusterRecord struct {
	ID   string `json:"id"`
	Key  []byte `json:"key"`                   // PKCS#8 ECDSA P-384; never leaves the HSM
	Cert []byte `json:"certificate,omitempty"` // DER, issued by the customer CA
	CA   []byte `json:"customer_ca,omitempty"` // DER, the customer's CA
}

func (c *clusterRecord) check() error {
	if err := hsmcore.CheckName(c.ID); err != nil {
		return fmt.Errorf("cluster id: %w", err)
	}
	key, err := c.key()
	if err != nil {
		return err
	}
	if len(c.Cert) == 0 && len(c.CA) == 0 {
		return nil
	}
	_, err = verifyClusterCert(c.Cert, c.CA, &key.PublicKey, c.ID)
	return err
}

func (c *clusterRecord) key() (*ecdsa.PrivateKey, error) {
	k, err := x509.ParsePKCS8PrivateKey(c.Key)
	if err != nil {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("cluster key is not ECDSA")
	}
	return key, nil
}

func (c *contents) clusterID() string {
	if c.Cluster == nil {
		return ""
	}
	return c.Cluster.ID
}

func (c *contents) clusterInitialized() bool {
	return c.Cluster != nil && len(c.Cluster.Cert) > 0
}

// verifyClusterCert checks that certDER is issued by caDER, a CA
// certificate, certifies pub, and names the cluster id as its common name.
func verifyClusterCert(certDER, caDER []byte, pub *ecdsa.PublicKey, id string) (*x509.Certificate, error) {
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("customer CA: %w", err)
	}
	if !ca.IsCA {
		return nil, errors.New("customer CA certificate is not a CA")
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, fmt.Errorf("cluster certificate: %w", err)
	}
	if !pub.Equal(cert.PublicKey) {
		return nil, errors.New("cluster certificate does not certify this cluster's key")
	}
	if cert.Subject.CommonName != id {
		return nil, fmt.Errorf("cluster certificate names %q, not cluster %q", cert.Subject.CommonName, id)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("cluster certificate: %w", err)
	}
	return cert, nil
}

// ClusterID returns the cluster the device belongs to ("" before a CSR
// was made).
func (d *Device) ClusterID() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st.clusterID()
}

// ClusterInitialized reports whether a cluster certificate is installed.
func (d *Device) ClusterInitialized() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st.clusterInitialized()
}

// ClusterCSR returns a PEM-free DER certificate signing request for the
// cluster key of cluster id, making the key on first use (or when id
// changes). It is refused once the cluster is initialized. No user exists
// before initialization: the caller proves it holds the HSM's claim secret
// instead (p, for hsmcore.ClaimCSR on id).
func (d *Device) ClusterCSR(id string, p *hsmcore.ClaimProof) ([]byte, error) {
	if err := hsmcore.CheckName(id); err != nil {
		return nil, fmt.Errorf("cluster csr: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.st.clusterInitialized() {
		return nil, fmt.Errorf("cluster csr: cluster %s is initialized: %w", d.st.clusterID(), hsmcore.ErrPermission)
	}
	if err := d.proveClaim(p, hsmcore.ClaimCSR, id); err != nil {
		return nil, fmt.Errorf("cluster csr: %w", err)
	}
	c := d.st.Cluster
	if c == nil || c.ID != id {
		key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("cluster csr: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("cluster csr: %w", err)
		}
		c = &clusterRecord{ID: id, Key: der}
		next := d.st.clone()
		next.Cluster = c
		if err := d.commit(next); err != nil {
			return nil, fmt.Errorf("cluster csr: %w", err)
		}
		if err := d.appendAudit(hsmcore.ClaimHolder, "cluster.csr", id, "ok"); err != nil {
			return nil, err
		}
	}
	key, err := c.key()
	if err != nil {
		return nil, fmt.Errorf("cluster csr: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: id, Organization: []string{"hsmbackup cluster"}},
		DNSNames: []string{id},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("cluster csr: %w", err)
	}
	return csr, nil
}

// InitializeCluster installs the cluster certificate, signed by the
// customer's CA from the CSR of ClusterCSR, and that CA, for the holder of
// the claim secret (p, for hsmcore.ClaimInit on
// hsmcore.ClusterInitObject(certDER, caDER)). From then on the device's
// TLS identity is the cluster certificate, clients need certificates from
// that CA, and the claim is over.
func (d *Device) InitializeCluster(certDER, caDER []byte, p *hsmcore.ClaimProof) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.st.Cluster
	if d.st.clusterInitialized() {
		d.auditUnauth("cluster.init", c.ID, "denied")
		return fmt.Errorf("initialize cluster: cluster %s is already initialized: %w", c.ID, hsmcore.ErrPermission)
	}
	if err := d.proveClaim(p, hsmcore.ClaimInit, hsmcore.ClusterInitObject(certDER, caDER)); err != nil {
		return fmt.Errorf("initialize cluster: %w", err)
	}
	if c == nil {
		return fmt.Errorf("initialize cluster: no cluster CSR was made: %w", hsmcore.ErrInvalid)
	}
	key, err := c.key()
	if err != nil {
		return fmt.Errorf("initialize cluster: %w", err)
	}
	if _, err := verifyClusterCert(certDER, caDER, &key.PublicKey, c.ID); err != nil {
		d.appendAudit(hsmcore.ClaimHolder, "cluster.init", c.ID, "refused")
		return fmt.Errorf("initialize cluster: %v: %w", err, hsmcore.ErrInvalid)
	}
	next := d.st.clone()
	next.Cluster = &clusterRecord{ID: c.ID, Key: c.Key, Cert: bytes.Clone(certDER), CA: bytes.Clone(caDER)}
	next.Members = []memberRecord{d.self()}
	if err := d.commitChange(next, nil, "member.add", membersObject); err != nil {
		return fmt.Errorf("initialize cluster: %w", err)
	}
	d.claims.issued = nil
	return d.appendAudit(hsmcore.ClaimHolder, "cluster.init", c.ID, "ok")
}

// TLSIdentity is what a daemon serving the device presents and trusts.
type TLSIdentity struct {
	// Certificate is the cluster certificate once the cluster is
	// initialized, the manufacturer-issued device certificate before. Its
	// private key is a signer that stays inside the device.
	Certificate tls.Certificate
	// ClientCAs holds the customer CA once the cluster is initialized; nil
	// before, when no client certificate can be checked.
	ClientCAs *x509.CertPool
	// ClusterID names the cluster ("" before a CSR).
	ClusterID string
}

// TLSIdentity returns the device's current TLS identity.
func (d *Device) TLSIdentity() (TLSIdentity, error) {
	d.mu.Lock()
	c, initialized := d.st.Cluster, d.st.clusterInitialized()
	d.mu.Unlock()
	if !initialized {
		id := TLSIdentity{Certificate: tls.Certificate{Certificate: [][]byte{d.mfrCert}, PrivateKey: signer{d.deviceKey}}}
		if c != nil {
			id.ClusterID = c.ID
		}
		return id, nil
	}
	key, err := c.key()
	if err != nil {
		return TLSIdentity{}, fmt.Errorf("tls identity: %w", err)
	}
	ca, err := x509.ParseCertificate(c.CA)
	if err != nil {
		return TLSIdentity{}, fmt.Errorf("tls identity: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return TLSIdentity{
		Certificate: tls.Certificate{Certificate: [][]byte{c.Cert}, PrivateKey: signer{key}},
		ClientCAs:   pool,
		ClusterID:   c.ID,
	}, nil
}

// CustomerCA returns the installed customer CA certificate, or nil before
// the cluster is initialized.
func (d *Device) CustomerCA() *x509.Certificate {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.st.clusterInitialized() {
		return nil
	}
	ca, err := x509.ParseCertificate(d.st.Cluster.CA)
	if err != nil {
		return nil
	}
	return ca
}

// signer signs with a key that stays inside the device: it offers Public
// and Sign, and nothing that reveals the private key.
type signer struct{ k *ecdsa.PrivateKey }

func (s signer) Public() crypto.PublicKey { return &s.k.PublicKey }

func (s signer) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.k.Sign(r, digest, opts)
}

var _ crypto.Signer = signer{}

// self is the device's entry in a member list.
func (d *Device) self() memberRecord {
	der, err := x509.MarshalPKIXPublicKey(&d.deviceKey.PublicKey)
	if err != nil {
		panic("hsmcore: device key: " + err.Error())
	}
	return memberRecord{Serial: d.id.Serial, Key: der}
}

// AddMember adds the HSM whose manufacturer-issued device certificate is
// certDER to the cluster's members: from then on its changes are accepted
// and changes are sealed to it. The certificate must chain to the
// manufacturer root this device was made under and name a device of the
// same class and manufacturer. Crypto officers only; the caller attests
// the new HSM first (cluster.AddMember does).
func (s *Session) AddMember(certDER []byte) error {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check("member.add", hsmcore.CryptoOfficer); err != nil {
		return err
	}
	if !d.st.clusterInitialized() {
		return fmt.Errorf("add member: device is not a member of an initialized cluster: %w", hsmcore.ErrPermission)
	}
	m, err := d.memberFromCert(certDER)
	if err != nil {
		d.audit(s.user, "member.add", "", "refused")
		return fmt.Errorf("add member: %w", err)
	}
	if old := d.st.member(m.Serial); old != nil {
		if bytes.Equal(old.Key, m.Key) {
			return nil
		}
		return fmt.Errorf("add member: %s is a member with another device key: %w", m.Serial, hsmcore.ErrExists)
	}
	if len(d.st.Members)+2 > maxMembers {
		return fmt.Errorf("add member: %w", hsmcore.ErrFull)
	}
	if err := s.requireQuorum("member.add", m.Serial); err != nil {
		return err
	}
	next := d.st.clone()
	// A device restored from a backup lists itself when it first adds a
	// member (an image carries the member list of the HSM it was taken
	// from).
	if next.member(d.id.Serial) == nil {
		next.Members = append(next.Members, d.self())
	}
	next.Members = append(next.Members, m)
	if err := d.commitChange(next, s, "member.add", membersObject); err != nil {
		d.audit(s.user, "member.add", m.Serial, "error")
		return fmt.Errorf("add member: %w", err)
	}
	return d.audit(s.user, "member.add", m.Serial, "ok")
}

// memberFromCert checks a device certificate against the device's own
// manufacturer and returns the member it names.
func (d *Device) memberFromCert(certDER []byte) (memberRecord, error) {
	if len(d.mfrRoot) == 0 {
		return memberRecord{}, fmt.Errorf("this device does not hold its manufacturer's root: %w", hsmcore.ErrUnsupportedVersion)
	}
	root, err := x509.ParseCertificate(d.mfrRoot)
	if err != nil {
		return memberRecord{}, fmt.Errorf("manufacturer root: %w", err)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return memberRecord{}, fmt.Errorf("device certificate: %v: %w", err, hsmcore.ErrMalformed)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return memberRecord{}, fmt.Errorf("device certificate: %v: %w", err, hsmcore.ErrAttestation)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	subj := cert.Subject
	if !ok || pub.Curve != elliptic.P384() || hsmcore.CheckName(subj.SerialNumber) != nil ||
		len(subj.Organization) != 1 || subj.Organization[0] != d.id.Manufacturer || len(subj.OrganizationalUnit) != 1 || subj.OrganizationalUnit[0] != d.id.Class {
		return memberRecord{}, fmt.Errorf("device certificate does not name a %s HSM of %s: %w", d.id.Class, d.id.Manufacturer, hsmcore.ErrHardwareMismatch)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return memberRecord{}, err
	}
	return memberRecord{Serial: subj.SerialNumber, Key: der}, nil
}
