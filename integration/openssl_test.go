package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmbackup/hsmbackup/internal/testenv"
)

// opensslCA is a customer CA made and run with the openssl command, as a
// customer without a PKI product would: it signs the cluster CSR and
// issues client certificates.
type opensslCA struct {
	openssl   string
	dir       string
	Cert, Key string // PEM files
}

// newOpenSSLCA makes a self-signed EC P-256 CA called cn in a directory of
// its own under dir.
func newOpenSSLCA(t testing.TB, dir, cn string) *opensslCA {
	t.Helper()
	ca := &opensslCA{openssl: testenv.LookPath(t, "openssl"), dir: filepath.Join(dir, strings.ReplaceAll(cn, " ", "-"))}
	if err := os.MkdirAll(ca.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ca.Cert, ca.Key = ca.path("ca.crt"), ca.path("ca.key")
	ca.run(t, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", ca.Key, "-out", ca.Cert, "-subj", "/CN="+cn, "-days", "2")
	return ca
}

func (ca *opensslCA) path(name string) string { return filepath.Join(ca.dir, name) }

func (ca *opensslCA) run(t testing.TB, args ...string) {
	t.Helper()
	cmd := exec.Command(ca.openssl, args...)
	cmd.Dir = ca.dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Sign signs the PEM CSR in csr for a day and writes the certificate to
// out, with `openssl x509 -req`.
func (ca *opensslCA) Sign(t testing.TB, csr, out string) {
	t.Helper()
	ca.run(t, "x509", "-req", "-in", csr, "-CA", ca.Cert, "-CAkey", ca.Key,
		"-CAserial", ca.path("ca.srl"), "-CAcreateserial", "-days", "1", "-out", out)
}

// newKey makes an EC P-256 key and a CSR for cn; the key file is 0600.
func (ca *opensslCA) newKey(t testing.TB, cn string) (csr, key string) {
	t.Helper()
	csr, key = ca.path(cn+".csr"), ca.path(cn+".key")
	ca.run(t, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", key, "-out", csr, "-subj", "/CN="+cn)
	// OpenSSL 3 writes keys 0600; older versions follow the umask.
	if err := os.Chmod(key, 0o600); err != nil {
		t.Fatal(err)
	}
	return csr, key
}

// Client issues a client certificate for cn, valid for a day, and returns
// the certificate and key files.
func (ca *opensslCA) Client(t testing.TB, cn string) (cert, key string) {
	t.Helper()
	csr, key := ca.newKey(t, cn)
	cert = ca.path(cn + ".crt")
	ca.Sign(t, csr, cert)
	return cert, key
}

// ExpiredClient issues a client certificate for cn that expired in 2020,
// with `openssl ca`, which can backdate (OpenSSL 3.0's `x509 -req` cannot).
func (ca *opensslCA) ExpiredClient(t *testing.T, cn string) (cert, key string) {
	t.Helper()
	csr, key := ca.newKey(t, cn)
	db := ca.path("db")
	if err := os.MkdirAll(db, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`[ca]
default_ca = customer
[customer]
database = %[1]s/index.txt
new_certs_dir = %[1]s
serial = %[1]s/serial
default_md = sha256
policy = any
unique_subject = no
[any]
commonName = supplied
`, db)
	for name, data := range map[string]string{"index.txt": "", "serial": "01\n", "ca.cnf": conf} {
		if err := os.WriteFile(filepath.Join(db, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cert = ca.path(cn + ".crt")
	ca.run(t, "ca", "-batch", "-config", filepath.Join(db, "ca.cnf"), "-cert", ca.Cert, "-keyfile", ca.Key,
		"-in", csr, "-out", cert, "-notext", "-startdate", "20200101000000Z", "-enddate", "20200102000000Z")
	return cert, key
}
