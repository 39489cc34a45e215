package main

import (
	"github.com/hsmbackup/hsmbackup/backup"

	"github.com/urfave/cli/v2"
)

func backupCommand() *cli.Command {
	clusterFlag := func(usage string) cli.Flag { return &cli.StringFlag{Name: "cluster", Usage: usage} }
	// sub is a subcommand; fn gets its positional arguments, with the
	// flags among and after them applied.
	sub := func(name, usage, args string, flags []cli.Flag, fn func(e *env, c *cli.Context, args []string) error) *cli.Command {
		return &cli.Command{
			Name: name, Usage: usage, ArgsUsage: args,
			Flags:        append(flags, serviceFlags()...),
			OnUsageError: usageError,
			Action: action("backup "+name, func(c *cli.Context) error {
				args, help, err := flagsAfterArgs(c)
				if err != nil || help {
					return err
				}
				e, err := newStoreEnv(c)
				if err != nil {
					return err
				}
				defer e.close()
				return fn(e, c, args)
			}),
		}
	}
	// argless adapts the function of a subcommand that takes no
	// arguments: it refuses them itself.
	argless := func(fn func(*env, *cli.Context) error) func(*env, *cli.Context, []string) error {
		return func(e *env, c *cli.Context, _ []string) error { return fn(e, c) }
	}
	byID := func(name, usage string, flags []cli.Flag, fn func(e *env, c *cli.Context, cluster, id string) error) *cli.Command {
		flags = append(flags, clusterFlag("`ID` of the backup's cluster (default: found in the store)"))
		return sub(name, usage, "BACKUP-ID", flags, func(e *env, c *cli.Context, args []string) error {
			id, err := oneArg(c, args, "BACKUP-ID")
			if err != nil {
				return err
			}
			if c.Bool("deep") && c.Bool("offline") { // verify's; a usage error comes before any lookup
				return usagef("--deep needs a master key, --offline uses none: choose one")
			}
			cluster, id, err := e.resolve(id)
			if err != nil {
				return err
			}
			return fn(e, c, cluster, id)
		})
	}
	orphanGraceFlag := func() cli.Flag {
		return &cli.DurationFlag{Name: "orphan-grace", Value: backup.DefaultOrphanGrace,
			Usage: "stray objects younger than `DURATION` may be a backup being written: prune leaves them (0: none is)"}
	}
	return &cli.Command{
		Name:  "backup",
		Usage: "take, list, verify, copy and expire backups",
		Description: "A backup is a cluster member's image, encrypted by the HSM under a\n" +
			"hardware-bound key, wrapped again under the master keyring, stored with a\n" +
			"signed manifest. States as CloudHSM: READY, PENDING_DELETION (deleted, still\n" +
			"restorable for 7 days), DELETED.",
		Action:       groupAction,
		OnUsageError: usageError,
		Subcommands: []*cli.Command{
			initCommand(),
			sub("create", "back up a configured cluster from one healthy, in-sync member", "", []cli.Flag{
				clusterFlag("`ID` of the cluster in --config (required)"),
				&cli.StringFlag{Name: "member", Usage: "back up the member at `ADDR` (one of the cluster's members), even if the members' states differ"},
				&cli.StringSliceFlag{Name: "tag", Usage: "`KEY=VALUE` tag (repeatable)"},
				&cli.BoolFlag{Name: "never-expires", Usage: "pin the backup: retention never removes it"},
				&cli.IntFlag{Name: "retention-days", Usage: "retention of this backup in `DAYS` (7-379), instead of the cluster's"},
				&cli.StringFlag{Name: "lock-mode", Usage: "store the backup under S3 Object Lock in `MODE` GOVERNANCE or COMPLIANCE, instead of the cluster's object_lock mode (needs a bucket made with object lock)"},
				&cli.IntFlag{Name: "lock-days", Usage: "lock the backup for `DAYS` (1-36500) from its creation, instead of the cluster's object_lock days; never shorter than its retention"},
			}, argless(createBackup)),
			sub("list", "list backups", "", []cli.Flag{
				clusterFlag("list only cluster `ID`'s backups"),
				&cli.StringFlag{Name: "state", Usage: "list only backups in `STATE` (READY, PENDING_DELETION, DELETED; INVALID: only the manifests that do not parse, are misplaced or whose signature fails)"},
				&cli.StringSliceFlag{Name: "tag", Usage: "list only backups with tag `KEY=VALUE` (repeatable: all must match)"},
				&cli.BoolFlag{Name: "orphans", Usage: "list instead the stray objects in backup directories (image objects without a manifest…), which prune removes once older than --orphan-grace"},
				orphanGraceFlag(),
			}, argless(listBackups)),
			byID("describe", "show a backup's manifest", nil, describeBackup),
			byID("verify", "check a backup: signature, object hash, outer layer (and inner header with --deep)", []cli.Flag{
				&cli.BoolFlag{Name: "deep", Usage: "also compare the inner image header with the manifest"},
				&cli.BoolFlag{Name: "offline", Usage: "check only the signature and object hash: needs the public key, no secret"},
			}, verifyBackup),
			byID("delete", "delete a backup: PENDING_DELETION, restorable for 7 days", nil, deleteBackup),
			byID("restore-deleted", "bring a PENDING_DELETION backup back to READY", nil, restoreDeleted),
			byID("tag", "add, change or remove a backup's tags", []cli.Flag{
				&cli.StringSliceFlag{Name: "set", Usage: "set tag `KEY=VALUE` (repeatable)"},
				&cli.StringSliceFlag{Name: "remove", Usage: "remove tag `KEY` (repeatable)"},
			}, tagBackup),
			byID("set-never-expires", "pin a backup so that retention never removes it (--off to unpin)", []cli.Flag{
				&cli.BoolFlag{Name: "off", Usage: "unpin: leave the backup to its cluster's retention"},
			}, setNeverExpires),
			byID("copy", "copy a backup to another store, re-wrapping its outer layer (no HSM involved)", []cli.Flag{
				&cli.StringFlag{Name: "to", Usage: "destination store `URL` (required)"},
				&cli.StringFlag{Name: "to-keyring", Usage: "keyring `FILE` whose current key wraps the copy (default: the master keys new backups are wrapped to)"},
				&cli.StringSliceFlag{Name: "to-hpke", Usage: "HPKE public key `FILE` to wrap the copy to (repeatable; with --to-keyring, both)"},
			}, copyBackup),
			sub("prune", "apply retention: expire old backups, purge those deleted over 7 days ago", "", []cli.Flag{
				clusterFlag("prune only cluster `ID`"),
				&cli.IntFlag{Name: "retention-days", Usage: "retention in `DAYS` (7-379) for every cluster, instead of the config's"},
				&cli.IntFlag{Name: "keep-last", Usage: "keep at least the `N` newest READY backups of each cluster, instead of the config's"},
				&cli.BoolFlag{Name: "dry-run", Usage: "show what would change, change nothing"},
				orphanGraceFlag(),
			}, argless(pruneBackups)),
		},
	}
}

// resolve returns the cluster and id of the backup ref names: a full id,
// "latest" (the newest READY backup of --cluster, or of the store's only
// cluster) or a unique prefix of an id (backup.Resolve).
func (e *env) resolve(ref string) (string, string, error) {
	return backup.Resolve(e.c.Context, e.repo, e.c.String("cluster"), ref)
}
