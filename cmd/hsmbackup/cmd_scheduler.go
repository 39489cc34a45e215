package main

import "github.com/urfave/cli/v2"

func schedulerCommand() *cli.Command {
	return &cli.Command{
		Name:  "scheduler",
		Usage: "run, check and report the scheduled backups and restore drills of a fleet (docs/SCHEDULER.md)",
		Subcommands: []*cli.Command{
			schedulerRunCommand(),
			schedulerStatusCommand(),
			schedulerCheckCommand(),
		},
		Action:       groupAction,
		OnUsageError: usageError,
	}
}
