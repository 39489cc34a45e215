package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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

// ErrDiverged: the reachable members of a cluster hold different states
// (their state digests differ), so no one of them is known to be current.
// PickMember's error for it is a *DivergedError.
var ErrDiverged = errors.New("members hold different states")

// MemberState is what one reachable member of the cluster reported.
type MemberState struct {
	Addr        string `json:"addr"`
	Serial      string `json:"serial"`
	StateDigest string `json:"state_digest"`
	Keys        int    `json:"keys"`
	Users       int    `json:"users"`
}

func (s MemberState) String() string {
	return fmt.Sprintf("%s: %s, %s, digest %.12s", s.Addr, count(s.Keys, "key"), count(s.Users, "user"), s.StateDigest)
}

func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// DivergedError lists the reachable members of a cluster whose states
// differ, in configuration order. It wraps ErrDiverged.
type DivergedError struct {
	ClusterID string
	Members   []MemberState
}

func (e *DivergedError) Error() string {
	parts := make([]string, len(e.Members))
	for i, m := range e.Members {
		parts[i] = m.String()
	}
	return fmt.Sprintf("cluster %s: %v (%s)", e.ClusterID, ErrDiverged, strings.Join(parts, "; "))
}

func (e *DivergedError) Unwrap() error { return ErrDiverged }

// PickOptions are the options of PickMember.
type PickOptions struct {
	// Member, if set, is the address of the member to pick, one of
	// cfg.Members: it is picked even if the members' states differ, as
	// long as it is healthy and in the cluster.
	Member string
}

// PickMember connects to cfg's members and returns the one to read the
// cluster from, as a backup does: healthy and initialized in cluster
// cfg.Client.ClusterID. Every healthy member must hold the same state
// (state digest); the first in configuration order is picked. If their
// digests differ, none is known to be current and PickMember returns a
// *DivergedError (wrapping ErrDiverged) listing each one's digest and key
// and user counts, unless opts.Member names the member to pick. Members
// that cannot be used are logged and named in the error when none can.
func PickMember(ctx context.Context, cfg Config, opts PickOptions) (*Picked, error) {
	id := cfg.Client.ClusterID
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Member != "" && !slices.Contains(cfg.Members, opts.Member) {
		return nil, fmt.Errorf("cluster %s: %s is not one of its members (%s)", id, opts.Member, strings.Join(cfg.Members, ", "))
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
		cl, err := client.New(memberConfig(cfg.Client, addr))
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
	if len(healthy) == 0 {
		return nil, fmt.Errorf("cluster %s: no healthy member (%s)%.0w", id, strings.Join(problems, "; "), errors.Join(causes...))
	}
	var diverged *DivergedError
	for _, p := range healthy {
		if p.Health.StateDigest != healthy[0].Health.StateDigest {
			diverged = &DivergedError{ClusterID: id}
			for _, p := range healthy {
				h := p.Health
				diverged.Members = append(diverged.Members, MemberState{Addr: p.Addr, Serial: h.Serial, StateDigest: h.StateDigest, Keys: h.KeyCount, Users: h.UserCount})
			}
			break
		}
	}
	pick := healthy[0]
	if opts.Member != "" {
		i := slices.IndexFunc(healthy, func(p *Picked) bool { return p.Addr == opts.Member })
		if i < 0 {
			closeAll(nil)
			why := "unusable"
			for _, p := range problems {
				if strings.HasPrefix(p, opts.Member+": ") {
					why = strings.TrimPrefix(p, opts.Member+": ")
				}
			}
			return nil, fmt.Errorf("cluster %s: member %s: %s", id, opts.Member, why)
		}
		pick = healthy[i]
		if diverged != nil {
			log.Warn("members hold different states; backing up the member named", "cluster", id, "addr", pick.Addr, "members", diverged.Members)
		}
	} else if diverged != nil {
		closeAll(nil)
		return nil, diverged
	}
	closeAll(pick)
	return pick, nil
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
