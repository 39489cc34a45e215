package client

import (
	"net"
	"net/http"
	"testing"
)

// bare says what failed once, without the method, the URL or the
// address: real errors of http.Client.Do against a closed port and a peer
// that resets the connection.
func TestBareNamesTheFailureOnce(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := closed.Addr().String()
	closed.Close()

	resets, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer resets.Close()
	go func() {
		for {
			c, err := resets.Accept()
			if err != nil {
				return
			}
			c.Read(make([]byte, 4096)) // the whole request, then a reset
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}()

	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for _, c := range []struct{ addr, want string }{
		{refused, "dial: connect: connection refused"},
		{resets.Addr().String(), "read: connection reset by peer"},
	} {
		_, err := hc.Get("http://" + c.addr + "/v1/health")
		if err == nil {
			t.Fatalf("GET from %s succeeded", c.addr)
		}
		if got := bare(err).Error(); got != c.want {
			t.Errorf("bare(%q) = %q, want %q", err, got, c.want)
		}
	}
}
