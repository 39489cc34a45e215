package main

import (
	"context"
	"io"
	"os"
	"path"
	"strings"

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

// progress draws transfer bars on a terminal. A nil *progress draws
// nothing: that is what newProgress returns anywhere else (pipes, files,
// CI logs).
type progress struct{ p *mpb.Progress }

// newProgress returns the bars' container drawing on w if w is a terminal,
// and nil otherwise.
func newProgress(ctx context.Context, w io.Writer) *progress {
	if !isTerminal(w) {
		return nil
	}
	return &progress{mpb.NewWithContext(ctx, mpb.WithOutput(w))} // as wide as the terminal
}

// wrap returns st drawing a bar for every image object that passes
// through it, or st itself when p is off.
func (p *progress) wrap(st store.Store) store.Store {
	if p == nil {
		return st
	}
	return &progressStore{Store: st, p: p.p}
}

// logTo returns where logs go: above the bars while they are drawn, so
// that the two do not garble each other, else w.
func (p *progress) logTo(w io.Writer) io.Writer {
	if p == nil {
		return w
	}
	return p.p
}

// wait draws the bars a last time; call it when the command ends.
func (p *progress) wait() {
	if p != nil {
		p.p.Wait()
	}
}

// progressStore draws a bar for every image object transferred through
// it: uploads (backup create, copy) and downloads (verify, restore, copy).
// Manifests are too small to need one.
type progressStore struct {
	store.Store
	p *mpb.Progress
}

func (s *progressStore) bar(verb, key string, total int64) *mpb.Bar {
	// Name the backup, not the whole key: ".../backups/<id>/image".
	name := path.Base(path.Dir(key))
	return s.p.AddBar(total,
		mpb.PrependDecorators(decor.Name(verb+" "+name+" ")),
		mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f"), decor.Name(" "), decor.AverageSpeed(decor.SizeB1024(0), "% .1f")),
	)
}

func isImage(key string) bool { return strings.HasSuffix(key, "/"+backup.ImageObject) }

func (s *progressStore) Put(ctx context.Context, key string, r io.Reader, opts store.PutOptions) error {
	if !isImage(key) {
		return s.Store.Put(ctx, key, r, opts)
	}
	b := s.bar("upload", key, 0)
	pr, err := b.ProxyReader(r)
	if err != nil {
		return s.Store.Put(ctx, key, r, opts)
	}
	err = s.Store.Put(ctx, key, struct{ io.Reader }{pr}, opts) // hide Close
	if err != nil {
		b.Abort(false)
	} else {
		b.SetTotal(-1, true)
	}
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
	b := s.bar("read", key, total)
	pr, err := b.ProxyReader(rc)
	if err != nil {
		return rc, nil
	}
	return &barReadCloser{ReadCloser: pr, b: b}, nil
}

// barReadCloser ends its bar when closed: complete if read to the end,
// aborted otherwise.
type barReadCloser struct {
	io.ReadCloser
	b   *mpb.Bar
	eof bool
}

func (r *barReadCloser) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err == io.EOF {
		r.eof = true
	}
	return n, err
}

func (r *barReadCloser) Close() error {
	if r.eof {
		r.b.SetTotal(-1, true)
	} else {
		r.b.Abort(false)
	}
	return r.ReadCloser.Close()
}
