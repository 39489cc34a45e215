package main

import "github.com/urfave/cli/v2"

// schedulerCommand groups the commands of the scheduler: what it runs on
// the clusters' schedules, and each of those runs by hand.
func schedulerCommand() *cli.Command {
	return &cli.Command{
		Name:  "scheduler",
		Usage: "run the clusters' scheduled work: restore drills",
		Subcommands: []*cli.Command{
			drillCommand(),
		},
		OnUsageError: usageError,
		Action:       groupAction,
	}
}
