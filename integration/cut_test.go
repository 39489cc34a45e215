package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// cutTrials is how many backups TestCutExport tries per kind of cut.
const cutTrials = 20

// TestCutExport: an export cut at a random point, by a connection closed
// cleanly or reset between `backup create` and the daemon, or by SIGTERM or
// SIGKILL of the daemon, never leaves a READY backup of a truncated image.
// Each trial either fails (exit code not 0, nothing listed, no object left)
// or gives a backup that passes verify --deep and holds the whole image.
// SIGTERM lets the export in flight finish (the documented drain), so
// those backups succeed.
func TestCutExport(t *testing.T) {
	t.Parallel()
	const keys = 6000 // an image of ~3 MB
	c := newCluster(t, "--capacity", fmt.Sprint(keys+100))
	fillKeys(t, c, keys)
	storeDir := t.TempDir()
	s := newService(t, c, "file://"+storeDir)
	px := newCutProxy(t, c.addr)
	s.config = s.writeConfig(t, "proxied.yaml", s.store, px.addr)

	// A backup through the proxy, uncut: the whole image's size, and how
	// many bytes the daemon sends for it.
	px.arm(-1, nil)
	ref := s.create(t)
	sent := px.sent.Load()
	refSize := s.manifest(t, ref).ImageSize
	t.Logf("whole image: %d bytes; %d bytes sent from the daemon", refSize, sent)
	ready := []string{ref}

	kinds := []struct {
		name string
		cut  cutFunc
	}{
		{"close", func(cl, sv *net.TCPConn) bool { cl.Close(); sv.Close(); return true }},
		{"reset", func(cl, sv *net.TCPConn) bool { cl.SetLinger(0); cl.Close(); sv.Close(); return true }},
		{"SIGTERM", func(*net.TCPConn, *net.TCPConn) bool {
			lookup(t, c.addr).cmd.Process.Signal(syscall.SIGTERM)
			return false
		}},
		{"SIGKILL", func(*net.TCPConn, *net.TCPConn) bool {
			lookup(t, c.addr).cmd.Process.Signal(syscall.SIGKILL)
			return false
		}},
	}
	start := time.Now()
	var summary []string
	for _, k := range kinds {
		var failed, whole int
		for range cutTrials {
			at := 64<<10 + rand.Int64N(sent-64<<10)
			if k.name == "SIGTERM" {
				// Within the export, the last refSize or so bytes the
				// daemon sends: the drain lets exports in flight finish,
				// while a stopping daemon refuses new calls (the key
				// listing and health calls before the export are daemon
				// traffic too).
				at = sent - (64<<10 + rand.Int64N(refSize*9/10-64<<10))
			}
			px.arm(at, k.cut)
			res := s.cliRes(t, "backup", "create", "--cluster", testCluster)
			cut := px.fired.Load()
			if k.name == "SIGTERM" || k.name == "SIGKILL" {
				d := lookup(t, c.addr)
				if cut {
					<-d.done
					if k.name == "SIGTERM" && d.code != 0 {
						t.Errorf("SIGTERM: daemon exit %d, want 0 after its drain", d.code)
					}
					RestartDaemon(t, c.addr)
				}
			}
			if res.Code == 0 {
				id := createdLine.FindStringSubmatch(res.Stdout)
				if id == nil {
					t.Fatalf("%s at byte %d: exit 0 without a created line: %s", k.name, at, res)
				}
				m := s.manifest(t, id[1])
				if m.ImageSize != refSize {
					t.Errorf("%s at byte %d: READY backup %s of %d bytes, the image has %d", k.name, at, id[1], m.ImageSize, refSize)
				}
				s.cli(t, "backup", "verify", "--deep", "--cluster", testCluster, id[1])
				ready = append(ready, id[1])
				whole++
			} else {
				if failed == 0 {
					t.Logf("%s at byte %d: exit %d: %s", k.name, at, res.Code, lastLine(res.Stderr))
				}
				failed++
			}
			if !cut {
				t.Logf("%s at byte %d: the export ended before the cut", k.name, at)
			}
			s.wantOnly(t, storeDir, ready)
		}
		t.Logf("%s: %d trials, %d failed with nothing listed, %d whole backups (verify --deep passed)", k.name, cutTrials, failed, whole)
		summary = append(summary, fmt.Sprintf("%s %d/%d/%d", k.name, cutTrials, whole, failed))
		switch k.name {
		case "SIGTERM":
			if whole != cutTrials {
				t.Errorf("SIGTERM: %d of %d exports in flight finished; the drain should let all finish", whole, cutTrials)
			}
		case "SIGKILL", "close", "reset":
			if failed == 0 {
				t.Errorf("%s: no trial failed: the cut did not reach the export", k.name)
			}
		}
	}
	t.Logf("%d trials in %v", len(kinds)*cutTrials, time.Since(start).Round(time.Millisecond))
	t.Logf("RELIABILITY cut-export: exports cut at a random byte, by kind attempted/succeeded and verified/failed with nothing left: %s; READY backups of a cut image 0 (each trial checks); daemons SIGKILLed mid-export restarted and served the next trial",
		strings.Join(summary, ", "))
}

// manifestSizes is the part of a manifest TestCutExport reads.
type manifestSizes struct {
	ImageSize   int64  `json:"image_size"`
	ImageSHA256 string `json:"image_sha256"`
}

func (s *service) manifest(t *testing.T, id string) manifestSizes {
	t.Helper()
	b, err := os.ReadFile(s.object(id, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m manifestSizes
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("manifest of %s: %v", id, err)
	}
	if m.ImageSHA256 == "" {
		t.Errorf("manifest of %s records no image_sha256", id)
	}
	return m
}

// wantOnly checks that backup list shows exactly the backups ids, and that
// the store holds no object of any other.
func (s *service) wantOnly(t *testing.T, storeDir string, ids []string) {
	t.Helper()
	var listed []string
	for _, b := range s.list(t) {
		listed = append(listed, b.ID)
	}
	slices.Sort(listed)
	want := slices.Sorted(slices.Values(ids))
	if !slices.Equal(listed, want) {
		t.Fatalf("backup list shows %v, want %v", listed, want)
	}
	dirs, _ := filepath.Glob(filepath.Join(storeDir, "clusters", testCluster, "backups", "*"))
	for _, d := range dirs {
		if !slices.Contains(ids, filepath.Base(d)) {
			left, _ := os.ReadDir(d)
			if len(left) > 0 {
				t.Fatalf("objects of a failed backup left in the store: %s holds %d", d, len(left))
			}
		}
	}
}

// cutFunc cuts an export: it reports whether it closed the connections
// (else the daemon decides what it still sends, as after a signal).
type cutFunc func(client, server *net.TCPConn) bool

// cutProxy forwards loopback TCP connections to a daemon and, once armed,
// calls cut when the daemon has sent a given number of bytes over all
// connections since arming, once.
type cutProxy struct {
	addr   string
	target string
	sent   atomic.Int64 // bytes from the daemon since arm
	fired  atomic.Bool

	mu  sync.Mutex
	at  int64 // -1: never
	cut cutFunc
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{addr: ln.Addr().String(), target: target, at: -1}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			cl, err := ln.Accept()
			if err != nil {
				return
			}
			go p.forward(cl.(*net.TCPConn))
		}
	}()
	return p
}

func (p *cutProxy) arm(at int64, cut cutFunc) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent.Store(0)
	p.fired.Store(false)
	p.at, p.cut = at, cut
}

func (p *cutProxy) forward(cl *net.TCPConn) {
	defer cl.Close()
	c, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	sv := c.(*net.TCPConn)
	defer sv.Close()
	go func() {
		io.Copy(sv, cl)
		sv.CloseWrite()
	}()
	buf := make([]byte, 16<<10)
	for {
		n, err := sv.Read(buf)
		out := buf[:n]
		if n > 0 {
			total := p.sent.Add(int64(n))
			p.mu.Lock()
			at, cut := p.at, p.cut
			p.mu.Unlock()
			if at >= 0 && total >= at && p.fired.CompareAndSwap(false, true) {
				// Forward only what comes before the point, then cut.
				keep := max(0, n-int(total-at))
				cl.Write(buf[:keep])
				if cut(cl, sv) {
					return
				}
				out = out[keep:]
			}
			if _, werr := cl.Write(out); werr != nil {
				return
			}
		}
		if err != nil {
			cl.CloseWrite()
			return
		}
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
