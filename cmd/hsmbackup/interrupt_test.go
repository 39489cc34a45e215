package main

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestOnInterrupt: the first signal is announced at once and cancels the
// run; a second one exits 130 at once, without waiting for the cleanup.
func TestOnInterrupt(t *testing.T) {
	// Commands run in-process by other tests (the demo) may have said they
	// stop themselves; this one does not.
	own, w := stopsItself.Load(), notices.Load()
	stopsItself.Store(false)
	notices.Store(nil)
	t.Cleanup(func() { stopsItself.Store(own); notices.Store(w) })
	sigs := make(chan os.Signal, 2)
	var out lockedBuffer
	cancelled := make(chan struct{})
	exited := make(chan int, 1)
	go onInterrupt(sigs, &out, func() { close(cancelled) }, func(code int) { exited <- code })
	sigs <- syscall.SIGINT
	select {
	case <-cancelled:
	case <-time.After(time.Second):
		t.Fatal("the first signal did not cancel the run")
	}
	if got := out.String(); got != "hsmbackup: interrupted: cleaning up (interrupt again to quit at once)\n" {
		t.Errorf("after the first signal: %q", got)
	}
	select {
	case code := <-exited:
		t.Fatalf("exited %d after one signal, before the cleanup bound", code)
	case <-time.After(50 * time.Millisecond):
	}
	sigs <- syscall.SIGTERM
	select {
	case code := <-exited:
		if code != exitInterrupted {
			t.Errorf("exit code %d, want %d", code, exitInterrupted)
		}
	case <-time.After(time.Second):
		t.Fatal("a second signal did not exit")
	}
	if !strings.HasSuffix(out.String(), "hsmbackup: interrupted again: quitting without cleaning up\n") {
		t.Errorf("after the second signal: %q", out.String())
	}
}
