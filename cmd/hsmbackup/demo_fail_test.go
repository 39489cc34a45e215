package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// Tests of the demo's failures: a cancelled context, at the start or as
// each step starts, a failing writer, a bad store. Each must clean up.

func TestRunDemoCancelled(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out bytes.Buffer
	err := runDemo(ctx, &out, demoOptions{Dir: dir, PasswordIterations: cheapPasswords})
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "set up workspace: ") {
		t.Fatalf("runDemo with a cancelled context: %v; want the first step's name and context.Canceled", err)
	}
	assertEmptyDir(t, dir)
}

// cancelWriter cancels a context once the output shows a given line.
type cancelWriter struct {
	buf    bytes.Buffer
	at     string
	cancel context.CancelFunc
}

func (w *cancelWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.at) {
		w.cancel()
	}
	return len(p), nil
}

// TestRunDemoCancelledMidway cancels the demo as each step starts: the
// step fails with the context's error, and the demo stops every HSM it
// served and removes its workspace.
func TestRunDemoCancelledMidway(t *testing.T) {
	for i, s := range demoSteps {
		t.Run(s.name, func(t *testing.T) {
			dir := t.TempDir()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			w := &cancelWriter{at: fmt.Sprintf("[%d/%d]", i+1, len(demoSteps)), cancel: cancel}
			err := runDemo(ctx, w, demoOptions{Dir: dir, PasswordIterations: cheapPasswords})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("runDemo cancelled at step %d: %v, want context.Canceled\noutput:\n%s", i+1, err, w.buf.String())
			}
			if !strings.HasPrefix(err.Error(), s.name+": ") && !strings.HasPrefix(err.Error(), demoSteps[min(i+1, len(demoSteps)-1)].name+": ") {
				t.Errorf("error %q names neither step %d nor the next", err, i+1)
			}
			if strings.Contains(w.buf.String(), "demo complete") {
				t.Error("a cancelled demo reported completion")
			}
			assertEmptyDir(t, dir)
			assertHSMsStopped(t, w.buf.String(), 0)
		})
	}
}

// failingWriter fails every write.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestRunDemoWriteError(t *testing.T) {
	dir := t.TempDir()
	err := runDemo(context.Background(), failingWriter{}, demoOptions{Dir: dir, PasswordIterations: cheapPasswords})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("runDemo into a failing writer: %v; want the write error", err)
	}
	assertEmptyDir(t, dir)
}

// TestRunDemoBadStore fails in the first step, and cleans up.
func TestRunDemoBadStore(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	err := runDemo(context.Background(), &out, demoOptions{Dir: dir, PasswordIterations: cheapPasswords, Store: "ftp://example.com/backups"})
	if err == nil || !strings.HasPrefix(err.Error(), "set up workspace: ") || !strings.Contains(err.Error(), `unknown scheme "ftp"`) {
		t.Fatalf("runDemo with an ftp store: %v; want the first step's name and the URL's fault", err)
	}
	assertEmptyDir(t, dir)
}
