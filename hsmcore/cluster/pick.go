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

// ErrDiverged: the reachable members of a cluster hold states of which
// none is the newest: changes were made on both sides of a split (no
// member's version covers every other's), or two members hold different
// states of the same version. PickMember's and Refresh's error for it is
// a *DivergedError.
var ErrDiverged = errors.New("members hold different states")

// MemberState is what one reachable member of the cluster reported.
type MemberState struct {
	Addr        string  `json:"addr"`
	Serial      string  `json:"serial"`
	StateDigest string  `json:"state_digest"`
	Version     Version `json:"state_version,omitempty"`
	Keys        int     `json:"keys"`
	Users       int     `json:"users"`
}

func (s MemberState) String() string {
	return fmt.Sprintf("%s: %s, %s, version %s, digest %.12s", s.Addr, count(s.Keys, "key"), count(s.Users, "user"), s.Version, s.StateDigest)
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
// cluster from, as a backup does: healthy, initialized in cluster
// cfg.Client.ClusterID, and holding the newest state: the first in
// configuration order whose state version covers every other healthy
// member's. Members with older states are logged. If no member's state
// is the newest (a split, see ErrDiverged), PickMember returns a
// *DivergedError listing each one's version, digest and key and user
// counts, unless opts.Member names the member to pick. Members that
// cannot be used are logged and named in the error when none can.
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
	versions := make([]Version, len(healthy))
	ok := make([]bool, len(healthy))
	for i, p := range healthy {
		versions[i], ok[i] = p.Health.StateVersion, true
	}
	ni := newest(versions, ok)
	for i, p := range healthy {
		if ni >= 0 && p.Health.StateDigest != healthy[ni].Health.StateDigest && versions[i].Covers(versions[ni]) {
			ni = -1 // the same version, another state
		}
	}
	var diverged *DivergedError
	if ni < 0 {
		diverged = &DivergedError{ClusterID: id}
		for _, p := range healthy {
			diverged.Members = append(diverged.Members, stateOf(p.Addr, p.Health))
		}
		ni = 0
	}
	pick := healthy[ni]
	for _, p := range healthy {
		if p != pick && p.Health.StateDigest != pick.Health.StateDigest {
			log.Warn("member holds an older state; backing up the newest", "cluster", id, "addr", p.Addr, "version", Version(p.Health.StateVersion).String(), "newest", pick.Addr)
		}
	}
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
