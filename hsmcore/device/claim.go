package device

import (
	"bytes"
	"crypto/hmac"
	"fmt"
	"slices"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// Bounds of claim proofs. A nonce is good for one proof within
// claimNonceTTL; at most maxClaimNonces are outstanding (the oldest goes
// first), so asking for nonces grows nothing. After claimFreeFailures
// wrong proofs in a row, proofs are refused unchecked for claimLockout,
// doubling with each further failure up to maxClaimLockout. The secret
// has 256 bits: the limit keeps the log and the CPU quiet, it is not what
// makes guessing hopeless.
const (
	claimNonceTTL     = 5 * time.Minute
	maxClaimNonces    = 16
	claimFreeFailures = 5
	claimLockout      = time.Minute
	maxClaimLockout   = time.Hour
)

// claimNonces are the nonces issued for claim proofs, oldest first, and
// the failed proofs since the last good one. They live in memory: a
// restart forgets nonces, which only makes them useless.
type claimNonces struct {
	issued   []issuedNonce
	failures int
	until    time.Time // proofs refused unchecked before then
}

type issuedNonce struct {
	nonce []byte
	at    time.Time
}

// take removes nonce from the issued ones and reports whether it was
// issued within claimNonceTTL of now.
func (c *claimNonces) take(nonce []byte, now time.Time) bool {
	for i, n := range c.issued {
		if bytes.Equal(n.nonce, nonce) {
			c.issued = slices.Delete(c.issued, i, i+1)
			return now.Sub(n.at) <= claimNonceTTL && !now.Before(n.at)
		}
	}
	return false
}

// claimable reports whether the device is still to be claimed: its
// cluster is not initialized. The caller holds d.mu.
func (d *Device) claimable() bool {
	return !d.st.clusterInitialized()
}

// ClaimNonce issues a nonce for one claim proof (hsmcore.Claim.Prove). It
// is refused once the HSM is claimed, and by an HSM made without a claim
// secret.
func (d *Device) ClaimNonce() ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.claim == nil {
		return nil, fmt.Errorf("claim nonce: %w", hsmcore.ErrNoClaim)
	}
	if !d.claimable() {
		return nil, fmt.Errorf("claim nonce: HSM %s is set up already (its cluster is initialized): %w", d.id.Serial, hsmcore.ErrPermission)
	}
	c := &d.claims
	if len(c.issued) >= maxClaimNonces {
		c.issued = slices.Delete(c.issued, 0, 1)
	}
	nonce := hsmcore.NewNonce()
	c.issued = append(c.issued, issuedNonce{nonce, d.opts.now()})
	return nonce, nil
}

// proveClaim checks p, a claim proof for op on object, and spends its
// nonce. A wrong proof is audited (within the bound of unauthenticated
// calls) and counts toward the lockout. The caller holds d.mu.
func (d *Device) proveClaim(p *hsmcore.ClaimProof, op, object string) error {
	if d.claim == nil {
		return hsmcore.ErrNoClaim
	}
	if p == nil {
		d.auditUnauth(op, object, "denied")
		return fmt.Errorf("HSM %s is not claimed yet: a claim proof is required (the claim file hsm manufacture wrote for it): %w", d.id.Serial, hsmcore.ErrPermission)
	}
	if p.Serial != d.id.Serial {
		d.auditUnauth(op, object, "denied")
		return fmt.Errorf("the claim proof is for HSM %s, not this HSM %s: %w", p.Serial, d.id.Serial, hsmcore.ErrPermission)
	}
	c := &d.claims
	now := d.opts.now()
	if now.Before(c.until) {
		d.auditUnauth(op, object, "limited")
		return fmt.Errorf("too many wrong claim proofs: retry after %s: %w", c.until.Format(time.RFC3339), hsmcore.ErrPermission)
	}
	if !c.take(p.Nonce, now) {
		d.auditUnauth(op, object, "denied")
		return fmt.Errorf("claim proof: its nonce is unknown, spent or expired (nonces last %s): %w", claimNonceTTL, hsmcore.ErrPermission)
	}
	if !hmac.Equal(p.MAC, hsmcore.ClaimMAC(d.claim, d.id.Serial, p.Nonce, op, object)) {
		c.failures++
		if c.failures >= claimFreeFailures {
			c.until = now.Add(min(claimLockout<<min(c.failures-claimFreeFailures, 6), maxClaimLockout))
		}
		d.auditUnauth(op, object, "bad claim")
		return fmt.Errorf("claim proof: wrong claim secret, or made for another operation: %w", hsmcore.ErrPermission)
	}
	c.failures, c.until = 0, time.Time{}
	return nil
}
