// Package migrate moves keys between two HSM clusters, wrapped from HSM to
// HSM: the destination makes a single-use transport key inside one of its
// members and attests to it; the client checks that attestation; the
// source HSM checks it again and writes a signed bundle of the keys under
// it; the destination HSM checks the bundle, unwraps inside, and the
// cluster replicates the new keys to its other members. No key material
// is ever in this process.
//
// A migration is resumable and idempotent: a key the destination holds
// already (moved before: the same origin, the source cluster and handle,
// and check value, the same owner) is skipped, so a run
// cut short (the process killed, a member down) is finished by running it
// again, and never makes a duplicate. Keys move in bundles of at most
// hsmcore.MaxBundleKeys, each committed at the destination as it comes.
package migrate

import (
	"bytes"
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
)

// Source is the cluster keys move from. *hsmcore/cluster.Cluster
// satisfies it.
type Source interface {
	Keys(ctx context.Context) ([]hsmcore.KeyInfo, error)
	ExportBundle(ctx context.Context, offer hsmcore.TransportOffer, opRoots [][]byte, handles []uint64, dryRun bool) (api.ExportBundleResponse, error)
}

// Destination is the cluster keys move to. *hsmcore/cluster.Cluster
// satisfies it.
type Destination interface {
	Keys(ctx context.Context) ([]hsmcore.KeyInfo, error)
	NewTransportKey(ctx context.Context, nonce []byte, mech hsmcore.Mechanism) (hsmcore.TransportOffer, string, error)
	ImportBundle(ctx context.Context, addr string, b *hsmcore.Bundle) ([]hsmcore.Migrated, error)
}

// Options configure Run.
type Options struct {
	// User is the crypto user whose keys move; both clusters are opened
	// as that user.
	User string
	// Select chooses the source keys to move; nil: every key of User.
	Select func(hsmcore.KeyInfo) bool
	// Mechanism is the transport key's: hpke (ML-KEM-768 + X25519, the
	// default) or rsa-aes (RSA-3072, for destinations without ML-KEM).
	Mechanism hsmcore.Mechanism
	// DryRun makes every check (the destination's attestation, the policy
	// of every selected key) and moves nothing.
	DryRun bool
	// ManufacturerRoots and OperatorRoots verify the destination's
	// attestation; OperatorRoots also go to the source HSM, which checks
	// it again.
	ManufacturerRoots *x509.CertPool
	OperatorRoots     []*x509.Certificate
	// SourceCluster is the source's cluster id: a key moved before carries
	// it in its Origin at the destination.
	SourceCluster string
	// Cluster is the destination's cluster id and ClusterKeyHash the
	// SHA-256 of its cluster certificate's public key
	// (hsmcore.PublicKeyHash), as the client verified it against the
	// destination's customer CA: the transport key must come from an HSM
	// of that cluster.
	Cluster        string
	ClusterKeyHash []byte
	// Room, if set, says how many more keys the destination can hold.
	Room func(ctx context.Context) (int, error)
	// Progress, if set, is called after each bundle with the keys done.
	Progress func(done, total int)
}

// Report is what a migration did, key by key (in the source's order).
type Report struct {
	DryRun  bool               `json:"dry_run"`
	Keys    []hsmcore.Migrated `json:"keys"`
	Moved   int                `json:"moved"`
	Skipped int                `json:"skipped"`
	Refused int                `json:"refused"`
}

func (r *Report) add(m hsmcore.Migrated) {
	r.Keys = append(r.Keys, m)
	switch m.Result {
	case hsmcore.Moved:
		r.Moved++
	case hsmcore.Skipped:
		r.Skipped++
	default:
		r.Refused++
	}
}

// ErrCapacity: the destination cannot hold the keys to move.
var ErrCapacity = errors.New("the destination cannot hold the keys to move")

// Run moves the selected keys of opts.User from src to dst. The report
// lists every selected key, moved, skipped or refused with the reason; in
// a dry run, "moved" means it would move. An error stops the run: what
// moved before it stays moved (run again to finish).
func Run(ctx context.Context, src Source, dst Destination, opts Options) (*Report, error) {
	if opts.User == "" || opts.ManufacturerRoots == nil || len(opts.OperatorRoots) == 0 || opts.SourceCluster == "" || opts.Cluster == "" || len(opts.ClusterKeyHash) == 0 {
		return nil, errors.New("migrate: user, roots, the source's cluster and the destination's cluster and cluster key are required")
	}
	srcKeys, err := src.Keys(ctx)
	if err != nil {
		return nil, fmt.Errorf("source keys: %w", err)
	}
	dstKeys, err := dst.Keys(ctx)
	if err != nil {
		return nil, fmt.Errorf("destination keys: %w", err)
	}
	held := map[[2]string]uint64{} // by origin and check value
	for _, k := range dstKeys {
		if k.Token && k.Owner == opts.User && k.Origin != "" {
			held[[2]string{k.Origin, k.KCV}] = k.Handle
		}
	}
	rep, todo := plan(srcKeys, held, opts)
	if opts.Room != nil {
		room, err := opts.Room(ctx)
		if err != nil {
			return rep, fmt.Errorf("destination: %w", err)
		}
		if len(todo) > room {
			return rep, fmt.Errorf("%w: it has room for %d more, and %d would move", ErrCapacity, room, len(todo))
		}
	}
	var opDER [][]byte
	for _, c := range opts.OperatorRoots {
		opDER = append(opDER, c.Raw)
	}
	var done int
	var offer hsmcore.TransportOffer
	var at string
	for batch := range slices.Chunk(todo, hsmcore.MaxBundleKeys) {
		if !opts.DryRun || at == "" { // a dry run spends no key: one offer checks them all
			if offer, at, err = transportKey(ctx, dst, opts); err != nil {
				return rep, err
			}
		}
		handles := make([]uint64, len(batch))
		for i, k := range batch {
			handles[i] = k.Handle
		}
		out, err := src.ExportBundle(ctx, offer, opDER, handles, opts.DryRun)
		if err != nil {
			return rep, fmt.Errorf("source: %w", err)
		}
		if len(out.Results) != len(batch) {
			return rep, fmt.Errorf("source: %d results for %d keys", len(out.Results), len(batch))
		}
		var imported []hsmcore.Migrated
		if out.Bundle != nil {
			if imported, err = dst.ImportBundle(ctx, at, out.Bundle); err != nil {
				return rep, fmt.Errorf("destination: %w", err)
			}
		}
		byHandle := map[uint64]hsmcore.Migrated{}
		for _, m := range imported {
			byHandle[m.Source] = m
		}
		for _, r := range out.Results {
			if m, ok := byHandle[r.Source]; ok {
				r = m
			} else if r.Result == hsmcore.Moved && !opts.DryRun {
				r.Result, r.Reason = hsmcore.Refused, "not in the destination's answer"
			}
			rep.add(r)
		}
		if done += len(batch); opts.Progress != nil {
			opts.Progress(done, len(todo))
		}
	}
	return rep, nil
}

// plan sorts the keys of opts.User that opts.Select chooses among srcKeys:
// those held (by origin and check value, as the destination holds them)
// are skipped, those the source HSM would refuse are refused (it checks
// again), in rep; the rest are to move.
func plan(srcKeys []hsmcore.KeyInfo, held map[[2]string]uint64, opts Options) (rep *Report, todo []hsmcore.KeyInfo) {
	rep = &Report{DryRun: opts.DryRun}
	for _, k := range srcKeys {
		if !k.Token || k.Owner != opts.User || (opts.Select != nil && !opts.Select(k)) {
			continue
		}
		m := hsmcore.Migrated{Source: k.Handle, Label: k.Label, KCV: k.KCV}
		h, present := held[[2]string{hsmcore.KeyOrigin(opts.SourceCluster, k.Handle), k.KCV}]
		switch {
		case present:
			m.Result, m.Handle, m.Reason = hsmcore.Skipped, h, "present: moved before (same origin and check value)"
		// What the source HSM would refuse anyway (it checks again):
		case !k.Extractable:
			m.Result, m.Reason = hsmcore.Refused, "not extractable"
		case k.WrapWithTrusted:
			m.Result, m.Reason = hsmcore.Refused, "wrap-with-trusted: it leaves only under a trusted key of this HSM"
		default:
			todo = append(todo, k)
			continue
		}
		rep.add(m)
	}
	return rep, todo
}

// transportKey gets a transport key from dst and checks its attestation
// as the client sees it: genuine (the manufacturer's and operator's
// roots), fresh (a nonce of its own), covering the key, from an HSM of
// the destination cluster (its cluster key, which the customer CA
// certifies).
func transportKey(ctx context.Context, dst Destination, opts Options) (hsmcore.TransportOffer, string, error) {
	nonce := hsmcore.NewNonce()
	offer, at, err := dst.NewTransportKey(ctx, nonce, cmp.Or(opts.Mechanism, hsmcore.HPKEWrap))
	if err != nil {
		return offer, "", fmt.Errorf("destination: transport key: %w", err)
	}
	if err := checkOffer(offer, nonce, opts); err != nil {
		return offer, "", fmt.Errorf("destination %s: transport key: %w", at, err)
	}
	return offer, at, nil
}

// checkOffer checks offer as a client sees it, asked with nonce: an
// attestation from a genuine HSM (the manufacturer's and operator's
// roots), fresh (over nonce), covering the transport key, of the mechanism
// asked, from an HSM of the destination cluster (its cluster key).
func checkOffer(offer hsmcore.TransportOffer, nonce []byte, opts Options) error {
	op := x509.NewCertPool()
	for _, c := range opts.OperatorRoots {
		op.AddCert(c)
	}
	mech := cmp.Or(opts.Mechanism, hsmcore.HPKEWrap)
	if offer.Attestation == nil {
		return fmt.Errorf("no attestation: %w", hsmcore.ErrAttestation)
	}
	want := hsmcore.Expectation{Serial: offer.Key.Serial}.Certified(offer.Attestation)
	st, err := hsmcore.VerifyAttestation(offer.Attestation, hsmcore.VerifyOptions{ManufacturerRoots: opts.ManufacturerRoots, OperatorRoots: op,
		Nonce: hsmcore.TransportNonce(nonce, offer.Key), Expect: want})
	if err != nil {
		return err
	}
	if offer.Key.Mechanism != mech {
		return fmt.Errorf("a transport key of %s, not the %s asked: %w", offer.Key.Mechanism, mech, hsmcore.ErrAttestation)
	}
	if !bytes.Equal(offer.Nonce, nonce) || st.ClusterID != opts.Cluster || offer.Key.Cluster != opts.Cluster || !bytes.Equal(st.ClusterKeyHash, opts.ClusterKeyHash) {
		return fmt.Errorf("the transport key is not from an HSM of cluster %s: %w", opts.Cluster, hsmcore.ErrAttestation)
	}
	return nil
}
