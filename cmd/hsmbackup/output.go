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
	Tags              map[string]string `json:"tags,omitempty"`
	SourceBackupID    string            `json:"source_backup_id,omitempty"`
	SourceClusterID   string            `json:"source_cluster_id,omitempty"`
}

func summarize(m *backup.Manifest) backupSummary {
	s := backupSummary{
		ID: m.ID, ClusterID: m.ClusterID, State: m.State, Created: m.Created, Source: m.Source,
		ImageID: m.ImageID, ImageSize: m.ImageSize, ObjectSize: m.ObjectSize, ObjectSHA256: m.ObjectSHA256,
		Recipients: m.Recipients, NeverExpires: m.NeverExpires, RetentionDays: m.RetentionDays, Tags: m.Tags,
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

// writeJSON writes v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
