package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/hsmbackup/hsmbackup/hsmcore/client"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
)

func clusterAddMemberCommand() *cli.Command {
	return &cli.Command{
		Name:  "add-member",
		Usage: "add a new HSM to a configured cluster, cloned from a live member",
		Description: "Logs in to the members of --cluster (from --config: members, customer CA,\n" +
			"client certificate, crypto officer and password) as its crypto officer,\n" +
			"has the new HSM at --addr attest to a fresh nonce (both roots; the same\n" +
			"class, manufacturer, operator and PBK as the cluster, firmware no older),\n" +
			"and clones it from a member by image, as CloudHSM adds an HSM to a\n" +
			"cluster. An HSM whose cluster is initialized is refused and left\n" +
			"unchanged. Then add --addr to the cluster's members in the config.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "cluster", Usage: "`ID` of the cluster in --config (required)"},
			&cli.StringFlag{Name: "addr", Usage: "`HOST:PORT` of the new, uninitialized HSM (required)"},
			manufacturerRootFlag(),
			operatorRootFlag(),
			configFlag(),
		},
		OnUsageError: usageError,
		Action:       action("cluster add-member", clusterAddMember),
	}
}

func clusterAddMember(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if err := requireFlags(c, "cluster", "addr"); err != nil {
		return err
	}
	s, err := openConfig(c)
	if err != nil {
		return err
	}
	id, addr := c.String("cluster"), c.String("addr")
	cc, err := s.cluster(id)
	if err != nil {
		return err
	}
	if cc.User == "" {
		return fmt.Errorf("cluster %s: 'user' (a crypto officer) is required in the config", id)
	}
	password, err := clusterPassword(cc)
	if err != nil {
		return fmt.Errorf("cluster %s: %w", id, err)
	}
	base, err := clientConfig(id, cc)
	if err != nil {
		return err
	}
	mfr, op, err := s.roots()
	if err != nil {
		return err
	}
	ctx := c.Context
	ccfg := base
	ccfg.ManufacturerRoots = mfr
	co, err := cluster.Open(ctx, cluster.Config{Members: cc.Members, Client: ccfg, OperatorRoots: op, Logger: s.log}, cc.User, password)
	if err != nil {
		return fmt.Errorf("cluster %s: %w", id, err)
	}
	defer co.Close()
	if err := co.AddMember(ctx, addr); err != nil {
		return (&conn{addr: addr, device: true}).explain(err)
	}
	mcfg := base
	mcfg.Addr = addr
	cl, err := client.New(mcfg)
	if err != nil {
		return err
	}
	defer cl.Close()
	h, err := cl.Health(ctx)
	if err != nil {
		return fmt.Errorf("health of %s: %w", addr, err)
	}
	p := &printer{w: c.App.Writer}
	p.printf("HSM %s at %s added to cluster %s: attested, cloned by image, state digest %s\n", h.Serial, addr, id, h.StateDigest)
	p.printf("next: add %s to the members of cluster %s in the config\n", addr, id)
	return p.err
}
