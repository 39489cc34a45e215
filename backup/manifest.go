package backup

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/store"
)

// ManifestFormat is the value of a version 1 manifest's "format" field.
const ManifestFormat = "hsmbackup-manifest/1"

// Limits on a manifest, checked when signing and when parsing.
const (
	MaxManifestSize = 1 << 20 // bytes of manifest.json
	MaxTags         = 50      // tags on one backup
	MaxTagKeyLen    = 128     // characters of a tag key (at least 1)
	MaxTagValueLen  = 256     // characters of a tag value (at least 0)
	maxCertSize     = 16 << 10
	maxRecipients   = 16
)

// State is a backup's lifecycle state.
type State string

// Backup states, as AWS CloudHSM names them.
const (
	StateReady           State = "READY"
	StatePendingDeletion State = "PENDING_DELETION"
	StateDeleted         State = "DELETED"
)

func (s State) valid() bool {
	return s == StateReady || s == StatePendingDeletion || s == StateDeleted
}

// Source is the identity of the HSM that exported a backup's image, as its
// inner image header states it.
type Source struct {
	hsmcore.Identity        // serial, class, manufacturer, operator, firmware, fips
	PBKFingerprint   string `json:"pbk_fingerprint"` // 32 bytes, lower-case hex
}

// Manifest describes one backup; it is stored as manifest.json next to
// the image object, written last and create-only, so that a backup without
// a manifest does not exist. docs/FORMATS.md section 9 is normative.
//
// The field order of this struct is the field order of the encoding, and
// so part of the format: do not reorder fields.
type Manifest struct {
	Format    string `json:"format"` // ManifestFormat
	ID        string `json:"id"`     // backup-<yyyymmddThhmmssZ>-<10 base32 chars>
	ClusterID string `json:"cluster_id"`
	// Location is where the manifest was written: the full name of the
	// backup's directory in its store's namespace (the store's own key
	// prefix, then the repo's, then clusters/<cluster_id>/backups/<id>/).
	// A manifest read from anywhere else is refused. Manifests written
	// before it existed have none: they are unbound (Bound), and verify
	// wherever they are (docs/FORMATS.md 9.1).
	Location string `json:"location,omitempty"`
	Source   Source `json:"source"`
	ImageID  string `json:"image_id"` // 16 bytes, lower-case hex
	State    State  `json:"state"`
	// DeletionRequested is when the backup was deleted (UTC): set in
	// states PENDING_DELETION and DELETED, zero (and absent) in READY.
	DeletionRequested time.Time `json:"deletion_requested,omitzero"`
	Created           time.Time `json:"created"` // UTC
	ImageSize         int64     `json:"image_size"`
	// ImageSHA256 is the SHA-256 of the inner image (lower-case hex), as
	// the exporting HSM's signed ImageStatement states it with ImageSize.
	// Both are absent from manifests written before they existed
	// (docs/FORMATS.md 9.1).
	ImageSHA256 string `json:"image_sha256,omitempty"`
	ObjectSize  int64  `json:"object_size"`
	// ObjectSHA256 is the SHA-256 of the stored image object (outer
	// envelope, header and body), lower-case hex.
	ObjectSHA256 string `json:"object_sha256"`
	// Recipients describe the outer envelope's stanzas
	// (wrap.Header.Recipients), for listings.
	Recipients []string `json:"recipients"`
	// OuterHeader is the envelope header, byte for byte (base64 in JSON).
	OuterHeader   []byte            `json:"outer_header"`
	Tags          map[string]string `json:"tags,omitempty"`
	NeverExpires  bool              `json:"never_expires"`
	RetentionDays int               `json:"retention_days,omitempty"`
	// Lock is the object-lock retention the backup's objects were stored
	// under (the image and every version of the manifest), if any.
	Lock            *Lock  `json:"object_lock,omitempty"`
	SourceBackupID  string `json:"source_backup_id,omitempty"`
	SourceClusterID string `json:"source_cluster_id,omitempty"`
	// SourceObjectSHA256 is, in a copy, the source backup's object_sha256:
	// with SourceBackupID it names the backup copied.
	SourceObjectSHA256 string `json:"source_object_sha256,omitempty"`
	// ClusterCertificate and CustomerCA are DER (base64 in JSON).
	ClusterCertificate []byte `json:"cluster_certificate,omitempty"`
	CustomerCA         []byte `json:"customer_ca,omitempty"`
	// Inventory is what the source HSM held (users, keys), if recorded:
	// a restore compares it with what its target holds.
	Inventory *Inventory `json:"inventory,omitempty"`
	// StateVersion is the source HSM's state version (per member serial,
	// the last change of that member the backed-up state holds), if the
	// state did not change during the export; absent from manifests of
	// HSMs that predate versions and from those written before.
	StateVersion map[string]uint64 `json:"state_version,omitempty"`
	// ImageStatement is the exporting HSM's signed statement of the inner
	// image's id, length and SHA-256, with its device certificate.
	ImageStatement *hsmcore.SignedImageStatement `json:"image_statement,omitempty"`
	// Signature is Ed25519 over SigningBytes.
	Signature []byte `json:"signature,omitempty"`
}

// Bound reports whether the manifest names its location, so that it
// verifies only there; an unbound manifest was written before manifests
// named it.
func (m *Manifest) Bound() bool { return m.Location != "" }

// location is the Location of backup id of cluster written through repo.
func location(repo Repo, cluster, id string) string {
	return store.KeyPrefix(repo.Store) + repo.ObjectKey(cluster, id, "")
}

// checkLocation checks, for a bound manifest, that its location names its
// own cluster and id under a valid prefix.
func (m *Manifest) checkLocation() error {
	if m.Location == "" {
		return nil
	}
	p, ok := strings.CutSuffix(m.Location, clusterDir("", m.ClusterID)+m.ID+"/")
	if !ok {
		return fmt.Errorf("location %q is not that of backup %s of cluster %s", m.Location, m.ID, m.ClusterID)
	}
	if n, err := normPrefix(p); err != nil || n != p {
		return fmt.Errorf("location %q: bad prefix", m.Location)
	}
	return nil
}

// Lock is an object-lock retention as a manifest records it: S3 Object
// Lock in Mode until Until, under which the store refuses to delete the
// backup's objects.
type Lock struct {
	Mode  store.RetentionMode `json:"mode"`
	Until time.Time           `json:"until"` // UTC, whole seconds
}

// LockedAt reports whether the manifest records a lock still in force at t.
func (m *Manifest) LockedAt(t time.Time) bool {
	return m.Lock != nil && t.Before(m.Lock.Until)
}

func (l *Lock) validate(created time.Time) error {
	switch {
	case l.Mode != store.Governance && l.Mode != store.Compliance:
		return fmt.Errorf("object lock: unknown mode %q", l.Mode)
	case l.Until.Location() != time.UTC || !l.Until.Equal(l.Until.Truncate(time.Second)):
		return errors.New("object lock: date not in whole seconds of UTC")
	case !l.Until.After(created) || l.Until.After(created.Add((MaxLockDays+1)*24*time.Hour)):
		return fmt.Errorf("object lock: date not within %d days after creation", MaxLockDays+1)
	}
	return nil
}

// SigningBytes returns the bytes a manifest's signature covers: the
// encoding/json encoding of the manifest with Signature cleared (so the
// "signature" member is absent). encoding/json writes struct fields in
// declaration order, map keys sorted and no insignificant white space, so
// the bytes are a function of the manifest's values.
func (m *Manifest) SigningBytes() ([]byte, error) {
	c := *m
	c.Signature = nil
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return b, nil
}

// Sign checks the manifest and sets its signature.
func (m *Manifest) Sign(priv ed25519.PrivateKey) error {
	if len(priv) != ed25519.PrivateKeySize {
		return errors.New("sign manifest: signing key is not an Ed25519 private key")
	}
	m.Signature = make([]byte, ed25519.SignatureSize) // validate expects one
	if err := m.validate(); err != nil {
		m.Signature = nil
		return fmt.Errorf("sign manifest: %w", err)
	}
	b, err := m.SigningBytes()
	if err != nil {
		return fmt.Errorf("sign manifest: %w", err)
	}
	m.Signature = ed25519.Sign(priv, b)
	return nil
}

// Verify checks the manifest's signature under pub. Every failure wraps
// ErrManifest.
func (m *Manifest) Verify(pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: not an Ed25519 public key", ErrManifest)
	}
	b, err := m.SigningBytes()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrManifest, err)
	}
	if len(m.Signature) != ed25519.SignatureSize || !ed25519.Verify(pub, b, m.Signature) {
		return fmt.Errorf("%w: bad signature", ErrManifest)
	}
	if err := m.checkStatement(nil); err != nil {
		return fmt.Errorf("%w: %v", ErrManifest, err)
	}
	return nil
}

// checkStatement checks, if the manifest has one, that the image statement
// verifies under its device certificate (chained to roots if given), that
// the certificate names the manifest's source, and that the statement
// states the manifest's image id, source serial, image size and SHA-256.
func (m *Manifest) checkStatement(roots *x509.CertPool) error {
	if m.ImageStatement == nil {
		return nil
	}
	st, cert, err := m.ImageStatement.Verify(hsmcore.ImageStatementOptions{ManufacturerRoots: roots})
	if err != nil {
		return err
	}
	if err := certNames(cert, m.Source.Identity); err != nil {
		return fmt.Errorf("image statement: %w", err)
	}
	switch {
	case hex.EncodeToString(st.ImageID[:]) != m.ImageID:
		return errors.New("image statement: image id differs")
	case st.Length != m.ImageSize:
		return fmt.Errorf("image statement: %d bytes, manifest says %d", st.Length, m.ImageSize)
	case hex.EncodeToString(st.SHA256[:]) != m.ImageSHA256:
		return errors.New("image statement: SHA-256 differs from the manifest's")
	}
	return nil
}

// CheckImageStatement checks the manifest's image statement as Verify
// does, and that its device certificate chains to the manufacturer roots
// (at the current time). A manifest without a statement passes.
func (m *Manifest) CheckImageStatement(roots *x509.CertPool) error {
	if err := m.checkStatement(roots); err != nil {
		return fmt.Errorf("%w: %v", ErrManifest, err)
	}
	return nil
}

// Marshal returns the manifest's encoding, as stored in manifest.json:
// encoding/json's encoding of the signed manifest, which ParseManifest
// parses back to the same bytes.
func (m *Manifest) Marshal() ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return b, nil
}

// ParseManifest parses a manifest.json. It is strict: at most
// MaxManifestSize bytes, no unknown members, every field in range, and the
// input must be exactly what Marshal would write for the result. It does
// not check the signature (see Verify). Every failure wraps ErrManifest.
func ParseManifest(b []byte) (*Manifest, error) {
	if len(b) > MaxManifestSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrManifest, len(b), MaxManifestSize)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	m := new(Manifest)
	if err := d.Decode(m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrManifest, err)
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the manifest", ErrManifest)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrManifest, err)
	}
	again, err := json.Marshal(m)
	if err != nil || !bytes.Equal(again, b) {
		return nil, fmt.Errorf("%w: not in canonical form", ErrManifest)
	}
	return m, nil
}

// validate checks every field but the signature's value.
func (m *Manifest) validate() error {
	switch {
	case m.Format != ManifestFormat:
		return fmt.Errorf("format %q, want %q", m.Format, ManifestFormat)
	case !validBackupID(m.ID):
		return fmt.Errorf("bad backup id %q", m.ID)
	}
	if err := validClusterID(m.ClusterID); err != nil {
		return err
	}
	if err := m.checkLocation(); err != nil {
		return err
	}
	if err := m.Source.validate(); err != nil {
		return err
	}
	switch {
	case !isHex(m.ImageID, 16):
		return errors.New("image id is not 16 bytes of lower-case hex")
	case !m.State.valid():
		return fmt.Errorf("unknown state %q", m.State)
	case m.Created.IsZero() || m.Created.Location() != time.UTC:
		return errors.New("created time is not set in UTC")
	case m.Created.Year() < 2000 || m.Created.Year() > 9999:
		return errors.New("created time out of range")
	case (m.State == StateReady) != m.DeletionRequested.IsZero():
		return errors.New("deletion time set in state READY, or missing in another state")
	case !m.DeletionRequested.IsZero() && (m.DeletionRequested.Location() != time.UTC || m.DeletionRequested.Before(m.Created)):
		return errors.New("deletion time not in UTC or before creation")
	case m.ImageSize < 0 || m.ObjectSize <= 0:
		return errors.New("negative or zero size")
	case !isHex(m.ObjectSHA256, 32):
		return errors.New("object hash is not 32 bytes of lower-case hex")
	case len(m.Recipients) == 0 || len(m.Recipients) > maxRecipients:
		return fmt.Errorf("%d recipients, want 1 to %d", len(m.Recipients), maxRecipients)
	case len(m.OuterHeader) == 0 || int64(len(m.OuterHeader)) > m.ObjectSize:
		return errors.New("outer header missing or longer than the object")
	case len(m.StateVersion) > 1024:
		return errors.New("state version names over 1024 members")
	case m.RetentionDays < 0 || m.RetentionDays > 36500:
		return fmt.Errorf("retention of %d days", m.RetentionDays)
	case m.NeverExpires && m.RetentionDays != 0:
		return errors.New("retention days given for a backup that never expires")
	case len(m.ClusterCertificate) > maxCertSize || len(m.CustomerCA) > maxCertSize:
		return errors.New("certificate too long")
	case (m.ImageSHA256 == "") != (m.ImageStatement == nil):
		return errors.New("image SHA-256 and image statement: one without the other")
	case m.ImageSHA256 != "" && !isHex(m.ImageSHA256, 32):
		return errors.New("image SHA-256 is not 32 bytes of lower-case hex")
	case m.ImageStatement != nil && (len(m.ImageStatement.Statement) == 0 || len(m.ImageStatement.Statement) > hsmcore.MaxImageStatementSize ||
		len(m.ImageStatement.Signature) == 0 || len(m.ImageStatement.Signature) > hsmcore.MaxImageSignatureSize ||
		len(m.ImageStatement.Certificate) == 0 || len(m.ImageStatement.Certificate) > hsmcore.MaxDeviceCertSize):
		return errors.New("image statement: a member missing or too long")
	case len(m.Signature) != ed25519.SignatureSize:
		return errors.New("missing or malformed signature")
	}
	for _, r := range m.Recipients {
		if r == "" || len(r) > 4096 || !utf8.ValidString(r) {
			return errors.New("bad recipient description")
		}
	}
	if err := ValidateTags(m.Tags); err != nil {
		return err
	}
	if m.Lock != nil {
		if err := m.Lock.validate(m.Created); err != nil {
			return err
		}
	}
	if m.Tags != nil && len(m.Tags) == 0 {
		return errors.New("empty tag map") // would not round-trip
	}
	if m.SourceBackupID != "" && !validBackupID(m.SourceBackupID) {
		return fmt.Errorf("bad source backup id %q", m.SourceBackupID)
	}
	if m.SourceClusterID != "" {
		if err := validClusterID(m.SourceClusterID); err != nil {
			return fmt.Errorf("source %w", err)
		}
	}
	if m.SourceObjectSHA256 != "" && (m.SourceBackupID == "" || !isHex(m.SourceObjectSHA256, 32)) {
		return errors.New("source object hash without a source backup, or not 32 bytes of lower-case hex")
	}
	if m.Inventory != nil {
		if err := m.Inventory.validate(); err != nil {
			return err
		}
	}
	return nil
}

func (s *Source) validate() error {
	for _, f := range []string{s.Serial, s.Class, s.Manufacturer, s.Operator, s.Firmware} {
		if f == "" || len(f) > 64 || !validName(f) {
			return fmt.Errorf("bad source identity field %q", f)
		}
	}
	if !isHex(s.PBKFingerprint, 32) {
		return errors.New("PBK fingerprint is not 32 bytes of lower-case hex")
	}
	return nil
}

// validName: the alphabet of hsmcore identity fields.
func validName(s string) bool {
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validClusterID: a cluster id names one storage path segment.
func validClusterID(id string) error {
	if id == "" || len(id) > 64 || !validName(id) || id == "." || id == ".." {
		return fmt.Errorf("bad cluster id %q", id)
	}
	return nil
}

func isHex(s string, n int) bool {
	if len(s) != 2*n {
		return false
	}
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// ValidateTags checks tags against AWS's limits: at most MaxTags; keys of 1
// to MaxTagKeyLen characters, values of 0 to MaxTagValueLen, both UTF-8 of
// letters, digits, white space and _.:/=+-@; keys not starting "aws:".
func ValidateTags(tags map[string]string) error {
	if len(tags) > MaxTags {
		return fmt.Errorf("%d tags, limit %d", len(tags), MaxTags)
	}
	for k, v := range tags {
		if n := utf8.RuneCountInString(k); n < 1 || n > MaxTagKeyLen || !validTagText(k) {
			return fmt.Errorf("bad tag key %q", k)
		}
		if strings.HasPrefix(strings.ToLower(k), "aws:") {
			return fmt.Errorf("tag key %q: the aws: prefix is reserved", k)
		}
		if n := utf8.RuneCountInString(v); n > MaxTagValueLen || !validTagText(v) {
			return fmt.Errorf("bad value for tag %q", k)
		}
	}
	return nil
}

func validTagText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsLetter(r) && !unicode.IsNumber(r) && !unicode.Is(unicode.Zs, r) && !strings.ContainsRune("_.:/=+-@", r) {
			return false
		}
	}
	return true
}

// backup ids: "backup-" || yyyymmddThhmmssZ || "-" || 10 of [a-z2-7].
const (
	idPrefix     = "backup-"
	idTimeLayout = "20060102T150405Z"
	idRandLen    = 10
	idLen        = len(idPrefix) + len(idTimeLayout) + 1 + idRandLen
	base32Lower  = "abcdefghijklmnopqrstuvwxyz234567"
)

func validBackupID(id string) bool {
	if len(id) != idLen || !strings.HasPrefix(id, idPrefix) {
		return false
	}
	ts := id[len(idPrefix) : len(idPrefix)+len(idTimeLayout)]
	t, err := time.Parse(idTimeLayout, ts)
	if err != nil || t.Format(idTimeLayout) != ts {
		return false
	}
	rest := id[len(idPrefix)+len(idTimeLayout):]
	if rest[0] != '-' {
		return false
	}
	for _, c := range []byte(rest[1:]) {
		if strings.IndexByte(base32Lower, c) < 0 {
			return false
		}
	}
	return store.ValidKey(id) == nil
}
