package device

// FailAuditWrites makes d's next n audit appends fail as on a full disk:
// each writes the first half of its line, then fails with ENOSPC.
func FailAuditWrites(d *Device, n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.alog.failNext = n
}
