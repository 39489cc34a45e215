package kmsimport_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/kmsimport"
)

func pkix(t *testing.T, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// A wrapping key is read as each console gives it (PEM, DER, base64 of
// DER); anything but RSA of 2048 to 4096 bits is refused.
func TestParseWrappingKey(t *testing.T) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der := pkix(t, &k.PublicKey)
	for name, in := range map[string][]byte{
		"PEM":    pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"DER":    der,
		"base64": []byte(base64.StdEncoding.EncodeToString(der) + "\n"),
	} {
		got, err := kmsimport.ParseWrappingKey(in)
		if err != nil || !bytes.Equal(got, der) {
			t.Errorf("%s: got %x, %v", name, got, err)
		}
	}
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for name, in := range map[string][]byte{
		"RSA-1024":      pkix(t, &small.PublicKey),
		"EC":            pkix(t, &ec.PublicKey),
		"private PEM":   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		"garbage":       []byte("not a key"),
		"empty":         nil,
		"too large":     bytes.Repeat([]byte{'A'}, 70<<10),
		"truncated DER": der[:len(der)-1],
	} {
		if _, err := kmsimport.ParseWrappingKey(in); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Each service takes its own mechanisms, and direct OAEP carries no
// private key.
func TestServiceMechanism(t *testing.T) {
	for _, tc := range []struct {
		svc  kmsimport.Service
		in   hsmcore.Mechanism
		typ  hsmcore.KeyType
		want hsmcore.Mechanism // "" : refused
	}{
		{kmsimport.AWS, "", hsmcore.AES, hsmcore.RSAAES},
		{kmsimport.AWS, hsmcore.RSAOAEP, hsmcore.AES, hsmcore.RSAOAEP},
		{kmsimport.AWS, hsmcore.RSAOAEP, hsmcore.RSA, ""},
		{kmsimport.AWS, hsmcore.AESKWP, hsmcore.AES, ""},
		{kmsimport.GCP, "", hsmcore.EC, hsmcore.RSAAES},
		{kmsimport.GCP, hsmcore.RSAOAEPSHA1, hsmcore.AES, ""},
		{kmsimport.Azure, "", hsmcore.RSA, hsmcore.RSAAESSHA1},
		{kmsimport.Azure, hsmcore.RSAAES, hsmcore.RSA, ""},
	} {
		got, err := tc.svc.Mechanism(tc.in, tc.typ)
		if got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("%s %q for %s: got %q, %v; want %q", tc.svc, tc.in, tc.typ, got, err, tc.want)
		}
	}
}

// The files of each service: AWS's pair, GCP's one file, Azure's .byok
// that parses back to the same blob.
func TestFiles(t *testing.T) {
	blob := bytes.Repeat([]byte{7}, 424)
	if _, err := kmsimport.AWS.Files(blob, kmsimport.Options{}); err == nil {
		t.Error("aws-kms files without an import token")
	}
	fs, err := kmsimport.AWS.Files(blob, kmsimport.Options{ImportToken: []byte("tok")})
	if err != nil || len(fs) != 2 || fs[0].Name != "EncryptedKeyMaterial.bin" || !bytes.Equal(fs[0].Data, blob) ||
		fs[1].Name != "ImportToken.bin" || string(fs[1].Data) != "tok" {
		t.Errorf("aws-kms files %+v, %v", fs, err)
	}
	fs, err = kmsimport.GCP.Files(blob, kmsimport.Options{})
	if err != nil || len(fs) != 1 || fs[0].Name != "wrapped-key.bin" || !bytes.Equal(fs[0].Data, blob) {
		t.Errorf("gcp-kms files %+v, %v", fs, err)
	}
	if _, err := kmsimport.Azure.Files(blob, kmsimport.Options{KID: "http://vault/keys/k"}); err == nil {
		t.Error("azure-byok with a kid that is not https")
	}
	kid := "https://v.vault.azure.net/keys/kek/1"
	fs, err = kmsimport.Azure.Files(blob, kmsimport.Options{KID: kid, Generator: "test"})
	if err != nil || len(fs) != 1 || fs[0].Name != "key.byok" {
		t.Fatalf("azure-byok files %+v, %v", fs, err)
	}
	f, got, err := kmsimport.ParseBYOK(fs[0].Data)
	if err != nil || !bytes.Equal(got, blob) || f.Header.KID != kid || f.Generator != "test" {
		t.Fatalf("ParseBYOK = %+v, %x, %v", f, got, err)
	}
	if strings.ContainsAny(f.Ciphertext, "+/=") {
		t.Errorf("ciphertext %q is not unpadded base64url", f.Ciphertext)
	}
}

// ParseBYOK takes only the one layout.
func TestParseBYOKRefuses(t *testing.T) {
	good := `{"schema_version":"1.0.0","header":{"kid":"https://v/keys/k/1","alg":"dir","enc":"CKM_RSA_AES_KEY_WRAP"},"ciphertext":"AAAA","generator":"g"}`
	if _, _, err := kmsimport.ParseBYOK([]byte(good)); err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string]string{
		"schema":   strings.Replace(good, "1.0.0", "2.0.0", 1),
		"alg":      strings.Replace(good, `"dir"`, `"RSA-OAEP"`, 1),
		"enc":      strings.Replace(good, "CKM_RSA_AES_KEY_WRAP", "CKM_AES_KEY_WRAP", 1),
		"kid":      strings.Replace(good, "https://v/keys/k/1", "v/keys/k", 1),
		"base64":   strings.Replace(good, `"AAAA"`, `"!!!!"`, 1),
		"empty":    strings.Replace(good, `"AAAA"`, `""`, 1),
		"unknown":  strings.Replace(good, `"generator"`, `"extra":1,"generator"`, 1),
		"trailing": good + "{}",
		"not JSON": "byok",
	} {
		if _, _, err := kmsimport.ParseBYOK([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzParseBYOK: the parser never panics, and what it accepts encodes
// back to a file that parses to the same blob and kid.
func FuzzParseBYOK(f *testing.F) {
	b, _ := kmsimport.EncodeBYOK("https://v.vault.azure.net/keys/kek/1", bytes.Repeat([]byte{1}, 40), "seed")
	f.Add(b)
	f.Add([]byte(`{"schema_version":"1.0.0","header":{"kid":"https://v/k","alg":"dir","enc":"CKM_RSA_AES_KEY_WRAP"},"ciphertext":"AA==","generator":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		bf, blob, err := kmsimport.ParseBYOK(data)
		if err != nil {
			return
		}
		again, err := kmsimport.EncodeBYOK(bf.Header.KID, blob, bf.Generator)
		if err != nil {
			t.Fatalf("an accepted file does not encode: %v", err)
		}
		bf2, blob2, err := kmsimport.ParseBYOK(again)
		if err != nil || !bytes.Equal(blob, blob2) || bf2.Header.KID != bf.Header.KID {
			t.Fatalf("round trip: %+v %x %v", bf2, blob2, err)
		}
	})
}
