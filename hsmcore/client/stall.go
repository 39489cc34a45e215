package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore"
	"github.com/hsmbackup/hsmbackup/hsmcore/api"
)

// watchdog cancels a transfer's context when its timer, armed for d,
// fires. Its context then ends with ErrStalled as the cause.
type watchdog struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	timer  *time.Timer
	d      time.Duration
}

// newWatchdog returns a watchdog whose timer is running.
func newWatchdog(ctx context.Context, d time.Duration) *watchdog {
	ctx, cancel := context.WithCancelCause(ctx)
	w := &watchdog{ctx: ctx, cancel: cancel, d: d}
	w.timer = time.AfterFunc(d, func() { cancel(fmt.Errorf("%w: no progress for %v", ErrStalled, d)) })
	return w
}

func (w *watchdog) arm()    { w.timer.Reset(w.d) }
func (w *watchdog) disarm() { w.timer.Stop() }

// stop ends the watch and releases the context.
func (w *watchdog) stop() {
	w.timer.Stop()
	w.cancel(context.Canceled)
}

// explain returns the stall, if that is what ended the transfer, else err.
// The stall's error does not wrap err, the context.Canceled it ended
// with: nobody interrupted the caller.
func (w *watchdog) explain(err error) error {
	if cause := context.Cause(w.ctx); err != nil && errors.Is(cause, ErrStalled) {
		return fmt.Errorf("%w (%v)", cause, err)
	}
	return err
}

// exportBody is an export's body. Only the HSM is timed: the watchdog runs
// while a Read waits for it, not while the caller is busy elsewhere (a
// store uploading a part, say). Close stops the watchdog.
type exportBody struct {
	body io.ReadCloser
	w    *watchdog
	resp *http.Response
	eof  bool
}

func (b *exportBody) Read(p []byte) (int, error) {
	b.w.arm()
	n, err := b.body.Read(p)
	b.w.disarm()
	if err == io.EOF {
		b.eof = true
	} else if err != nil {
		err = b.w.explain(err)
	}
	return n, err
}

// ImageStatement returns the statement the daemon sent in the trailers;
// they are there only once the body was read to io.EOF.
func (b *exportBody) ImageStatement() (*hsmcore.SignedImageStatement, error) {
	if !b.eof {
		return nil, fmt.Errorf("image statement: the image was not read to its end: %w", hsmcore.ErrTruncated)
	}
	return api.ImageStatement(b.resp.Trailer)
}

func (b *exportBody) Close() error {
	b.w.stop()
	return b.body.Close()
}

// importBody is an import's body. Only the HSM is timed: the watchdog
// runs between the reads the HTTP transport makes, as the HSM takes in
// what was sent, and after the end while it checks and commits; not while
// a Read waits for the caller's source (a store, say).
type importBody struct {
	r io.Reader
	w *watchdog
}

func (b *importBody) Read(p []byte) (int, error) {
	b.w.disarm()
	n, err := b.r.Read(p)
	b.w.arm()
	return n, err
}
