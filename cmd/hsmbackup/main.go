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
	"syscall"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore"
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
	{exitUsage, "usage", "usage error: an unknown command or flag, a missing, extra or conflicting argument or setting", []error{errUsage}},
	{exitAuth, "auth_failed", "authentication failed: an HSM refused the login, or the store the credentials", []error{hsmcore.ErrAuth, store.ErrAccessDenied}},
	{exitStore, "store_unavailable", "the store does not exist (no such directory or bucket) or cannot be reached", []error{store.ErrNoStore, store.ErrTransient}},
	{exitVerify, "verification_failed", "a backup failed a check: manifest signature, object hash, outer layer, inner header, or the image itself",
		[]error{backup.ErrManifest, backup.ErrObjectHash, backup.ErrOuterLayer, backup.ErrInnerHeader, hsmcore.ErrTampered, hsmcore.ErrTruncated, hsmcore.ErrTrailingData}},
	{exitRefused, "refused", "refused: an HSM failed attestation or does not fit the backup (hardware, firmware, FIPS mode), a target is not new, or the backup's state does not allow it",
		[]error{hsmcore.ErrAttestation, hsmcore.ErrHardwareMismatch, hsmcore.ErrFirmwareDowngrade, hsmcore.ErrFIPSMode, restore.ErrNotNew, backup.ErrState}},
	{exitInterrupted, "interrupted", "interrupted (SIGINT or SIGTERM); a backup interrupted before its manifest is written does not exist", []error{context.Canceled}},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newApp(os.Stdout, os.Stderr).RunContext(ctx, os.Args)
	interrupted := ctx.Err() != nil
	stop()
	var jsonOut io.Writer
	if jsonRequested(os.Args[1:]) {
		jsonOut = os.Stdout
	}
	os.Exit(report(os.Stderr, jsonOut, err, interrupted))
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
