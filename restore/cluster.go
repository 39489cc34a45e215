package restore

import (
	"context"
	"errors"
	"fmt"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
	"github.com/hsmbackup/hsmbackup/hsmcore/cluster"
)

// Member is an HSM to restore into that also reports its health.
// *hsmcore/client.Client is one.
type Member interface {
	Target
	Health(ctx context.Context) (api.Health, error)
}

// Cloner clones the HSM a backup was restored into onto new HSMs:
// *hsmcore/cluster.Cluster, opened on the restored HSM, is one (its
// AddMember attests the new HSM again, then copies the image).
type Cloner interface {
	AddMember(ctx context.Context, addr string, opts cluster.AddOptions) error
	Close()
}

// ClusterTarget is one HSM of a restore into several.
type ClusterTarget struct {
	Addr   string
	Member Member
	// Serial, if set, is the serial the HSM must attest to, when checked
	// and when cloned.
	Serial string
}

// Action says what Cluster did with a target.
type Action string

// Actions.
const (
	Checked  Action = "checked" // every check passed (a dry run stops here)
	Restored Action = "restored"
	Cloned   Action = "cloned"
)

// TargetResult is what Cluster did with one target.
type TargetResult struct {
	Addr   string `json:"addr"`
	Serial string `json:"serial"`
	Action Action `json:"action"`
	// Replaced is what the target held that the backup lacks, replaced
	// under Options.Force (checked: to be replaced).
	Replaced *Loss `json:"replaced,omitempty"`
}

// ClusterRequest is what Cluster restores, and into what.
type ClusterRequest struct {
	// Repo, ClusterID and BackupID name the backup.
	Repo      backup.Repo
	ClusterID string
	BackupID  string
	// Targets are the HSMs of the new cluster; the first is restored, the
	// others cloned from it.
	Targets []ClusterTarget
	// Open, called only after the first target is restored, returns a
	// Cloner on it. It is required if there is more than one target.
	Open func(context.Context) (Cloner, error)
}

// ErrNotNew: a target after the first already holds users; only new HSMs
// are cloned.
var ErrNotNew = errors.New("target is not a new HSM")

// Cluster restores the backup req names into req.Targets[0] and clones it
// onto the others, as CloudHSM makes a cluster from a backup: one HSM restored, the
// rest added to it.
//
// Nothing changes before every check passed: the backup's manifest is
// checked (with opts.DryRun, the whole backup), each target attests to a
// fresh nonce as in Restore, and every
// target after the first must be new (no users: ErrNotNew); the first, if
// it holds users or keys the backup lacks, is refused (ErrWouldLose)
// unless opts.Force. With opts.DryRun, Cluster stops there, every
// result Checked. Then the first target is restored; req.Open, called only
// after that succeeded, returns a Cloner on the restored HSM, which adds
// the others. If cloning one fails, the results so far are returned with
// the error: the first target holds the backup, and the failed target and
// those after it are as they were.
func Cluster(ctx context.Context, req ClusterRequest, opts Options) ([]TargetResult, error) {
	targets := req.Targets
	if len(targets) == 0 {
		return nil, errors.New("no target")
	}
	if len(targets) > 1 && req.Open == nil {
		return nil, errors.New("cloning targets needs a way to open the restored cluster")
	}
	// The manifest is checked once; the stream into the first target
	// checks the stored object against it as it goes.
	b, err := verify(ctx, req.Repo, req.ClusterID, req.BackupID, opts)
	if err != nil {
		return nil, err
	}
	results := make([]TargetResult, len(targets))
	dry := opts
	dry.DryRun = true
	for i, t := range targets {
		if i > 0 {
			h, err := t.Member.Health(ctx)
			if err != nil {
				return nil, fmt.Errorf("target %s: %w", t.Addr, err)
			}
			if h.Initialized {
				return nil, fmt.Errorf("target %s: %w: it has users; restore into it on its own", t.Addr, ErrNotNew)
			}
		}
		dry.Serial = t.Serial
		res, err := b.into(ctx, t.Member, dry)
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", t.Addr, err)
		}
		results[i] = TargetResult{Addr: t.Addr, Serial: res.TargetSerial, Action: Checked, Replaced: res.Replaced}
	}
	if opts.DryRun {
		return results, nil
	}

	first := targets[0]
	opts.Serial = first.Serial
	res, err := b.into(ctx, first.Member, opts)
	if err != nil {
		return results, fmt.Errorf("target %s: %w", first.Addr, err)
	}
	results[0].Action, results[0].Replaced = Restored, res.Replaced
	if len(targets) == 1 {
		return results, nil
	}
	cl, err := req.Open(ctx)
	if err != nil {
		return results, fmt.Errorf("target %s: open the restored cluster: %w", first.Addr, err)
	}
	defer cl.Close()
	for i, t := range targets[1:] {
		if err := cl.AddMember(ctx, t.Addr, cluster.AddOptions{Serial: t.Serial}); err != nil {
			return results, err // names the member and the step
		}
		results[i+1].Action = Cloned
	}
	return results, nil
}
