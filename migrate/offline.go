package migrate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/internal/strictjson"
)

// An offline migration is Run cut in three, for clusters no one client
// reaches together (an air gap between them): the destination's client
// makes an Offer (Prepare), which is carried to the source; the source's
// client checks it and writes a Package of the keys (Export), which is
// carried back; the destination imports it (Import). The HSMs make the
// same checks as in Run; what the files add is only transport, so they
// need no secrecy: the offer is public, the package's keys are sealed to
// the transport key and signed by the source HSM.
//
// One offer moves one bundle: at most hsmcore.MaxBundleKeys keys. The
// transport key lives in the memory of the destination member that made
// it, for at most hsmcore.TransportKeyTTL: a restart of that member, or
// the time running out, voids the offer (make another).

// File formats.
const (
	OfferFormat   = "hsmbackup-offer/1"
	PackageFormat = "hsmbackup-package/1"
)

// MaxFile bounds an offer or package file: a bundle of
// hsmcore.MaxBundleKeys keys, base64, with room to spare.
const MaxFile = 4 << 20

// An Offer is a destination's transport key on its way to a source.
type Offer struct {
	Format string `json:"format"`
	// Cluster is the destination's id, and ClusterCertificate its cluster
	// certificate (DER), which the source checks against the
	// destination's customer CA.
	Cluster            string `json:"cluster"`
	ClusterCertificate []byte `json:"cluster_certificate"`
	// Member is the address of the destination member holding the
	// transport key, User the crypto user it was made for.
	Member    string                 `json:"member"`
	User      string                 `json:"user"`
	Mechanism hsmcore.Mechanism      `json:"mechanism"`
	Offer     hsmcore.TransportOffer `json:"offer"`
}

// A Package is the bundle a source wrote for an Offer, and the source's
// answer for every key it was asked to move. Only the bundle is
// authenticated (the source HSM's signature); Results are what the
// source's client reported, shown for the keys the bundle does not hold.
type Package struct {
	Format        string             `json:"format"`
	SourceCluster string             `json:"source_cluster"`
	Cluster       string             `json:"cluster"`
	Member        string             `json:"member"`
	Results       []hsmcore.Migrated `json:"results"`
	Bundle        *hsmcore.Bundle    `json:"bundle,omitempty"` // nil: nothing to move
}

// ParseOffer reads an offer file.
func ParseOffer(b []byte) (*Offer, error) {
	var o Offer
	if len(b) > MaxFile {
		return nil, fmt.Errorf("offer over %d bytes: %w", MaxFile, hsmcore.ErrMalformed)
	}
	if err := strictjson.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("offer: %v: %w", err, hsmcore.ErrMalformed)
	}
	switch {
	case o.Format != OfferFormat:
		return nil, fmt.Errorf("offer: format %q, want %s: %w", o.Format, OfferFormat, hsmcore.ErrMalformed)
	case o.Cluster == "" || o.Member == "" || o.User == "" || len(o.ClusterCertificate) == 0 || o.Offer.Attestation == nil:
		return nil, fmt.Errorf("offer: cluster, cluster certificate, member, user and attestation are required: %w", hsmcore.ErrMalformed)
	case o.Mechanism != o.Offer.Key.Mechanism:
		return nil, fmt.Errorf("offer: mechanism %q, its transport key's %q: %w", o.Mechanism, o.Offer.Key.Mechanism, hsmcore.ErrMalformed)
	}
	return &o, nil
}

// ParsePackage reads a package file.
func ParsePackage(b []byte) (*Package, error) {
	var p Package
	if len(b) > MaxFile {
		return nil, fmt.Errorf("package over %d bytes: %w", MaxFile, hsmcore.ErrMalformed)
	}
	if err := strictjson.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("package: %v: %w", err, hsmcore.ErrMalformed)
	}
	switch {
	case p.Format != PackageFormat:
		return nil, fmt.Errorf("package: format %q, want %s: %w", p.Format, PackageFormat, hsmcore.ErrMalformed)
	case p.SourceCluster == "" || p.Cluster == "" || p.Member == "":
		return nil, fmt.Errorf("package: source cluster, cluster and member are required: %w", hsmcore.ErrMalformed)
	case len(p.Results) > hsmcore.MaxBundleKeys:
		return nil, fmt.Errorf("package: %d results, at most %d: %w", len(p.Results), hsmcore.MaxBundleKeys, hsmcore.ErrMalformed)
	}
	return &p, nil
}

// Prepare makes an offer at dst for opts.User's keys, checked as Run
// checks a transport key. opts.Cluster, ClusterKeyHash and the roots are
// the destination's, as in Run; clusterCert is its cluster certificate.
func Prepare(ctx context.Context, dst Destination, clusterCert []byte, opts Options) (*Offer, error) {
	if opts.User == "" || opts.ManufacturerRoots == nil || len(opts.OperatorRoots) == 0 || opts.Cluster == "" || len(opts.ClusterKeyHash) == 0 || len(clusterCert) == 0 {
		return nil, errors.New("migrate: user, roots, and the destination's cluster, cluster key and certificate are required")
	}
	offer, at, err := transportKey(ctx, dst, opts)
	if err != nil {
		return nil, err
	}
	return &Offer{Format: OfferFormat, Cluster: opts.Cluster, ClusterCertificate: clusterCert, Member: at, User: opts.User,
		Mechanism: offer.Key.Mechanism, Offer: offer}, nil
}

// Export writes a package of the selected keys of opts.User at src for
// offer, once the offer checks out: as Run checks a transport key, over
// the nonce its destination client asked with (the source cannot ask one
// of its own: the offer is as fresh as its unexpired, single-use key).
// opts.Cluster and ClusterKeyHash must be the offer's cluster and the hash
// of its cluster certificate's key, once that certificate was checked
// against the destination's customer CA; opts.User must be the offer's.
// More than hsmcore.MaxBundleKeys keys to move is an error: select fewer,
// or prepare another offer for the rest.
func Export(ctx context.Context, src Source, o *Offer, opts Options) (*Package, *Report, error) {
	if opts.User == "" || opts.ManufacturerRoots == nil || len(opts.OperatorRoots) == 0 || opts.SourceCluster == "" || opts.Cluster == "" || len(opts.ClusterKeyHash) == 0 {
		return nil, nil, errors.New("migrate: user, roots, the source's cluster and the destination's cluster and cluster key are required")
	}
	if o.User != opts.User {
		return nil, nil, fmt.Errorf("the offer is for crypto user %s, not %s: %w", o.User, opts.User, hsmcore.ErrInvalid)
	}
	opts.Mechanism = o.Mechanism
	if err := checkOffer(o.Offer, o.Offer.Nonce, opts); err != nil {
		return nil, nil, fmt.Errorf("offer: %w", err)
	}
	if exp := o.Offer.Key.Expires; !time.Now().Before(exp) {
		return nil, nil, fmt.Errorf("offer: its transport key expired at %s: prepare another: %w", exp.Format(time.RFC3339), hsmcore.ErrAttestation)
	}
	srcKeys, err := src.Keys(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("source keys: %w", err)
	}
	rep, todo := plan(srcKeys, nil, opts) // the destination is out of reach: it skips what it holds
	if len(todo) > hsmcore.MaxBundleKeys {
		return nil, rep, fmt.Errorf("%d keys to move, and one offer moves at most %d: select fewer (--label, --type, --attr), or prepare another offer for the rest: %w",
			len(todo), hsmcore.MaxBundleKeys, hsmcore.ErrInvalid)
	}
	pkg := &Package{Format: PackageFormat, SourceCluster: opts.SourceCluster, Cluster: o.Cluster, Member: o.Member}
	if len(todo) > 0 {
		var opDER [][]byte
		for _, c := range opts.OperatorRoots {
			opDER = append(opDER, c.Raw)
		}
		handles := make([]uint64, len(todo))
		for i, k := range todo {
			handles[i] = k.Handle
		}
		out, err := src.ExportBundle(ctx, o.Offer, opDER, handles, opts.DryRun)
		if err != nil {
			return nil, rep, fmt.Errorf("source: %w", err)
		}
		if len(out.Results) != len(todo) {
			return nil, rep, fmt.Errorf("source: %d results for %d keys", len(out.Results), len(todo))
		}
		for _, r := range out.Results {
			rep.add(r)
		}
		pkg.Bundle = out.Bundle
	}
	sortReport(rep, srcKeys)
	pkg.Results = rep.Keys
	return pkg, rep, nil
}

// Import imports p at dst, on the member that made its transport key.
// The report holds the destination HSM's answer for every key of the
// bundle (moved, or skipped as present), and the source's for the others.
func Import(ctx context.Context, dst Destination, p *Package) (*Report, error) {
	rep := &Report{}
	var imported []hsmcore.Migrated
	if p.Bundle != nil {
		var err error
		if imported, err = dst.ImportBundle(ctx, p.Member, p.Bundle); err != nil {
			return nil, fmt.Errorf("destination: %w", err)
		}
	}
	byHandle := map[uint64]hsmcore.Migrated{}
	for _, m := range imported {
		byHandle[m.Source] = m
	}
	for _, r := range p.Results {
		if m, ok := byHandle[r.Source]; ok {
			r = m
			delete(byHandle, r.Source)
		} else if r.Result == hsmcore.Moved {
			r.Result, r.Reason = hsmcore.Refused, "not in the destination's answer"
		}
		rep.add(r)
	}
	for _, m := range imported { // in the bundle, not in the results
		if _, ok := byHandle[m.Source]; ok {
			rep.add(m)
		}
	}
	return rep, nil
}

// sortReport puts rep's keys in the order of srcKeys.
func sortReport(rep *Report, srcKeys []hsmcore.KeyInfo) {
	at := map[uint64]int{}
	for i, k := range srcKeys {
		at[k.Handle] = i
	}
	slices.SortStableFunc(rep.Keys, func(a, b hsmcore.Migrated) int { return at[a.Source] - at[b.Source] })
}
