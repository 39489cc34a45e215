package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hsmbackup/hsmbackup/backup"
)

// backupSummary is a backup in --json listings.
type backupSummary struct {
	ID                string            `json:"backup_id"`
	ClusterID         string            `json:"cluster_id"`
	State             backup.State      `json:"state"`
	Created           time.Time         `json:"created"`
	DeletionRequested *time.Time        `json:"deletion_requested,omitempty"`
	Source            backup.Source     `json:"source"`
	ImageID           string            `json:"image_id"`
	ImageSize         int64             `json:"image_size"`
	ObjectSize        int64             `json:"object_size"`
	ObjectSHA256      string            `json:"object_sha256"`
	Recipients        []string          `json:"recipients"`
	NeverExpires      bool              `json:"never_expires"`
	RetentionDays     int               `json:"retention_days,omitempty"`
	ObjectLock        *backup.Lock      `json:"object_lock,omitempty"`
	Tags              map[string]string `json:"tags,omitempty"`
	SourceBackupID    string            `json:"source_backup_id,omitempty"`
	SourceClusterID   string            `json:"source_cluster_id,omitempty"`
}

func summarize(m *backup.Manifest) backupSummary {
	s := backupSummary{
		ID: m.ID, ClusterID: m.ClusterID, State: m.State, Created: m.Created, Source: m.Source,
		ImageID: m.ImageID, ImageSize: m.ImageSize, ObjectSize: m.ObjectSize, ObjectSHA256: m.ObjectSHA256,
		Recipients: m.Recipients, NeverExpires: m.NeverExpires, RetentionDays: m.RetentionDays, ObjectLock: m.Lock, Tags: m.Tags,
		SourceBackupID: m.SourceBackupID, SourceClusterID: m.SourceClusterID,
	}
	if !m.DeletionRequested.IsZero() {
		t := m.DeletionRequested
		s.DeletionRequested = &t
	}
	return s
}

func expiryText(m *backup.Manifest) string {
	switch {
	case m.State == backup.StatePendingDeletion:
		return "purged after " + m.DeletionRequested.Add(backup.PendingDeletionPeriod).Format(time.DateOnly)
	case m.State == backup.StateDeleted:
		return "-"
	case m.NeverExpires:
		return "never"
	case m.RetentionDays != 0:
		return strconv.Itoa(m.RetentionDays) + " days"
	}
	return "cluster policy"
}

func tagsText(tags map[string]string) string {
	if len(tags) == 0 {
		return "-"
	}
	var b []string
	for k, v := range tags {
		b = append(b, k+"="+v)
	}
	slices.Sort(b)
	return strings.Join(b, ",")
}

// sizeText prints a byte count in IEC units.
func sizeText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func fipsNote(fips bool) string {
	if fips {
		return " (FIPS mode)"
	}
	return ""
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// Under --json, stdout carries JSON lines: one object per line, each with
// a message_type (docs/CLI.md, "JSON output"):
//
//	result   what the command made, changed, found or checked: one per
//	         backup, key, prune action…
//	summary  the end of a listing (backup list, backup prune, masterkey
//	         list): counts, so that an empty listing still says so
//	invalid  a manifest that backup list skipped (backup.Invalid): its
//	         cluster_id, backup_id, key and reason
//	error    a failure, with code, exit_code and message (main's report)
//
// A field names one concept across commands: backup_id, cluster_id…
const (
	msgResult  = "result"
	msgSummary = "summary"
	msgInvalid = "invalid"
)

// writeJSON writes v, which encodes as a JSON object, as a result line.
func writeJSON(w io.Writer, v any) error { return writeJSONLine(w, msgResult, v) }

// writeJSONList writes each of vs as a result line, then summary as the
// summary line.
func writeJSONList[T any](w io.Writer, vs []T, summary any) error {
	for _, v := range vs {
		if err := writeJSON(w, v); err != nil {
			return err
		}
	}
	return writeJSONLine(w, msgSummary, summary)
}

// writeJSONLine writes v, which encodes as a JSON object, on one line
// with message_type typ first.
func writeJSONLine(w io.Writer, typ string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) < 2 || b[0] != '{' {
		return fmt.Errorf("JSON output: %T is not an object", v) // a bug
	}
	sep := ","
	if string(b) == "{}" {
		sep = ""
	}
	_, err = fmt.Fprintf(w, "{\"message_type\":%q%s%s\n", typ, sep, b[1:])
	return err
}

// countSummary is the summary line of a listing.
type countSummary struct {
	Count int `json:"count"`
}

// plural is "1 key", "2 keys".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
