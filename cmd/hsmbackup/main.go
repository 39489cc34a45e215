// Command hsmbackup backs up, verifies and restores HSM clusters.
//
// Run "hsmbackup demo" for a narrated tour that needs no set-up.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	_ "time/tzdata" // CRON_TZ zones also where the system has no zoneinfo (a scratch container)

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
	"github.com/hsmbackup/hsmbackup/restore"
	"github.com/hsmbackup/hsmbackup/store"
)

// Exit codes.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitStore       = 3
	exitVerify      = 4
	exitRefused     = 5
	exitAuth        = 6
	exitInterrupted = 130 // 128 + SIGINT, as shells report it
)

// exitStatus is one row of exitCodes.
type exitStatus struct {
	code    int
	name    string  // the "code" of a --json error line
	meaning string  // for --help, the man page and docs/CLI.md
	is      []error // the sentinels that choose it (errors.Is)
}

// exitCodes is the one table of exit codes. report gives an error the
// first row one of whose sentinels it wraps (an interruption always
// 130), else exitFailure; --help, the man page's EXIT STATUS and
// docs/CLI.md list it.
var exitCodes = []exitStatus{
	{exitOK, "ok", "success", nil},
	{exitFailure, "failure", "a failure not listed below", nil},
	{exitUsage, "usage", "usage error: an unknown command or flag, a missing, extra or conflicting argument or setting, a fault in the config file, an ambiguous backup id", []error{errUsage, backup.ErrAmbiguous}},
	{exitAuth, "auth_failed", "authentication failed: an HSM refused the login, or the store the credentials", []error{hsmcore.ErrAuth, store.ErrAccessDenied}},
	{exitStore, "store_unavailable", "the store does not exist (no such directory or bucket) or cannot be reached", []error{store.ErrNoStore, store.ErrTransient}},
	{exitVerify, "verification_failed", "a backup failed a check: manifest signature, object hash, outer layer, inner header, or the image itself, or a restore drill found the restored HSM unlike the manifest's inventory",
		[]error{backup.ErrManifest, backup.ErrObjectHash, backup.ErrOuterLayer, backup.ErrInnerHeader, hsmcore.ErrTampered, hsmcore.ErrTruncated, hsmcore.ErrTrailingData, restore.ErrInventoryMismatch}},
	{exitRefused, "refused", "refused: an HSM failed attestation or does not fit the backup (hardware, firmware, FIPS mode), a target is not new or holds what the backup lacks (--force), the members of a cluster hold different states (--member), or the backup's state does not allow it",
		[]error{hsmcore.ErrAttestation, hsmcore.ErrHardwareMismatch, hsmcore.ErrFirmwareDowngrade, hsmcore.ErrFIPSMode, restore.ErrNotNew, restore.ErrWouldLose, cluster.ErrDiverged, backup.ErrState}},
	{exitInterrupted, "interrupted", "interrupted (SIGINT or SIGTERM); a backup interrupted before its manifest is written does not exist", []error{context.Canceled}},
}

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	var interrupted atomic.Bool
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go onInterrupt(sigs, os.Stderr, func() { interrupted.Store(true); cancel() }, func(code int) { os.Exit(code) })
	err := newApp(os.Stdout, os.Stderr).RunContext(ctx, os.Args)
	signal.Stop(sigs)
	var jsonOut io.Writer
	if jsonRequested(os.Args[1:]) {
		jsonOut = os.Stdout
	}
	os.Exit(report(os.Stderr, jsonOut, err, interrupted.Load()))
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

// jsonRequested reports whether --json is among the arguments, before
// "--": a failure is then also reported as a JSON line on stdout, even
// one in parsing the command line.
func jsonRequested(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "--json", "-json", "--json=true", "-json=true":
			return true
		}
	}
	return false
}

// exitStatusOf returns the row of exitCodes of err: an interruption first
// (a cancelled call may also wrap the sentinel of what it interrupted),
// then the first row one of whose sentinels err wraps.
func exitStatusOf(err error, interrupted bool) exitStatus {
	row := func(code int) exitStatus {
		i := slices.IndexFunc(exitCodes, func(s exitStatus) bool { return s.code == code })
		return exitCodes[i]
	}
	switch {
	case err == nil:
		return row(exitOK)
	case interrupted || errors.Is(err, context.Canceled):
		return row(exitInterrupted)
	}
	for _, s := range exitCodes {
		if slices.ContainsFunc(s.is, func(target error) bool { return errors.Is(err, target) }) {
			return s
		}
	}
	return row(exitFailure)
}

// errorLine is the --json line of a failure.
type errorLine struct {
	MessageType string `json:"message_type"` // "error"
	Code        string `json:"code"`
	ExitCode    int    `json:"exit_code"`
	Message     string `json:"message"`
}

// report prints err, if any, as one line on w and returns the exit code;
// with jsonOut it also writes the failure there as a JSON line. A failure
// while a termination signal was pending counts as an interruption.
func report(w, jsonOut io.Writer, err error, interrupted bool) int {
	if err == nil {
		return exitOK
	}
	s := exitStatusOf(err, interrupted)
	var multi interface{ Lines() []string }
	if errors.As(err, &multi) && s.code != exitInterrupted {
		// A list of faults (a config file's): the first line as any error,
		// then one fault a line.
		lines := strings.Split(err.Error(), "\n")
		fmt.Fprintf(w, "hsmbackup: %s\n", lines[0])
		for _, l := range lines[1:] {
			fmt.Fprintf(w, "  %s\n", l)
		}
		if jsonOut != nil {
			b, _ := json.Marshal(errorLine{MessageType: "error", Code: s.name, ExitCode: s.code, Message: strings.Join(lines, "; ")})
			fmt.Fprintf(jsonOut, "%s\n", b)
		}
		return s.code
	}
	msg := strings.Join(strings.Fields(err.Error()), " ") // one line, whatever the error holds
	if s.code == exitInterrupted {
		fmt.Fprintf(w, "hsmbackup: interrupted: %s\n", msg)
	} else {
		fmt.Fprintf(w, "hsmbackup: %s\n", msg)
	}
	if jsonOut != nil {
		b, _ := json.Marshal(errorLine{MessageType: "error", Code: s.name, ExitCode: s.code, Message: msg})
		fmt.Fprintf(jsonOut, "%s\n", b)
	}
	return s.code
}

// exitCodesByCode is exitCodes in the order of their codes, to list them.
func exitCodesByCode() []exitStatus {
	t := slices.Clone(exitCodes)
	slices.SortFunc(t, func(a, b exitStatus) int { return a.code - b.code })
	return t
}

// exitStatusText lists the exit codes, for --help.
func exitStatusText() string {
	var b strings.Builder
	for _, s := range exitCodesByCode() {
		fmt.Fprintf(&b, "  %3d  %s\n", s.code, s.meaning)
	}
	return b.String()
}
