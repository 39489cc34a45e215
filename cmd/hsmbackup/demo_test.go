package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/internal/miniotest"
	"github.com/hsmbackup/hsmbackup/store/storeurl"
	"github.com/hsmbackup/hsmbackup/wrap"
)

// cheapPasswords is a PBKDF2 cost that keeps in-process demo runs fast;
// the end-to-end test runs the binary with hsmcore's default.
const cheapPasswords = 1000

// demoWants are lines, or parts of lines, every successful demo prints:
// one or more per step, the refusals included.
var demoWants = []string{
	"[1/12] workspace, authorities, customer CA, master keyring, store",
	"manufacturer   acme-hsm",
	"operator       example-cloud",
	"operator       other-cloud",
	`customer CA    "example-corp customer root CA" (ECDSA P-384)`,
	"master keyring master.keyring, current key demo-master v1",
	"manifest key   Ed25519, public key ",
	"this run under hsmbackup-demo/",
	"[2/12] HSMs A and B: manufacture, serve on loopback TLS",
	"HSM A          serial HSM-",
	"HSM B          serial HSM-",
	"hsm2m.medium, firmware 2.1.0, operator example-cloud, on 127.0.0.1:",
	"[3/12] cluster: attest, CSR signed by the customer CA, first crypto officer, add B",
	"attested       HSM A: acme-hsm/hsm2m.medium/example-cloud, fresh nonce, both chains verified",
	"cluster CSR    for cluster-demo; its key is the one HSM A attests to",
	"HSM A now presents the cluster certificate",
	`crypto officer "admin" created and logged in over mutual TLS`,
	"member added   HSM B: attested",
	"members        2, in sync: state digest ",
	"[4/12] crypto user and keys: generate, encrypt, sign",
	`crypto user    "app-user" created on every member`,
	"HANDLE  TYPE      LABEL             KCV",
	"AES-256", "EC P-384", "RSA-2048",
	"encrypted      with key 1 (AES-256-GCM)",
	"signed         with key 2 (ECDSA P-384, SHA-384)",
	"signed         with key 3 (RSA-PSS, SHA-256)",
	"[5/12] backup: HSM image, wrapped again, stored with a signed manifest",
	"backup         backup-",
	" of cluster-demo, taken from HSM A (serial HSM-",
	"inner image    ",
	"outer envelope wrapped again to keyring demo-master 1",
	"stored         image: ",
	"manifest       manifest.json, signed with the Ed25519 key, written last and create-only",
	"/clusters/cluster-demo/backups/backup-",
	"[6/12] list and verify the backup",
	"listed 1 backup(s):",
	"BACKUP                              CLUSTER       SOURCE            STATE  OBJECT BYTES  CREATED",
	"cluster-demo  HSM-",
	"verified       manifest signature, object SHA-256, outer envelope, inner image header: ok",
	"[7/12] disaster-recovery copy: wrapped to an HPKE key pair, verified with its private key",
	"HPKE key pair  ML-KEM-768 + X25519: dr-site.pub wraps, only dr-site.key opens (mode 0600, never shown)",
	"copied         to the DR site (a second file store) as backup-",
	"to mlkem768x25519 ", " only; the inner image is copied byte for byte",
	"verified       the copy in full with the HPKE private key alone: ok",
	"keyring        does not open the copy: backup backup-",
	"outer layer does not open: header: no key for this envelope: it is wrapped to mlkem768x25519 ",
	"; tried: keyring holds demo-master v1",
	"[8/12] HSM C (fresh, same class and operator): restore, use the keys",
	"operator example-cloud, uninitialized, on 127.0.0.1:",
	"into HSM C (serial HSM-",
	"HSM C attested (fresh nonce, class, operator, PBK), image streamed in and committed",
	`logged in      on HSM C as "app-user" over mutual TLS`,
	`decrypted      the ciphertext made before the backup, with key 1: "payroll batch 2024-06 approved by treasury"`,
	"verified       the signature made before the backup with key 2 (EC P-384)",
	"verified       the signature made before the backup with key 3 (RSA-2048)",
	"restored keys work on HSM C: 3 keys, same handles and KCVs",
	"[9/12] HSM D (operator other-cloud): restore refused",
	"operator other-cloud, uninitialized, on 127.0.0.1:",
	"genuine: both chains verify; only the operator differs",
	"attestation rejected",
	`operator "other-cloud", want "example-cloud"`,
	"HSM D unchanged: still uninitialized, state digest ",
	"[10/12] tampered image: verify and restore refuse it",
	"tampered       flipped byte ",
	"verify failed  at the object hash layer: ",
	"image object does not match its manifest",
	"HSM E unchanged: still uninitialized, state digest ",
	"[11/12] keys migrate: extractable keys into another cluster, attested, wrapped HSM to HSM",
	"refused        payroll-data     kcv ",
	": not extractable",
	"moved          payments-dr      kcv ",
	"moved          receipts-dr      kcv ",
	"payments-dr decrypts what the source encrypted",
	"run again      0 moved, 2 skipped (present), 1 refused",
	"[12/12] scheduler: two clusters on a schedule, a restore drill, the fleet's status",
	"HSM F          cluster cluster-demo-2 initialized on it",
	"HSM S          scratch HSM for the drill: same class, manufacturer, operator; uninitialized",
	"config         fleet/config.yaml: clusters cluster-demo (A, B) and cluster-demo-2 (F)",
	"`hsmbackup scheduler run` for 7s",
	" of cluster-demo-2, one a slot",
	"drill          passed: backup-",
	"restored into S in ", "(a measured RTO), 2 users and 5 keys as recorded, S zeroized",
	"status         hsmbackup scheduler status",
	"CLUSTER         STATE  NEWEST READY",
	"demo complete",
}

func checkDemoOutput(t *testing.T, out string) {
	t.Helper()
	for _, want := range demoWants {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	// Both clusters in the status table, neither red (amber if a slot had
	// just begun when the scheduler stopped).
	if n := len(regexp.MustCompile(`(?m)^ +cluster-demo(-2)? +(GREEN|AMBER) +backup-`).FindAllString(out, -1)); n != 2 {
		t.Errorf("the status table shows %d clusters green or amber, want 2", n)
	}
	// Exactly one refusal per refused restore and one for the key that
	// may not migrate, and no secret on show.
	if n := strings.Count(out, "  refused        "); n != 3 {
		t.Errorf("demo output shows %d refusals, want 3 (two restores, one key)", n)
	}
	for _, secret := range []string{"PRIVATE KEY", "password:", "Password"} {
		if strings.Contains(out, secret) {
			t.Errorf("demo output shows %q", secret)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

// assertEmptyDir fails unless dir holds nothing: the demo cleaned up.
func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("left behind in %s: %s", dir, e.Name())
	}
}

var hsmAddr = regexp.MustCompile(`on (127\.0\.0\.1:[0-9]+)`)

// assertHSMsStopped fails unless the demo narrated serving at least min
// HSMs and none of them still accepts connections.
func assertHSMsStopped(t *testing.T, out string, min int) {
	t.Helper()
	addrs := hsmAddr.FindAllStringSubmatch(out, -1)
	if len(addrs) < min {
		t.Errorf("demo served %d HSMs, want at least %d", len(addrs), min)
	}
	for _, m := range addrs {
		if c, err := net.DialTimeout("tcp", m[1], time.Second); err == nil {
			c.Close()
			t.Errorf("HSM at %s still serves after the demo", m[1])
		}
	}
}

func TestRunDemo(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if err := runDemo(context.Background(), &out, demoOptions{Dir: dir, PasswordIterations: cheapPasswords}); err != nil {
		t.Fatalf("runDemo: %v\noutput:\n%s", err, out.String())
	}
	checkDemoOutput(t, out.String())
	if strings.Contains(out.String(), "kept") {
		t.Error("workspace or objects reported kept without Keep")
	}
	assertEmptyDir(t, dir)
	assertHSMsStopped(t, out.String(), 5)
}

// TestRunDemoFileStore runs the tour against a store the user names: the
// demo's objects go under a prefix of their own and are deleted at the
// end, and other objects are left alone.
func TestRunDemoFileStore(t *testing.T) {
	dir, storeDir := t.TempDir(), t.TempDir()
	other := filepath.Join(storeDir, "someone-else", "object")
	if err := os.MkdirAll(filepath.Dir(other), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, []byte("not the demo's"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	opts := demoOptions{Dir: dir, PasswordIterations: cheapPasswords, Store: "file://" + storeDir}
	if err := runDemo(context.Background(), &out, opts); err != nil {
		t.Fatalf("runDemo: %v\noutput:\n%s", err, out.String())
	}
	checkDemoOutput(t, out.String())
	for _, want := range []string{"store          file://" + storeDir + ", this run under hsmbackup-demo/", "store: deleted the 2 objects this run wrote under hsmbackup-demo/"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	assertEmptyDir(t, dir)
	ents, err := os.ReadDir(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") { // the store's own
			names = append(names, e.Name())
		}
	}
	if !slices.Equal(names, []string{"someone-else"}) {
		t.Errorf("store after the demo holds %q; want only someone-else", names)
	}
}

func TestRunDemoKeep(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if err := runDemo(context.Background(), &out, demoOptions{Dir: dir, Keep: true, PasswordIterations: cheapPasswords}); err != nil {
		t.Fatalf("runDemo: %v", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 1 {
		t.Fatalf("want one kept workspace in %s, got %v, %v", dir, ents, err)
	}
	ws := filepath.Join(dir, ents[0].Name())
	if !strings.Contains(out.String(), "workspace kept: "+ws+"\n") {
		t.Errorf("output does not name the kept workspace %s:\n%s", ws, out.String())
	}
	for _, name := range []string{"authorities", "customer-ca.crt", "master.keyring", "hsm-a", "hsm-b", "hsm-c", "hsm-d", "hsm-e", "store", "dr-site", "dr-site.key", "dr-site.pub"} {
		if _, err := os.Stat(filepath.Join(ws, name)); err != nil {
			t.Errorf("kept workspace: %v", err)
		}
	}
	// The backup is kept in the store, and the kept tools find it.
	st, err := storeurl.Open("file://"+filepath.Join(ws, "store"), storeurl.Options{})
	if err != nil {
		t.Fatal(err)
	}
	prefix := regexp.MustCompile(`this run under (\S+)`).FindStringSubmatch(out.String())
	if prefix == nil {
		t.Fatalf("output names no prefix:\n%s", out.String())
	}
	ms, err := backup.List(context.Background(), backup.Repo{Store: st, Prefix: prefix[1]}, backup.Filter{})
	if err != nil || len(ms) != 1 || ms[0].ClusterID != demoClusterID {
		t.Errorf("kept store lists %v, %v; want one backup of %s", ms, err, demoClusterID)
	}
	// The DR site holds one copy of it, wrapped to the kept HPKE key only:
	// that key opens it, and the kept keyring does not.
	dr, err := storeurl.Open("file://"+filepath.Join(ws, "dr-site"), storeurl.Options{})
	if err != nil {
		t.Fatal(err)
	}
	repo := backup.Repo{Store: dr, Prefix: prefix[1]}
	copies, err := backup.List(context.Background(), repo, backup.Filter{})
	if err != nil || len(copies) != 1 || len(ms) != 1 || copies[0].SourceBackupID != ms[0].ID {
		t.Fatalf("kept DR site lists %v, %v; want one copy of the kept backup", copies, err)
	}
	hpke, err := wrap.LoadHPKEIdentity(filepath.Join(ws, "dr-site.key"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"mlkem768x25519 " + hpke.Recipient().Fingerprint()}; !slices.Equal(copies[0].Recipients, want) {
		t.Errorf("the copy is wrapped to %q, want %q", copies[0].Recipients, want)
	}
	keyring, err := wrap.LoadKeyring(filepath.Join(ws, "master.keyring"))
	if err != nil {
		t.Fatal(err)
	}
	open := func(id wrap.Identity) error {
		rc, err := dr.Get(context.Background(), repo.ObjectKey(demoClusterID, copies[0].ID, backup.ImageObject))
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		r, err := wrap.Decrypt(context.Background(), rc, id)
		if err == nil {
			_, err = io.Copy(io.Discard, r)
		}
		return err
	}
	if err := open(hpke); err != nil {
		t.Errorf("the kept HPKE key does not open the copy: %v", err)
	}
	if err := open(keyring); !errors.Is(err, wrap.ErrUnknownKey) {
		t.Errorf("the kept keyring opening the copy: %v, want %v", err, wrap.ErrUnknownKey)
	}
}

// TestRunDemoS3 runs the tour against a real MinIO: once with Keep, then
// once without, which must not collide with the kept objects and deletes
// only what it wrote.
func TestRunDemoS3(t *testing.T) {
	srv := miniotest.Start(t)
	bucket := srv.NewBucket(t, miniotest.BucketOptions{})
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_REGION", "us-east-1")
	url := "s3://" + bucket + "/tenant-a?endpoint=" + srv.URL()
	objects := func() []string {
		t.Helper()
		var keys []string
		for oi := range srv.Client(t).ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Recursive: true}) {
			if oi.Err != nil {
				t.Fatal(oi.Err)
			}
			keys = append(keys, oi.Key)
		}
		return keys
	}
	run := func(keep bool) (out, prefix string) {
		t.Helper()
		var buf bytes.Buffer
		opts := demoOptions{Dir: t.TempDir(), Keep: keep, Store: url, PasswordIterations: cheapPasswords}
		if err := runDemo(context.Background(), &buf, opts); err != nil {
			t.Fatalf("runDemo --store %s: %v\noutput:\n%s", url, err, buf.String())
		}
		out = buf.String()
		checkDemoOutput(t, out)
		m := regexp.MustCompile(`store          ` + regexp.QuoteMeta(url) + `, this run under (hsmbackup-demo/\S+/)\n`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("output does not name the store and the run's prefix:\n%s", out)
		}
		return out, m[1]
	}

	out, keptPrefix := run(true)
	if !strings.Contains(out, "stored objects kept: "+url+", under "+keptPrefix+"\n") {
		t.Errorf("output does not say the objects are kept:\n%s", out)
	}
	kept := objects()
	if len(kept) != 2 || !strings.HasPrefix(kept[0], "tenant-a/"+keptPrefix+"clusters/"+demoClusterID+"/backups/") ||
		!strings.HasSuffix(kept[1], "/"+backup.ManifestObject) {
		t.Errorf("after a kept run the bucket holds %q; want one backup under tenant-a/%s", kept, keptPrefix)
	}

	out, prefix := run(false)
	if prefix == keptPrefix {
		t.Errorf("two runs used one prefix, %s", prefix)
	}
	if !strings.Contains(out, "store: deleted the 2 objects this run wrote under "+prefix+"\n") {
		t.Errorf("output does not report the deletion:\n%s", out)
	}
	if after := objects(); !slices.Equal(after, kept) {
		t.Errorf("after a run without Keep the bucket holds %q, want %q", after, kept)
	}
}
