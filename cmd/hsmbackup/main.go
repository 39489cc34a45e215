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
	"syscall"
)

// Exit codes.
const (
	exitOK          = 0
	exitFailure     = 1
	exitInterrupted = 130 // 128 + SIGINT, as shells report it
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newApp(os.Stdout, os.Stderr).RunContext(ctx, os.Args)
	interrupted := ctx.Err() != nil
	stop()
	os.Exit(report(os.Stderr, err, interrupted))
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
