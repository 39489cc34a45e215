package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/hsmbackup/hsmbackup/backup"
	"github.com/hsmbackup/hsmbackup/store"
)

// isTerminal reports whether w is a character device (a terminal), where
// progress bars are drawn; elsewhere (pipes, files, CI logs) they are not.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progress draws transfer bars on a terminal: one bar per image object,
// however many times it is read (a restore reads it to verify it, then to
// stream it). A nil *progress draws nothing: that is what newProgress
// returns anywhere else (pipes, files, CI logs) and under --json or
// --quiet.
type progress struct {
	p    *mpb.Progress
	w    io.Writer // where the bars are drawn
	once sync.Once
	done atomic.Bool // the bars are finished: logs go straight to w

	mu   sync.Mutex
	bars map[string]*objectBar // by key
}

// newProgress returns the bars' container drawing on w if w is a terminal
// and off is false, and nil otherwise.
func newProgress(ctx context.Context, w io.Writer, off bool) *progress {
	if off || !isTerminal(w) {
		return nil
	}
	return &progress{p: mpb.NewWithContext(ctx, mpb.WithOutput(w)), w: w, bars: map[string]*objectBar{}} // as wide as the terminal
}

// wrap returns st drawing a bar for every image object that passes
// through it, or st itself when p is off.
func (p *progress) wrap(st store.Store) store.Store {
	if p == nil {
		return st
	}
	return &progressStore{Store: st, p: p}
}

// logTo returns where logs go: above the bars while they are drawn, so
// that the two do not garble each other, then w itself.
func (p *progress) logTo(w io.Writer) io.Writer {
	if p == nil {
		return w
	}
	return &aboveBars{p: p, w: w}
}

// resultsTo returns where results go (stdout): w, but the bars are
// finished before the first write, so that the result is printed after
// them and no redraw of theirs erases it.
func (p *progress) resultsTo(w io.Writer) io.Writer {
	if p == nil {
		return w
	}
	return &afterBars{p: p, w: w}
}

// wait finishes the bars (those not ended yet: completed if their object
// was read or written to the end, else aborted) and draws them a last
// time. Later calls do nothing; call it when the command ends.
func (p *progress) wait() {
	if p == nil {
		return
	}
	p.once.Do(func() {
		p.mu.Lock()
		for _, b := range p.bars {
			b.finish()
		}
		p.mu.Unlock()
		p.p.Wait()
		p.done.Store(true)
	})
}

type aboveBars struct {
	p *progress
	w io.Writer
}

func (a *aboveBars) Write(b []byte) (int, error) {
	if !a.p.done.Load() {
		switch started, active := a.p.state(); {
		case active:
			if n, err := a.p.p.Write(b); err == nil {
				return n, nil
			}
		case started:
			// Every bar has ended: finish them, so that no last redraw
			// takes the line (mpb shows lines written to it only while a
			// bar is drawn).
			a.p.wait()
		}
	}
	return a.w.Write(b)
}

// state reports whether a bar was started, and whether one is still being
// drawn.
func (p *progress) state() (started, active bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, o := range p.bars {
		o.mu.Lock()
		ended := o.ended
		o.mu.Unlock()
		if !ended {
			return true, true
		}
	}
	return len(p.bars) > 0, false
}

type afterBars struct {
	p *progress
	w io.Writer
}

func (a *afterBars) Write(b []byte) (int, error) {
	a.p.wait()
	return a.w.Write(b)
}

// objectBar is the bar of one image object.
type objectBar struct {
	b     *mpb.Bar
	label atomic.Value // string: what is being done, and to which backup
	total int64        // 0: unknown
	mu    sync.Mutex
	whole bool // the last transfer reached the end
	ended bool
}

// finish ends the bar: complete if its last transfer reached the end,
// aborted (left as it was drawn) otherwise.
func (o *objectBar) finish() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ended {
		return
	}
	o.ended = true
	if o.whole {
		o.b.SetTotal(-1, true)
	} else {
		o.b.Abort(false)
	}
}

// progressStore draws a bar for every image object transferred through
// it: uploads (backup create, copy) and downloads (verify, restore, copy).
// Manifests are too small to need one.
type progressStore struct {
	store.Store
	p *progress
}

// Unwrap implements store.Wrapper, so that store.As reaches the store's
// optional interfaces (store.ObjectLocker…) through the bars.
func (s *progressStore) Unwrap() store.Store { return s.Store }

// bar returns the bar of key, labelled verb: a new one, or the one key
// already has, started again, so that an object read twice has one bar.
// It returns nil once the bars are finished.
func (s *progressStore) bar(verb, key string, total int64) *objectBar {
	// Name the backup, not the whole key: ".../backups/<id>/image".
	name := path.Base(path.Dir(key))
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	if o := s.p.bars[key]; o != nil && !o.ended {
		if o.label.Load() == verb+" "+name {
			verb = "re" + verb
		}
		o.label.Store(verb + " " + name)
		o.mu.Lock()
		o.whole = false
		o.mu.Unlock()
		o.b.SetCurrent(0)
		return o
	}
	o := &objectBar{total: total}
	o.label.Store(verb + " " + name)
	b, err := s.p.p.Add(0, mpb.BarStyle().Build(), // total 0: only SetTotal(-1, true) completes it
		mpb.PrependDecorators(decor.Any(func(decor.Statistics) string { return o.label.Load().(string) + " " })),
		mpb.AppendDecorators(decor.Any(func(st decor.Statistics) string { return countText(st.Current, o.total) }),
			decor.Name(" "), decor.AverageSpeed(decor.SizeB1024(0), "% .1f")),
	)
	if err != nil {
		return nil // the bars are finished
	}
	if total > 0 {
		b.SetTotal(total, false)
	}
	o.b = b
	s.p.bars[key] = o
	return o
}

// countText is a transfer's count: "1.2 MiB / 1.4 MiB", or, if the total
// is not known (an upload streamed as it is made), "1.2 MiB".
func countText(n, total int64) string {
	if total <= 0 {
		return fmt.Sprintf("% .1f", decor.SizeB1024(n))
	}
	return fmt.Sprintf("% .1f / % .1f", decor.SizeB1024(n), decor.SizeB1024(total))
}

func isImage(key string) bool { return strings.HasSuffix(key, "/"+backup.ImageObject) }

func (s *progressStore) Put(ctx context.Context, key string, r io.Reader, opts store.PutOptions) error {
	if !isImage(key) {
		return s.Store.Put(ctx, key, r, opts)
	}
	o := s.bar("upload", key, 0) // the size of a streamed upload is not known
	if o == nil {
		return s.Store.Put(ctx, key, r, opts)
	}
	pr, err := o.b.ProxyReader(r)
	if err != nil {
		return s.Store.Put(ctx, key, r, opts)
	}
	err = s.Store.Put(ctx, key, struct{ io.Reader }{pr}, opts) // hide Close
	o.mu.Lock()
	o.whole = err == nil
	o.mu.Unlock()
	o.finish()
	return err
}

func (s *progressStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := s.Store.Get(ctx, key)
	if err != nil || !isImage(key) {
		return rc, err
	}
	var total int64
	if oi, err := s.Store.Stat(ctx, key); err == nil {
		total = oi.Size
	}
	o := s.bar("read", key, total)
	if o == nil {
		return rc, nil
	}
	pr, err := o.b.ProxyReader(rc)
	if err != nil {
		return rc, nil
	}
	return &barReadCloser{ReadCloser: pr, o: o}, nil
}

// barReadCloser marks its bar whole when read to the end; the bar ends
// when the bars are finished (progress.wait), or starts again if the
// object is read again.
type barReadCloser struct {
	io.ReadCloser
	o *objectBar
}

func (r *barReadCloser) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err == io.EOF {
		r.o.mu.Lock()
		r.o.whole = true
		r.o.mu.Unlock()
	}
	return n, err
}
