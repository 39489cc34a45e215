// Command hsmbackup backs up, verifies and restores HSM clusters.
//
// Run "hsmbackup demo" for a narrated tour that needs no set-up.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Exit codes.
const (
	exitOK          = 0
	exitFailure     = 1
	exitInterrupted = 130 // 128 + SIGINT, as shells report it
)

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	var interrupted atomic.Bool
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go onInterrupt(sigs, os.Stderr, func() { interrupted.Store(true); cancel() }, func(code int) { os.Exit(code) })
	err := newApp(os.Stdout, os.Stderr).RunContext(ctx, os.Args)
	signal.Stop(sigs)
	os.Exit(report(os.Stderr, err, interrupted.Load()))
}

// cleanupBound is how long a command may take to clean up after the first
// SIGINT or SIGTERM (delete the image object it wrote, abort a multipart
// upload: each under a shorter deadline of its own) before the process
// quits anyway.
const cleanupBound = 10 * time.Second

// stopsItself is set by the commands that handle an interruption their
// own way: `hsm serve`, which stops gracefully (calls in flight finish, up
// to 10 s) and logs it, and the demo, which narrates. For them
// onInterrupt prints nothing and sets no bound.
var stopsItself atomic.Bool

// notices, once a command has set up its output (newOutput), is where
// onInterrupt writes: stderr, above the progress bars while they are
// drawn, so that their redraw does not erase the notice.
var notices atomic.Pointer[struct{ w io.Writer }]

// onInterrupt handles termination signals: at the first it says so on
// stderr at once and cancels the run (interrupt), which cleans up and
// returns; if the run has not returned within cleanupBound, or at a
// second signal, it exits with exitInterrupted at once.
func onInterrupt(sigs <-chan os.Signal, stderr io.Writer, interrupt func(), exit func(int)) {
	if _, ok := <-sigs; !ok {
		return
	}
	own := stopsItself.Load()
	if w := notices.Load(); w != nil {
		stderr = w.w // above the progress bars, if any
	}
	if !own {
		fmt.Fprintln(stderr, "hsmbackup: interrupted: cleaning up (interrupt again to quit at once)")
	}
	interrupt()
	var bound <-chan time.Time
	if !own {
		bound = time.After(cleanupBound)
	}
	select {
	case _, ok := <-sigs:
		if !ok {
			return
		}
		fmt.Fprintln(stderr, "hsmbackup: interrupted again: quitting without cleaning up")
	case <-bound:
		fmt.Fprintf(stderr, "hsmbackup: interrupted: cleanup did not finish within %s: quitting\n", cleanupBound)
	}
	exit(exitInterrupted)
}

// report prints err, if any, as one line on w and returns the exit code.
// A failure while a termination signal was pending counts as an
// interruption.
func report(w io.Writer, err error, interrupted bool) int {
	if err == nil {
		return exitOK
	}
	var multi interface{ Lines() []string }
	if errors.As(err, &multi) && !interrupted {
		// A list of faults (a config file's): the first line as any error,
		// then one fault a line.
		lines := strings.Split(err.Error(), "\n")
		fmt.Fprintf(w, "hsmbackup: %s\n", lines[0])
		for _, l := range lines[1:] {
			fmt.Fprintf(w, "  %s\n", l)
		}
		return exitFailure
	}
	msg := strings.Join(strings.Fields(err.Error()), " ") // one line, whatever the error holds
	if interrupted || errors.Is(err, context.Canceled) {
		fmt.Fprintf(w, "hsmbackup: interrupted: %s\n", msg)
		return exitInterrupted
	}
	fmt.Fprintf(w, "hsmbackup: %s\n", msg)
	return exitFailure
}
