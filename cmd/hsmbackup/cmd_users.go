package main

import (
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// The users commands manage a cluster's users as one of them: listing is
// for anyone logged in, creating, deleting and unlocking for a crypto
// officer (the HSM enforces both, and asks for the approvals of its
// quorum policy, which these commands do not carry: such a call is
// refused with nothing changed), and a user changes only its own password.

func usersCommand() *cli.Command {
	conn := func(fs ...cli.Flag) []cli.Flag {
		return append(append(connectionFlags(), loginFlags("user logging in (a crypto officer to manage users)")...), append(fs, jsonFlag())...)
	}
	nameFlag := &cli.StringFlag{Name: "name", Usage: "`NAME` of the user (required)"}
	newPassword := &cli.StringFlag{Name: "new-password-file", Usage: "`FILE` (mode 0600) whose first line is the new password, or - for stdin (required)"}
	return &cli.Command{
		Name:  "users",
		Usage: "list, create and delete the users of a cluster, change a password, unlock a user",
		Subcommands: []*cli.Command{
			{
				Name:         "list",
				Usage:        "list the users and their roles",
				Flags:        conn(),
				OnUsageError: usageError,
				Action:       envAction("users list", usersList),
			},
			{
				Name:  "create",
				Usage: "create a user on every member (crypto officers only)",
				Description: "--role CU makes a crypto user, who owns and uses keys; --role CO a crypto\n" +
					"officer, who manages users, trust and images. The password (8 to 1024\n" +
					"bytes) is read from --new-password-file, never from a flag.",
				Flags: conn(nameFlag,
					&cli.StringFlag{Name: "role", Usage: "`ROLE` of the new user: CU (crypto user) or CO (crypto officer) (required)"},
					newPassword),
				OnUsageError: usageError,
				Action:       envAction("users create", usersCreate),
			},
			{
				Name:  "delete",
				Usage: "delete a user from every member (crypto officers only)",
				Description: "A user who still owns keys cannot be deleted; the keys shared with it\n" +
					"are unshared. Without --yes nothing is done.",
				Flags: conn(nameFlag,
					&cli.BoolFlag{Name: "yes", Usage: "delete: without it, the command only says what would be deleted"}),
				OnUsageError: usageError,
				Action:       envAction("users delete", usersDelete),
			},
			{
				Name:         "change-password",
				Usage:        "change the logged-in user's own password on every member",
				Flags:        conn(newPassword),
				OnUsageError: usageError,
				Action:       envAction("users change-password", usersChangePassword),
			},
			{
				Name:  "unlock",
				Usage: "lift a user's lockout after failed logins, on every member (crypto officers only)",
				Description: "Each HSM counts a user's failed logins in a row on its own; the unlock\n" +
					"runs on every member that is up.",
				Flags:        conn(nameFlag),
				OnUsageError: usageError,
				Action:       envAction("users unlock", usersUnlock),
			},
		},
	}
}

func usersList(c *cli.Context, e *env) error {
	cl, err := openAs(c, e)
	if err != nil {
		return err
	}
	defer cl.Close()
	users, err := cl.Users(c.Context)
	if err != nil {
		return err
	}
	slices.SortFunc(users, func(a, b hsmcore.UserInfo) int { return strings.Compare(a.Name, b.Name) })
	if e.g.json {
		return writeJSONList(e.stdout, users, countSummary{Count: len(users)})
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE")
	for _, u := range users {
		fmt.Fprintf(tw, "%s\t%s (%s)\n", u.Name, u.Role, roleName(u.Role))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err = fmt.Fprintf(e.stdout, "%s\n", plural(len(users), "user"))
	return err
}

func roleName(r hsmcore.Role) string {
	switch r {
	case hsmcore.CryptoOfficer:
		return "crypto officer"
	case hsmcore.CryptoUser:
		return "crypto user"
	}
	return "unknown role"
}

// requireName returns --name, which the command requires.
func requireName(c *cli.Context) (string, error) {
	name := c.String("name")
	if name == "" {
		return "", usagef("--name is required (run '%s --help')", c.Command.HelpName)
	}
	return name, nil
}

// newPasswordOf reads --new-password-file, which the command requires.
func newPasswordOf(c *cli.Context) (string, error) {
	path := c.String("new-password-file")
	if path == "" {
		return "", usagef("--new-password-file is required (run '%s --help')", c.Command.HelpName)
	}
	if path == "-" && c.String("password-file") == "-" {
		return "", usagef("--password-file and --new-password-file cannot both read stdin")
	}
	pw, err := passwordFrom(path, "--new-password-file")
	if err != nil {
		return "", fmt.Errorf("new password: %w", err)
	}
	return pw, nil
}

func usersCreate(c *cli.Context, e *env) error {
	name, err := requireName(c)
	if err != nil {
		return err
	}
	var role hsmcore.Role
	switch r := strings.ToUpper(c.String("role")); r {
	case "CU", "CO":
		role = hsmcore.Role(r)
	case "":
		return usagef("--role is required: CU or CO (run '%s --help')", c.Command.HelpName)
	default:
		return usagef("--role %s: CU (crypto user) or CO (crypto officer)", c.String("role"))
	}
	password, err := newPasswordOf(c)
	if err != nil {
		return err
	}
	cl, err := openAs(c, e)
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := cl.CreateUser(c.Context, name, role, password); err != nil {
		return err
	}
	e.log.Info("user created", "name", name, "role", role)
	if e.g.json {
		return writeJSON(e.stdout, hsmcore.UserInfo{Name: name, Role: role})
	}
	_, err = fmt.Fprintf(e.stdout, "created %s %s on every member\n", roleName(role), name)
	return err
}

func usersDelete(c *cli.Context, e *env) error {
	name, err := requireName(c)
	if err != nil {
		return err
	}
	cl, err := openAs(c, e)
	if err != nil {
		return err
	}
	defer cl.Close()
	users, err := cl.Users(c.Context)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(users, func(u hsmcore.UserInfo) bool { return u.Name == name })
	if i < 0 {
		return fmt.Errorf("user %s: %w", name, hsmcore.ErrNotFound)
	}
	u := users[i]
	if !c.Bool("yes") {
		return usagef("not without --yes: this deletes %s %s from every member of the cluster", roleName(u.Role), name)
	}
	if err := cl.DeleteUser(c.Context, name); err != nil {
		return err
	}
	e.log.Warn("user deleted", "name", name, "role", u.Role)
	if e.g.json {
		return writeJSON(e.stdout, struct {
			Deleted hsmcore.UserInfo `json:"deleted"`
		}{u})
	}
	_, err = fmt.Fprintf(e.stdout, "deleted %s %s from every member\n", roleName(u.Role), name)
	return err
}

func usersChangePassword(c *cli.Context, e *env) error {
	password, err := newPasswordOf(c)
	if err != nil {
		return err
	}
	cl, err := openAs(c, e)
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := cl.ChangePassword(c.Context, password); err != nil {
		return err
	}
	e.log.Info("password changed")
	if e.g.json {
		return writeJSON(e.stdout, struct {
			Changed bool `json:"changed"`
		}{true})
	}
	_, err = fmt.Fprintln(e.stdout, "password changed on every member; the next login uses the new one")
	return err
}

func usersUnlock(c *cli.Context, e *env) error {
	name, err := requireName(c)
	if err != nil {
		return err
	}
	cl, err := openAs(c, e)
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := cl.UnlockUser(c.Context, name); err != nil {
		return err
	}
	e.log.Info("user unlocked", "name", name)
	if e.g.json {
		return writeJSON(e.stdout, struct {
			Unlocked string `json:"unlocked"`
		}{name})
	}
	_, err = fmt.Fprintf(e.stdout, "unlocked %s on every member that is up\n", name)
	return err
}
