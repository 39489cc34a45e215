package main

import "github.com/urfave/cli/v2"

// schedulerCommand groups the commands of the scheduler: the daemon, what
// it reports, and each of its runs by hand.
func schedulerCommand() *cli.Command {
	return &cli.Command{
		Name:  "scheduler",
		Usage: "run, check and report the scheduled backups and restore drills of a fleet (docs/SCHEDULER.md)",
		Subcommands: []*cli.Command{
			schedulerRunCommand(),
			schedulerStatusCommand(),
			schedulerCheckCommand(),
			drillCommand(),
		},
		Action:       groupAction,
		OnUsageError: usageError,
	}
}
