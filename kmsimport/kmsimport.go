// Package kmsimport writes a wrapped HSM key as the files a cloud KMS's
// key-import step takes: AWS KMS (the encrypted key material next to the
// import token it was issued with), Google Cloud KMS (an import job's
// wrapped key) and Azure Key Vault / Managed HSM BYOK (a .byok JSON file).
// The wrapping itself happens inside the HSM (hsmcore WrapKeyToPublic);
// this package picks each service's mechanism, reads its wrapping public
// key and encodes its files. docs/MIGRATION.md shows the cloud-side
// commands that consume them.
package kmsimport

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// Service is a cloud KMS whose import files are written.
type Service string

const (
	AWS   Service = "aws-kms"
	GCP   Service = "gcp-kms"
	Azure Service = "azure-byok"
)

// Services lists the services, in the order the CLI's help names them.
var Services = []Service{AWS, GCP, Azure}

// ParseService checks a service's name.
func ParseService(s string) (Service, error) {
	if i := slices.Index(Services, Service(s)); i >= 0 {
		return Services[i], nil
	}
	return "", fmt.Errorf("%q is not a cloud KMS (one of aws-kms, gcp-kms, azure-byok)", s)
}

// Mechanisms are the wrap mechanisms svc's import accepts, its default
// first, with the service's own name for each:
//
//	aws-kms:    rsa-aes RSA_AES_KEY_WRAP_SHA_256, rsa-aes-sha1 RSA_AES_KEY_WRAP_SHA_1,
//	            rsa-oaep RSAES_OAEP_SHA_256, rsa-oaep-sha1 RSAES_OAEP_SHA_1
//	gcp-kms:    rsa-aes RSA_OAEP_{3072,4096}_SHA256_AES_256, rsa-aes-sha1 RSA_OAEP_*_SHA1_AES_256,
//	            rsa-oaep RSA_OAEP_{3072,4096}_SHA256
//	azure-byok: rsa-aes-sha1 CKM_RSA_AES_KEY_WRAP
func (svc Service) Mechanisms() []hsmcore.Mechanism {
	switch svc {
	case AWS:
		return []hsmcore.Mechanism{hsmcore.RSAAES, hsmcore.RSAAESSHA1, hsmcore.RSAOAEP, hsmcore.RSAOAEPSHA1}
	case GCP:
		return []hsmcore.Mechanism{hsmcore.RSAAES, hsmcore.RSAAESSHA1, hsmcore.RSAOAEP}
	case Azure:
		return []hsmcore.Mechanism{hsmcore.RSAAESSHA1}
	}
	return nil
}

// Mechanism returns the mechanism to export a key of type t to svc with:
// m if svc accepts it for such a key, the default if m is "".
func (svc Service) Mechanism(m hsmcore.Mechanism, t hsmcore.KeyType) (hsmcore.Mechanism, error) {
	ms := svc.Mechanisms()
	if m == "" {
		m = ms[0]
	}
	if !slices.Contains(ms, m) {
		return "", fmt.Errorf("%s does not import keys wrapped with %s (it takes %s)", svc, m, joinMechs(ms))
	}
	if (m == hsmcore.RSAOAEP || m == hsmcore.RSAOAEPSHA1) && (t == hsmcore.RSA || t == hsmcore.EC) {
		return "", fmt.Errorf("%s carries no private key: an %s key needs %s", m, t, ms[0])
	}
	return m, nil
}

func joinMechs(ms []hsmcore.Mechanism) string {
	var s []string
	for _, m := range ms {
		s = append(s, string(m))
	}
	return strings.Join(s, ", ")
}

// maxWrappingKey bounds a wrapping-key file.
const maxWrappingKey = 64 << 10

// ParseWrappingKey reads a service's wrapping public key as its console
// or CLI gives it: PEM ("PUBLIC KEY"), DER (AWS's downloaded
// WrappingPublicKey.bin), or base64 of the DER (the PublicKey field of
// aws kms get-parameters-for-import). It must be RSA of 2048 to 4096
// bits; the PKIX DER is returned.
func ParseWrappingKey(b []byte) ([]byte, error) {
	if len(b) > maxWrappingKey {
		return nil, errors.New("wrapping key: file too large")
	}
	der := b
	if p, _ := pem.Decode(b); p != nil {
		if p.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("wrapping key: a PEM %q block, want PUBLIC KEY", p.Type)
		}
		der = p.Bytes
	} else if d, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(b))); err == nil {
		der = d
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, errors.New("wrapping key: not a PKIX public key (PEM, DER or base64 of DER)")
	}
	rk, ok := k.(*rsa.PublicKey)
	if !ok || rk.N.BitLen() < 2048 || rk.N.BitLen() > 4096 {
		return nil, errors.New("wrapping key: not an RSA key of 2048 to 4096 bits")
	}
	return bytes.Clone(der), nil
}

// File is one file of an export: its name in the output directory and
// its bytes.
type File struct {
	Name string
	Data []byte
}

// Options are what some services need besides the wrapped key.
type Options struct {
	// ImportToken is the AWS import token issued with the wrapping key
	// (required for aws-kms): written next to the key material, as AWS
	// imports the pair only together.
	ImportToken []byte
	// KID is the Azure key-exchange key's identifier, a URL with its
	// version (required for azure-byok).
	KID string
	// Generator names the tool in a .byok file.
	Generator string
}

// Check reports what o lacks for svc.
func (svc Service) Check(o Options) error {
	switch svc {
	case AWS:
		if len(o.ImportToken) == 0 {
			return errors.New("aws-kms: the import token issued with the wrapping key is required (--import-token)")
		}
	case Azure:
		return checkKID(o.KID)
	}
	return nil
}

// Files returns the files svc's import step takes for wrapped.
func (svc Service) Files(wrapped []byte, o Options) ([]File, error) {
	if err := svc.Check(o); err != nil {
		return nil, err
	}
	switch svc {
	case AWS:
		return []File{{"EncryptedKeyMaterial.bin", wrapped}, {"ImportToken.bin", bytes.Clone(o.ImportToken)}}, nil
	case GCP:
		return []File{{"wrapped-key.bin", wrapped}}, nil
	case Azure:
		b, err := EncodeBYOK(o.KID, wrapped, o.Generator)
		if err != nil {
			return nil, err
		}
		return []File{{"key.byok", b}}, nil
	}
	return nil, fmt.Errorf("unknown service %q", svc)
}
