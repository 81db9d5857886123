package remote

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// connCounter is a server that counts the connections it accepted and
// those that closed.
func connCounter(t *testing.T) (srv *httptest.Server, accepted, closed *atomic.Int32) {
	accepted, closed = new(atomic.Int32), new(atomic.Int32)
	srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			accepted.Add(1)
		case http.StateClosed:
			closed.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, accepted, closed
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// A connection dialed ahead serves the next request that needs a new
// connection: the server sees one connection, not two. One nobody uses is
// closed after spareTTL.
func TestPreconnectServesTheNextRequest(t *testing.T) {
	srv, accepted, closed := connCounter(t)
	c := NewHTTPClient()
	defer c.CloseIdleConnections()
	Preconnect(c, srv.URL+"/image")
	waitFor(t, "the connection dialed ahead", func() bool { return accepted.Load() == 1 })
	resp, err := c.Get(srv.URL + "/image")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if n := accepted.Load(); n != 1 {
		t.Fatalf("%d connections for one request after Preconnect, want the one dialed ahead", n)
	}

	Preconnect(c, srv.URL+"/image") // not used: closed after spareTTL
	waitFor(t, "the second connection dialed ahead", func() bool { return accepted.Load() == 2 })
	time.Sleep(spareTTL + 200*time.Millisecond)
	if n := closed.Load(); n != 1 {
		t.Fatalf("%d connections closed, want the unused one", n)
	}
	// A client made elsewhere is left alone.
	Preconnect(&http.Client{}, srv.URL)
	Preconnect(c, "ftp://example.invalid/x")
	time.Sleep(50 * time.Millisecond)
	if n := accepted.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}
