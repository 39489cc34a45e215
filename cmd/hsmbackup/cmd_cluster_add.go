package main

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
)

func clusterAddMemberCommand() *cli.Command {
	return &cli.Command{
		Name:  "add-member",
		Usage: "add a new HSM to a configured cluster, cloned from a live member",
		Description: "Logs in to the members of --cluster (from --config: members, customer CA,\n" +
			"client certificate, crypto officer and password) as its crypto officer,\n" +
			"has the new HSM at --addr attest to a fresh nonce (both roots; the same\n" +
			"class, manufacturer, operator and PBK as the cluster, firmware no older,\n" +
			"the serial --serial names), and clones it from a member by image, as\n" +
			"CloudHSM adds an HSM to a cluster. The image goes only to the attested\n" +
			"HSM: the TLS peer that answered the attestation, and every connection\n" +
			"the image takes, must present its device key. An HSM whose cluster is\n" +
			"initialized is refused and left unchanged. Then add --addr to the\n" +
			"cluster's members in the config.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "cluster", Usage: "`ID` of the cluster in --config (required)"},
			&cli.StringFlag{Name: "addr", Usage: "`HOST:PORT` of the new, uninitialized HSM (required)"},
			&cli.StringFlag{Name: "serial", Usage: "require the new HSM's `SERIAL`: another genuine HSM at --addr is refused"},
			claimFlag(),
			manufacturerRootFlag(),
			operatorRootFlag(),
			configFlag(),
		},
		OnUsageError: usageError,
		Action:       envAction("cluster add-member", clusterAddMember),
	}
}

// addMemberOptions are the flags of cluster add-member.
type addMemberOptions struct {
	cluster, addr string
	serial        string   // "" accepts any serial
	claims        []string // claim files
}

func clusterAddMember(c *cli.Context, e *env) error {
	if err := requireFlags(c, "cluster", "addr"); err != nil {
		return err
	}
	return runAddMember(c.Context, e, addMemberOptions{cluster: c.String("cluster"), addr: c.String("addr"), serial: c.String("serial"), claims: c.StringSlice("claim")})
}

// runAddMember logs in to the cluster as its officer and has it attest
// and clone the new HSM.
func runAddMember(ctx context.Context, e *env, opts addMemberOptions) error {
	t, err := e.clusterTarget(opts.cluster, true)
	if err != nil {
		return err
	}
	if t.tls.Claims, err = loadClaims(opts.claims...); err != nil {
		return err
	}
	mfr, op, err := e.roots()
	if err != nil {
		return err
	}
	co, err := t.open(ctx, e.log, mfr, op)
	if err != nil {
		return err
	}
	defer co.Close()
	if err := co.AddMember(ctx, opts.addr, cluster.AddOptions{Serial: opts.serial}); err != nil {
		return (&conn{addr: opts.addr, device: true}).explain(err)
	}
	cl, err := t.dial(opts.addr)
	if err != nil {
		return err
	}
	defer cl.Close()
	h, err := cl.Health(ctx)
	if err != nil {
		return fmt.Errorf("health of %s: %w", opts.addr, cl.explain(err))
	}
	p := &printer{w: e.stdout}
	p.printf("HSM %s at %s added to cluster %s: attested, cloned by image, state digest %s\n", h.Serial, opts.addr, opts.cluster, h.StateDigest)
	p.printf("next: add %s to the members of cluster %s in the config\n", opts.addr, opts.cluster)
	return p.err
}
