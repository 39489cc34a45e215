package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
)

func zeroizeCommand() *cli.Command {
	return &cli.Command{
		Name:  "zeroize",
		Usage: "return an HSM to its factory state: erase its users, keys and cluster membership",
		Description: "Logs in to one HSM as a crypto officer of its cluster, over the member\n" +
			"channel (a client certificate from the customer CA), and has it erase\n" +
			"every user, every key, its quorum policy and its cluster membership\n" +
			"(cluster certificate, customer CA). What belongs to the hardware stays:\n" +
			"its identity, device certificates and hardware-bound keys, and its audit\n" +
			"log, which records the zeroization and the officer who made it. The HSM\n" +
			"is then uninitialized, as from the factory, and takes a restore or a\n" +
			"cluster initialization as a new one does. There is no undo: without\n" +
			"--yes nothing is done. --cluster names the HSM only for a cluster of one\n" +
			"member; else give --addr. If the HSM's quorum policy protects any\n" +
			"operation, a zeroization needs as many approvals, which this command\n" +
			"does not carry: it is refused.",
		Flags: append(append(connectionFlags(), loginFlags("crypto officer")...),
			&cli.BoolFlag{Name: "yes", Usage: "zeroize: without it, the command only says what would be erased"},
			jsonFlag()),
		OnUsageError: usageError,
		Action:       envAction("hsm zeroize", zeroize),
	}
}

func zeroize(c *cli.Context, e *env) error {
	t, err := e.target(c, trustMember, needs{user: true, cert: true})
	if err != nil {
		return err
	}
	addr, err := t.addr()
	if err != nil {
		return err
	}
	if !c.Bool("yes") {
		return usagef("not without --yes: zeroizing the HSM at %s erases for good every user, every key, its quorum policy and its cluster membership (cluster certificate, customer CA), leaving it uninitialized, as from the factory (run '%s --help')", addr, c.Command.HelpName)
	}
	return runZeroize(c.Context, e, t)
}

// zeroizeResult is what hsm zeroize reports: the HSM and what it held.
type zeroizeResult struct {
	Addr        string `json:"addr"`
	Serial      string `json:"serial"`
	ClusterID   string `json:"cluster_id"` // the cluster it was a member of
	ErasedUsers int    `json:"erased_users"`
	ErasedKeys  int    `json:"erased_keys"`
	Zeroized    bool   `json:"zeroized"`
}

// runZeroize zeroizes the target's one HSM as its crypto officer.
func runZeroize(ctx context.Context, e *env, t *target) error {
	cl, err := t.dialOne()
	if err != nil {
		return err
	}
	defer cl.Close()
	res, err := zeroizeHSM(ctx, t, cl, nil)
	if err != nil {
		return err
	}
	e.log.Warn("HSM zeroized", "addr", res.Addr, "serial", res.Serial, "cluster", res.ClusterID, "users", res.ErasedUsers, "keys", res.ErasedKeys)
	if e.g.json {
		return writeJSON(e.stdout, res)
	}
	_, err = fmt.Fprintf(e.stdout, "zeroized HSM %s at %s: erased cluster %s, %s and %s; it is uninitialized, as from the factory\n",
		res.Serial, res.Addr, orNone(res.ClusterID), plural(res.ErasedUsers, "user"), plural(res.ErasedKeys, "key"))
	return err
}

// zeroizeHSM logs in to cl as t's user and zeroizes the HSM, once its
// health passes check (if not nil). The HSM decides who may: a crypto
// officer of its cluster, with the quorum its policy asks for. Errors
// name the HSM.
func zeroizeHSM(ctx context.Context, t *target, cl *conn, check func(api.Health) error) (*zeroizeResult, error) {
	h, err := cl.Health(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: health: %w", cl.addr, cl.explain(err))
	}
	if check != nil {
		if err := check(h); err != nil {
			return nil, fmt.Errorf("%s: %w", cl.addr, err)
		}
	}
	if _, err := t.login(ctx, cl); err != nil {
		return nil, fmt.Errorf("%s: %w", cl.addr, err)
	}
	if err := cl.Zeroize(ctx); err != nil {
		_ = cl.Logout(context.WithoutCancel(ctx)) // best effort: the session also ends with the connection
		if errors.Is(err, hsmcore.ErrQuorum) {
			err = fmt.Errorf("%w (the HSM's quorum policy protects zeroize; this command carries no approvals)", err)
		}
		return nil, fmt.Errorf("%s: %w", cl.addr, cl.explain(err))
	}
	return &zeroizeResult{Addr: cl.addr, Serial: h.Serial, ClusterID: h.ClusterID, ErasedUsers: h.UserCount, ErasedKeys: h.KeyCount, Zeroized: true}, nil
}
