package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"reflect"
	"syscall"
	"time"

	"github.com/hsmbackup/hsmbackup/hsmcore/client"
)

// conn is a client of one HSM daemon, with what is needed to explain a
// failure to reach it.
type conn struct {
	*client.Client
	addr    string
	hasCert bool          // a client certificate is presented
	device  bool          // the daemon is trusted as an uninitialized device only
	timeout time.Duration // of each call (--timeout)
}

// defaultTimeout is the client's timeout when --timeout is not given
// (client.Config.Timeout 0).
const defaultTimeout = 30 * time.Second

// timeoutHint is the hint of a call that got no answer in time.
func timeoutHint(d time.Duration) string {
	return fmt.Sprintf("no answer within %s: is the HSM frozen or overloaded? --timeout sets the limit", cmp.Or(d, defaultTimeout))
}

// explain adds a hint to an error of a call that did not get an answer
// from the daemon, chosen by the error's type and sentinels, never its
// text. Answers the daemon gave (*client.RemoteError) speak for
// themselves.
func (cl *conn) explain(err error) error {
	var remote *client.RemoteError
	if err == nil || errors.As(err, &remote) || errors.Is(err, context.Canceled) {
		return err
	}
	alert, isAlert := tlsAlert(err)
	hint := ""
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		hint = timeoutHint(cl.timeout)
	case errors.Is(err, syscall.ECONNREFUSED):
		hint = "nothing listens there: is 'hsmbackup hsm serve' running?"
	case errors.Is(err, client.ErrDeviceOnly):
		hint = "the HSM proved only a device identity: passwords and session tokens go only to a member of the cluster, which presents the cluster certificate from --customer-ca"
	case errors.Is(err, client.ErrUntrusted) && cl.device:
		hint = "the HSM does not present a device certificate from the manufacturer root; if its cluster is initialized already, it presents the cluster certificate instead"
	case errors.Is(err, client.ErrUntrusted):
		hint = "the HSM's certificate is not from --customer-ca or does not name --cluster-id"
	case isAlert && alert == alertUnknownCA:
		hint = "the HSM does not trust the client certificate: it must be issued by the cluster's customer CA"
	case isAlert && alert == alertCertificateExpired:
		hint = "the HSM finds the client certificate expired"
	case !cl.hasCert && !cl.device:
		hint = "no client certificate was given: an initialized cluster requires one from its customer CA, with --cert and --key"
	case isAlert && alert == alertBadCertificate:
		hint = "the HSM refused the client certificate"
	}
	if hint == "" {
		return err
	}
	return fmt.Errorf("%w (%s)", err, hint)
}

// TLS alerts (RFC 8446, section 6) the HSM may send about the client
// certificate.
const (
	alertBadCertificate     tls.AlertError = 42
	alertCertificateExpired tls.AlertError = 45
	alertUnknownCA          tls.AlertError = 48
)

// tlsAlert returns the TLS alert the peer sent, if err is one. crypto/tls
// reports a received alert as a *net.OpError "remote error" holding a
// value of its unexported alert type (a uint8), which tls.AlertError
// mirrors; a wrapped tls.AlertError is taken as is.
func tlsAlert(err error) (tls.AlertError, bool) {
	if a, ok := errors.AsType[tls.AlertError](err); ok {
		return a, true
	}
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "remote error" || op.Err == nil {
		return 0, false
	}
	v := reflect.ValueOf(op.Err)
	if v.Kind() != reflect.Uint8 || v.Type().PkgPath() != "crypto/tls" {
		return 0, false
	}
	return tls.AlertError(v.Uint()), true
}
