package integration

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/hsmbackup/hsmbackup/internal/miniotest"
)

// minioDown is how long TestMinIORestarted keeps MinIO down: well within
// the streamed upload's persistence (store/s3 DefaultPersist, 30 s).
const minioDown = 5 * time.Second

// TestMinIORestarted: MinIO killed (SIGKILL) halfway through a backup's
// image upload, and halfway through a restore's download, and started
// again 5 s later. The backup rides the outage out and passes verify
// --deep, with no upload left behind; the restore's download resumes
// where it stopped, and the target ends in the backup's state. (Had it
// failed, the target would have to be as it was.)
func TestMinIORestarted(t *testing.T) {
	t.Parallel()
	const keys = 12000 // an image of about 6 MB: two parts
	c := newCluster(t, "--capacity", "12100")
	fillKeys(t, c, keys)
	srv := miniotest.Start(t) // its own: it is killed
	bucket := srv.NewBucket(t, miniotest.BucketOptions{})
	px := newTCPFaultProxy(t, srv.Endpoint)
	s := s3Service(t, c, srv, bucket, "http://"+px.addr)

	// outage arms the proxy to kill MinIO once half of about n bytes
	// have crossed it, and to start it again minioDown later; restarted
	// is closed then.
	outage := func(n int64) (restarted chan struct{}) {
		restarted = make(chan struct{})
		px.arm(tcpFault{kind: "call", at: n / 2, call: func() {
			srv.Kill()
			time.Sleep(minioDown)
			srv.Restart(t)
			close(restarted)
		}})
		return restarted
	}
	var outages, backupsOK, partial, restoresOK, refused, unverified int

	ready := []string{s.create(t)}
	imageBytes := px.moved.Load() // the first backup's, through the proxy: about the image's size

	restarted := outage(imageBytes)
	res := s.cliRes(t, "backup", "create", "--cluster", testCluster)
	if !px.disarm() {
		t.Fatal("the backup ended before MinIO was killed")
	}
	<-restarted
	outages++
	if m := createdLine.FindStringSubmatch(res.Stdout); res.Code != 0 || m == nil {
		t.Errorf("backup create through a %v outage of MinIO: %s", minioDown, res)
	} else if v := s.cliRes(t, "backup", "verify", "--deep", m[1]); v.Code != 0 {
		partial++
		t.Errorf("the backup made through the outage does not verify: %s", v)
	} else {
		backupsOK++
		ready = append(ready, m[1])
	}
	partial += s.leftovers(t, "the backup through the outage", srv, bucket, ready, map[string]bool{})

	// The restore: into a new HSM, MinIO killed halfway through the
	// image's download.
	op := filepath.Join(c.dir, "op")
	target := c.newHSM(t, "restart-target", op, testFirmware)
	before := c.health(t, target)
	id := ready[len(ready)-1]
	restarted = outage(imageBytes)
	res = s.cliRes(t, c.restoreArgs(id, target)...)
	if !px.disarm() {
		t.Fatal("the restore ended before MinIO was killed")
	}
	<-restarted
	outages++
	after := c.health(t, target)
	switch {
	case res.Code == 0 && after.Initialized && after.StateDigest != before.StateDigest && after.KeyCount == c.health(t, c.addr).KeyCount:
		restoresOK++
	case res.Code == 0:
		unverified++
		t.Errorf("restore through the outage: exit 0, the target holds %+v", after)
	case after.StateDigest != before.StateDigest || after.Initialized != before.Initialized:
		unverified++
		t.Errorf("restore through the outage refused (%s) but changed the target: %+v, was %+v", lastLine(res.Stderr), after, before)
	default:
		refused++
		t.Errorf("the restore through a %v outage of MinIO refused, the target unchanged: %s", minioDown, res)
	}
	t.Logf("RELIABILITY minio-restarted: %d outages of %v (MinIO SIGKILLed mid-upload, mid-download); backups attempted 1, succeeded and verified %d, left partial %d; restores attempted 1, restored %d, refused %d, imported anything unverified %d",
		outages, minioDown, backupsOK, partial, restoresOK, refused, unverified)
}
