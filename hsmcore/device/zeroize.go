package device

import (
	"context"
	"fmt"

	"github.com/hsmbackup/hsmbackup/hsmcore"
)

// errZeroized: an image transfer began before the device was zeroized;
// it belongs to contents that no longer exist and is cut.
var errZeroized = fmt.Errorf("the HSM was zeroized during the transfer: %w", hsmcore.ErrPermission)

// epoch is the life of the device's contents between two zeroizations.
// Zeroize ends it, which cuts every image export and import begun in it:
// an import staged before a zeroization is never committed after it, and
// an export stops sending the erased contents.
type epoch struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func newEpoch() *epoch {
	ctx, cancel := context.WithCancel(context.Background())
	return &epoch{ctx: ctx, cancel: cancel}
}

// ended reports whether a zeroization ended the epoch.
func (e *epoch) ended() bool { return e.ctx.Err() != nil }

// bind returns ctx, cancelled also when the epoch ends.
func (e *epoch) bind(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(e.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// zeroizeQuorum is how many approvals a zeroization needs: as many as the
// most demanding operation the quorum policy protects, and at least its
// own entry ("device.zeroize"). A zeroization erases everything those
// operations guard (users, keys, the policy itself), and leaves an HSM
// that takes any image without a session: were it cheaper than any of
// them, one officer could zeroize and so undo a protected deletion,
// policy change or import. Without a policy it needs none. The caller
// holds d.mu.
func (d *Device) zeroizeQuorum() int {
	m := 0
	for _, n := range d.st.Quorum.Ops {
		m = max(m, n)
	}
	return m
}

// Zeroize returns the device to its factory state: it erases every user,
// every key (token and session keys), the quorum policy, the cluster
// membership (cluster key, cluster certificate, customer CA) and any
// image being staged or exported, so that the device is as new from
// manufacture and accepts an image or a cluster initialization as a new
// HSM does. What belongs to the hardware stays: its identity, device key
// and certificates, MKBK and AKBK, and its audit log, which records the
// zeroization and who made it. The erased state is sealed to disk before
// Zeroize returns: a device opened again is zeroized.
//
// Only a crypto officer of the device may zeroize it, and, if the device
// has a quorum policy, only with the approvals of as many officers as the
// most demanding protected operation needs (zeroizeQuorum); the token is
// for operation "device.zeroize" on the device's serial, so that approvals
// to zeroize one member do not zeroize another. A refused call changes
// nothing and spends no token. Every session ends, this one included.
func (s *Session) Zeroize() error {
	const op = "device.zeroize"
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := s.check(op, hsmcore.CryptoOfficer); err != nil {
		return err
	}
	serial := d.id.Serial
	if m := d.zeroizeQuorum(); m > 0 {
		if err := s.requireQuorumOf(op, hsmcore.ZeroizeObject(serial), m); err != nil {
			return err
		}
	}
	// Recorded before anything is erased: a zeroization is never
	// unaccounted for.
	if err := d.audit(s.user, op, serial, "started"); err != nil {
		return fmt.Errorf("zeroize: %w", err)
	}
	if err := d.commit(newContents()); err != nil {
		d.audit(s.user, op, serial, "error")
		return fmt.Errorf("zeroize: %w", err)
	}
	if err := d.removeFailures(); err != nil {
		// Harmless: a count holds only for the user record it was made
		// against, and those are gone.
		d.audit(s.user, op, serial, "failed-login counts not erased")
	}
	d.ep.cancel()
	d.ep = newEpoch()
	// Outstanding tokens were for the erased users; the spent ones stay
	// spent, so that a restore into the same cluster cannot replay them.
	d.tracker.Void()
	s.ended = true
	return d.audit(s.user, op, serial, "ok")
}
