package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
)

// passwordEnv names the environment variable a password is read from when
// no --password-file is given. Passwords are never taken from the command
// line, where other users of the machine can read them.
const passwordEnv = "HSMBACKUP_PASSWORD"

// loadRoots reads every PEM certificate in path into a pool.
func loadRoots(path string) (*x509.CertPool, error) {
	certs, err := loadCertificates(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// loadCertificates reads the PEM certificates in path; there must be at
// least one.
func loadCertificates(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate in it", path)
	}
	return certs, nil
}

// loadCertificate reads the one PEM certificate in path.
func loadCertificate(path string) (*x509.Certificate, error) {
	certs, err := loadCertificates(path)
	if err != nil {
		return nil, err
	}
	if len(certs) > 1 {
		return nil, fmt.Errorf("%s: %d certificates, want one", path, len(certs))
	}
	return certs[0], nil
}

// loadClientCertificate reads a client certificate and its key. The key
// file must be readable by its owner only.
func loadClientCertificate(certPath, keyPath string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	keyPEM, err := atomicfile.ReadPrivate(keyPath)
	if err != nil {
		return nil, fmt.Errorf("client key: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// tls.X509KeyPair's messages name the problem, never key bytes.
		return nil, fmt.Errorf("client certificate %s and key %s: %w", certPath, keyPath, err)
	}
	leaf := pair.Leaf
	if now := time.Now(); now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("client certificate %s (%s) is not valid now: valid from %s to %s",
			certPath, leaf.Subject.CommonName, leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return &pair, nil
}

// checkClientCertificate checks, as the HSM will, that cert chains to the
// customer CA for client authentication. The TLS client would otherwise
// send no certificate at all, and the HSM could only say that one is
// required.
func checkClientCertificate(cert *tls.Certificate, ca *x509.Certificate) error {
	opts := x509.VerifyOptions{Roots: x509.NewCertPool(), Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	opts.Roots.AddCert(ca)
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		opts.Intermediates.AddCert(c)
	}
	if _, err := cert.Leaf.Verify(opts); err != nil {
		return fmt.Errorf("not usable with customer CA %q: %w", ca.Subject.CommonName, err)
	}
	return nil
}

// passwordFrom returns the first line of the file at path, which must be
// of mode 0600, or with path "" the value of $HSMBACKUP_PASSWORD. how
// names the setting of path, for the error when neither is set.
func passwordFrom(path, how string) (string, error) {
	if path == "-" {
		return passwordFromStdin()
	}
	if path != "" {
		data, err := atomicfile.ReadPrivate(path)
		if err != nil {
			return "", fmt.Errorf("password file: %w", err)
		}
		line, _, _ := strings.Cut(string(data), "\n")
		line = strings.TrimSuffix(line, "\r")
		if line == "" {
			return "", fmt.Errorf("password file %s: the first line is empty", path)
		}
		return line, nil
	}
	if pw, ok := os.LookupEnv(passwordEnv); ok {
		if pw == "" {
			return "", fmt.Errorf("$%s is empty", passwordEnv)
		}
		return pw, nil
	}
	return "", fmt.Errorf("no password: give %s, or set $%s or $%s (passwords are never taken as arguments)", how, passwordFileEnv, passwordEnv)
}

// maxPasswordLine bounds a password read from stdin.
const maxPasswordLine = 4096

// passwordFromStdin reads the password, the first line of stdin, as a
// password file "-" names it. It reads byte by byte, so that nothing after
// the line is consumed.
func passwordFromStdin() (string, error) {
	var line []byte
	b := make([]byte, 1)
	for len(line) <= maxPasswordLine {
		n, err := os.Stdin.Read(b)
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("password from stdin: %w", err)
		}
	}
	if len(line) > maxPasswordLine {
		return "", fmt.Errorf("password from stdin: the first line is longer than %d bytes", maxPasswordLine)
	}
	pw := strings.TrimSuffix(string(line), "\r")
	if pw == "" {
		return "", errors.New("password from stdin: the first line is empty")
	}
	return pw, nil
}
