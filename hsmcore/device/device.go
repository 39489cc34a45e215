package device

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/audit"
	"github.com/hsmbackup/hsmbackup/hsmcore/device/internal/kbkdf"
	"github.com/hsmbackup/hsmbackup/hsmcore/quorum"
	"github.com/hsmbackup/hsmbackup/internal/atomicfile"
)

// DefaultCapacity is how many keys an HSM holds unless manufactured
// otherwise: the 16,666 of CloudHSM's hsm2m.medium.
const DefaultCapacity = 16666

// MaxUsers is how many users an HSM holds (CloudHSM hsm2m.medium: 1,024).
const MaxUsers = 1024

// ManufactureConfig describes a new HSM.
type ManufactureConfig struct {
	Class        string     // hardware class, e.g. "hsm2m.medium"; required
	Firmware     string     // "major.minor.patch"; required
	FIPS         bool       // FIPS mode
	Serial       string     // empty: a random serial
	Capacity     int        // maximum keys; 0 means DefaultCapacity
	Manufacturer *Authority // certifies the device and provides the MKBK; required
	Operator     *Authority // certifies the device and provides the AKBK; required
}

// Options are settings of a running device that are not part of its
// identity.
type Options struct {
	// PasswordIterations is the PBKDF2-HMAC-SHA256 iteration count for
	// passwords set from now on; 0 means DefaultPasswordIterations. Tests
	// lower it with TestOptions.
	PasswordIterations int
	// MaxLoginFailures is how many wrong passwords in a row lock a user
	// (see Session.UnlockUser); 0 means DefaultMaxLoginFailures, a
	// negative value never locks.
	MaxLoginFailures int
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// TestOptions returns Options with a cheap password KDF, for tests only.
func TestOptions() Options { return Options{PasswordIterations: 1000} }

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now().UTC()
	}
	return time.Now().UTC()
}

// Files in a device directory.
const (
	sealKeyFile = "seal.key"      // 32 random bytes: stands for the HSM's hardware storage root
	stateFile   = "device.sealed" // identity, hardware-bound keys, users and keys, sealed
	auditFile   = "audit.log"     // hash-chained audit log, JSON lines
)

// Device is one HSM. All its methods are safe for concurrent use. Secret
// keys (MKBK, AKBK, PBK, EBKs, the device key, the seal key and every key
// object's material) never leave it: no exported method returns them.
type Device struct {
	dir  string
	opts Options

	id        hsmcore.Identity
	capacity  int
	deviceKey *ecdsa.PrivateKey
	mfrCert   []byte // DER, signed by the manufacturer root
	opCert    []byte // DER, signed by the operator root
	mfrRoot   []byte // DER, the manufacturer's root; nil in devices made before it was kept
	claim     []byte // the claim secret; nil in devices made before claims
	mkbk      []byte
	akbk      []byte
	pbk       []byte
	seal      cipher.AEAD // the journal's entries, quorum.spent, failures; a version 2 state
	sealKey   []byte      // from which each state file's key is derived

	importMu sync.Mutex // held by ImportBundle throughout, before mu

	mu             sync.Mutex
	st             *contents
	digest         [32]byte // SHA-256 of st as version 2 encodes it: equal on members in sync
	digestOK       bool     // digest is st's; else stateDigest computes it
	jr             *journal // nil: the next commit writes a base
	baseSize       int64    // plaintext size of the last base written or read
	failCommits    int      // tests only: commits that fail as on a full disk
	sessionHandles uint64
	tracker        *quorum.Tracker     // quorum tokens: outstanding ones in memory only, spent ones also in spentFile
	failures       map[string]*failure // failed logins by user; device-local, in failuresFile
	ep             *epoch              // ended by Zeroize, with the transfers begun in it
	auditLog       *audit.Log
	alog           auditFiles      // the audit log's files
	unauth         unauthLimiter   // audit entries of unauthenticated calls
	claims         claimNonces     // nonces issued for claim proofs, failed proofs
	transports     []*transportKey // outstanding transport keys, oldest first
	lock           *os.File        // held while the device is open
}

// Manufacture creates a new HSM in the empty or missing directory dir. It
// returns the HSM's claim secret, the one time it is given out: only its
// holder sets the new HSM up (hsmcore.Claim), and after a zeroization
// sets it up again.
func Manufacture(dir string, cfg ManufactureConfig, opts Options) (_ *Device, claim hsmcore.Claim, err error) {
	if cfg.Manufacturer == nil || cfg.Manufacturer.kind != Manufacturer {
		return nil, claim, fmt.Errorf("manufacture: a manufacturer authority is required: %w", hsmcore.ErrInvalid)
	}
	if cfg.Operator == nil || cfg.Operator.kind != Operator {
		return nil, claim, fmt.Errorf("manufacture: an operator authority is required: %w", hsmcore.ErrInvalid)
	}
	if err := hsmcore.CheckName(cfg.Class); err != nil {
		return nil, claim, fmt.Errorf("manufacture: class: %w", err)
	}
	if _, err := hsmcore.ParseFirmware(cfg.Firmware); err != nil {
		return nil, claim, fmt.Errorf("manufacture: %w", err)
	}
	if cfg.Serial == "" {
		var b [6]byte
		rand.Read(b[:])
		cfg.Serial = "HSM-" + strings.ToUpper(hex.EncodeToString(b[:]))
	}
	if err := hsmcore.CheckName(cfg.Serial); err != nil {
		return nil, claim, fmt.Errorf("manufacture: serial: %w", err)
	}
	if cfg.Capacity == 0 {
		cfg.Capacity = DefaultCapacity
	}
	if cfg.Capacity < 0 || cfg.Capacity > maxImageKeys {
		return nil, claim, fmt.Errorf("manufacture: capacity %d out of range 1..%d: %w", cfg.Capacity, maxImageKeys, hsmcore.ErrInvalid)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, claim, fmt.Errorf("manufacture: %w", err)
	}
	if ents, err := os.ReadDir(dir); err != nil {
		return nil, claim, fmt.Errorf("manufacture: %w", err)
	} else if len(ents) > 0 {
		return nil, claim, fmt.Errorf("manufacture: directory %s is not empty: %w", dir, hsmcore.ErrExists)
	}

	id := hsmcore.Identity{
		Serial:       cfg.Serial,
		Class:        cfg.Class,
		Manufacturer: cfg.Manufacturer.name,
		Operator:     cfg.Operator.name,
		Firmware:     cfg.Firmware,
		FIPS:         cfg.FIPS,
	}
	claim = hsmcore.NewClaim(id.Serial)
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, claim, fmt.Errorf("manufacture: device key: %w", err)
	}
	mfrCert, err := cfg.Manufacturer.issueDeviceCert(&key.PublicKey, id)
	if err != nil {
		return nil, claim, fmt.Errorf("manufacture: %w", err)
	}
	opCert, err := cfg.Operator.issueDeviceCert(&key.PublicKey, id)
	if err != nil {
		return nil, claim, fmt.Errorf("manufacture: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, claim, fmt.Errorf("manufacture: %w", err)
	}
	sealKey := make([]byte, 32)
	rand.Read(sealKey)
	if err := atomicfile.WriteFile(filepath.Join(dir, sealKeyFile), sealKey, 0o600); err != nil {
		lock.Close()
		return nil, claim, fmt.Errorf("manufacture: %w", err)
	}
	d := &Device{
		dir:       dir,
		opts:      opts,
		id:        id,
		capacity:  cfg.Capacity,
		deviceKey: key,
		mfrCert:   mfrCert,
		opCert:    opCert,
		mfrRoot:   cfg.Manufacturer.Certificate().Raw,
		claim:     claim.Secret,
		mkbk:      cfg.Manufacturer.backupKey(cfg.Class),
		akbk:      cfg.Operator.backupKey(cfg.Class),
		lock:      lock,
		st:        newContents(),
		failures:  map[string]*failure{},
		tracker:   quorum.NewTracker(opts.Now, 0),
		ep:        newEpoch(),
		auditLog:  audit.New(audit.Head{}),
	}
	d.seal, d.sealKey = newGCM(sealKey), sealKey
	d.pbk = derivePBK(d.mkbk, d.akbk, d.id)
	if err := d.writeBase(d.st); err != nil {
		lock.Close()
		return nil, claim, fmt.Errorf("manufacture: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, auditFile), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		lock.Close()
		return nil, claim, fmt.Errorf("manufacture: %w", err)
	}
	d.alog = auditFiles{f: f}
	if err := d.audit("", "device.manufacture", id.Serial, "ok"); err != nil {
		d.Close()
		return nil, claim, fmt.Errorf("manufacture: %w", err)
	}
	return d, claim, nil
}

// Open loads the HSM kept in dir. Its seal key and sealed state must be
// files of mode 0600, and its audit log must verify, every segment of it;
// only a torn last entry, what a write cut short leaves, is repaired: it
// is truncated and the truncation recorded ("audit.recovered").
func Open(dir string, opts Options) (d *Device, err error) {
	sealKey, err := atomicfile.ReadPrivate(filepath.Join(dir, sealKeyFile))
	if err != nil {
		return nil, fmt.Errorf("open device: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open device: %w", err)
	}
	defer func() {
		if err != nil {
			lock.Close()
		}
	}()
	if len(sealKey) != 32 {
		return nil, fmt.Errorf("open device: %s: %w", sealKeyFile, hsmcore.ErrMalformed)
	}
	// A daemon killed while it wrote a file (the state, a journal head, an
	// audit head) left its temporary copy; the lock says no one else
	// writes here now.
	temps, err := atomicfile.RemoveTemps(dir)
	if err != nil {
		return nil, fmt.Errorf("open device: %w", err)
	}
	f, err := atomicfile.OpenPrivate(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("open device: %w", err)
	}
	d = &Device{dir: dir, opts: opts, seal: newGCM(sealKey), sealKey: sealKey, lock: lock, tracker: quorum.NewTracker(opts.Now, 0), ep: newEpoch()}
	defer func(d *Device) {
		if err != nil && d.jr != nil {
			d.jr.f.Close()
		}
	}(d)
	version, base, err := d.readState(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("open device %s: %w", dir, err)
	}
	if version == 2 {
		err = d.openJournal(base) // its changes, then the upgrade below
	}
	if err == nil && version < stateVersion {
		err = d.writeBase(d.st) // upgraded
	} else if err == nil {
		err = d.openJournal(base)
	}
	if err != nil {
		return nil, fmt.Errorf("open device %s: %w", dir, err)
	}
	d.pbk = derivePBK(d.mkbk, d.akbk, d.id)
	if err := d.loadSpent(); err != nil {
		return nil, fmt.Errorf("open device %s: %w", dir, err)
	}
	if err := d.readFailures(); err != nil {
		return nil, fmt.Errorf("open device %s: %w", dir, err)
	}

	if err := d.openAudit(); err != nil {
		return nil, fmt.Errorf("open device %s: audit log: %w", dir, err)
	}
	if temps > 0 {
		// An officer reading the log learns of the crash. Best effort: the
		// files are gone, and a full disk must not keep the device shut.
		d.audit("", "state.recovered", fmt.Sprintf("temporary files of an interrupted write removed: %d", temps), "ok")
	}
	return d, nil
}

// derivePBK is PBK = KDF(MKBK || AKBK) with NIST SP 800-108 in counter mode
// over HMAC-SHA256; the context binds it to the identity of the hardware
// domain (see docs/FORMATS.md).
func derivePBK(mkbk, akbk []byte, id hsmcore.Identity) []byte {
	k := append(append(make([]byte, 0, 64), mkbk...), akbk...)
	ctx := []byte(id.Class + "\x00" + id.Manufacturer + "\x00" + id.Operator)
	return kbkdf.Derive(k, []byte("hsmcore PBK v1"), ctx, 32)
}

// pbkFingerprint names a PBK without revealing it: a second, independent
// SP 800-108 derivation from it.
func pbkFingerprint(pbk []byte) [32]byte {
	return [32]byte(kbkdf.Derive(pbk, []byte("hsmcore PBK fingerprint v1"), nil, 32))
}

func newGCM(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic("hsmcore: " + err.Error())
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic("hsmcore: " + err.Error())
	}
	return g
}

// Close releases the device's files. The device must not be used after.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.alog.f == nil {
		return nil
	}
	d.flushSuppressed() // best effort: counts not recorded are lost
	err := d.alog.f.Close()
	d.alog.f = nil
	if d.jr != nil {
		d.jr.f.Close()
		d.jr = nil
	}
	d.lock.Close()
	return err
}

// Identity returns the device's identity.
func (d *Device) Identity() hsmcore.Identity { return d.id }

// PBKFingerprint returns the fingerprint of the device's persistent backup
// key: equal fingerprints mean images move between the two devices.
func (d *Device) PBKFingerprint() [32]byte { return pbkFingerprint(d.pbk) }

// Capacity returns how many keys the device holds at most.
func (d *Device) Capacity() int { return d.capacity }

// Certificates returns the device certificate issued by the manufacturer
// and the one issued by the operator, DER encoded.
func (d *Device) Certificates() (manufacturer, operator *x509.Certificate) {
	m, err := x509.ParseCertificate(d.mfrCert)
	if err != nil {
		panic("hsmcore: stored certificate: " + err.Error())
	}
	o, err := x509.ParseCertificate(d.opCert)
	if err != nil {
		panic("hsmcore: stored certificate: " + err.Error())
	}
	return m, o
}

// auditField keeps a field that may come from a caller within the audit
// format's limits: printable UTF-8 of at most 256 bytes, or a placeholder.
func auditField(s string) string {
	if len(s) > 256 || !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl) {
		return "(unprintable)"
	}
	return s
}
