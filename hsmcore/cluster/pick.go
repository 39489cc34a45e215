package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/client"
)

// Picked is the member PickMember chose.
type Picked struct {
	Addr   string
	Client *client.Client // not logged in; the caller closes it
	Health api.Health
}

// PickMember connects to cfg's members and returns the one to read the
// cluster from, as a backup does: healthy, initialized in cluster
// cfg.Client.ClusterID and in sync (its state digest is the one most
// healthy members hold; configuration order breaks ties). Members that
// cannot be used are logged and named in the error when none can.
func PickMember(ctx context.Context, cfg Config) (*Picked, error) {
	id := cfg.Client.ClusterID
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var healthy []*Picked
	var problems []string
	var causes []error // the members' errors, for errors.Is (a timeout, say)
	closeAll := func(except *Picked) {
		for _, p := range healthy {
			if p != except {
				p.Client.Close()
			}
		}
	}
	for _, addr := range cfg.Members {
		cc := cfg.Client
		cc.Addr = addr
		cl, err := client.New(cc)
		if err != nil {
			closeAll(nil)
			return nil, err
		}
		h, err := cl.Health(ctx)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s: health: %v", addr, err))
			causes = append(causes, err)
		case !h.ClusterInitialized || h.ClusterID != id:
			problems = append(problems, fmt.Sprintf("%s: not a member of cluster %s", addr, id))
		default:
			healthy = append(healthy, &Picked{Addr: addr, Client: cl, Health: h})
			continue
		}
		log.Warn("member not usable", "addr", addr)
		cl.Close()
	}
	digests := make([]string, len(healthy))
	for i, p := range healthy {
		digests[i] = p.Health.StateDigest
	}
	i := mostHeld(digests)
	if i < 0 {
		return nil, fmt.Errorf("cluster %s: no healthy member (%s)%.0w", id, strings.Join(problems, "; "), errors.Join(causes...))
	}
	closeAll(healthy[i])
	return healthy[i], nil
}

// mostHeld returns the index of the first of digests ("" for a member
// that is down) held by the most members, or -1 if every one is "".
func mostHeld(digests []string) int {
	count := map[string]int{}
	for _, d := range digests {
		if d != "" {
			count[d]++
		}
	}
	best := -1
	for i, d := range digests {
		if d != "" && (best < 0 || count[d] > count[digests[best]]) {
			best = i
		}
	}
	return best
}
