package device

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/json"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
)

// Attest returns a signed statement of the device's identity, PBK
// fingerprint, cluster and audit head, bound to the caller's nonce. No
// login is needed.
func (d *Device) Attest(nonce []byte) (*hsmcore.Attestation, error) {
	if len(nonce) != hsmcore.NonceSize {
		return nil, fmt.Errorf("attest: nonce must be %d bytes: %w", hsmcore.NonceSize, hsmcore.ErrInvalid)
	}
	d.mu.Lock()
	st := hsmcore.Statement{
		Format:    hsmcore.AttestationFormat,
		Identity:  d.id,
		ClusterID: d.st.clusterID(),
		Nonce:     bytes.Clone(nonce),
		Time:      d.opts.now(),
		AuditHead: d.auditLog.Head(),
	}
	cluster := d.st.Cluster
	d.mu.Unlock()
	if cluster != nil {
		key, err := cluster.key()
		if err != nil {
			return nil, fmt.Errorf("attest: %w", err)
		}
		if st.ClusterKeyHash, err = hsmcore.PublicKeyHash(&key.PublicKey); err != nil {
			return nil, fmt.Errorf("attest: %w", err)
		}
	}
	fp := pbkFingerprint(d.pbk)
	st.PBKFingerprint = fp[:]
	body, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	sig, err := d.sign(hsmcore.AttestationFormat, body)
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	return &hsmcore.Attestation{Statement: body, Signature: sig, ManufacturerCertificate: d.mfrCert, OperatorCertificate: d.opCert}, nil
}

// sign signs a message with the device key under a domain string, so a
// signature for one purpose is never valid for another.
func (d *Device) sign(domain string, msg []byte) ([]byte, error) {
	h := hsmcore.DomainDigest(domain, msg)
	return ecdsa.SignASN1(rand.Reader, d.deviceKey, h)
}

func (d *Device) signHead(h audit.Head) (hsmcore.SignedHead, error) {
	sh := hsmcore.SignedHead{Serial: d.id.Serial, Head: h}
	sig, err := d.sign(hsmcore.AuditHeadDomain, sh.SignedMessage())
	if err != nil {
		return hsmcore.SignedHead{}, fmt.Errorf("sign audit head: %w", err)
	}
	sh.Signature = sig
	return sh, nil
}
