package remote

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"sync"
	"time"
	"weak"
)

// spareTTL is how long a connection dialed ahead (Preconnect) waits to be
// used before it is closed: long enough for the round trip it is meant to
// save, short enough not to hold a server's worker (a uwsgi worker with
// one thread serves one connection at a time) for nothing.
const spareTTL = 3 * time.Second

// preDialer is the dialer of the transports NewHTTPClient makes: it hands
// out a connection dialed ahead by Preconnect, if one to the address is
// waiting, before dialing a new one.
type preDialer struct {
	d     net.Dialer
	mu    sync.Mutex
	spare map[string][]net.Conn
}

// preDialers maps the transports NewHTTPClient made to their dialers,
// without keeping a transport alive: an entry goes with its transport.
var preDialers sync.Map // weak.Pointer[http.Transport] → *preDialer

// registerPreDialer makes t dial through a new preDialer.
func registerPreDialer(t *http.Transport) {
	pd := &preDialer{d: net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}, spare: map[string][]net.Conn{}}
	t.DialContext = pd.DialContext
	key := weak.Make(t)
	preDialers.Store(key, pd)
	runtime.AddCleanup(t, func(k weak.Pointer[http.Transport]) { preDialers.Delete(k) }, key)
}

func (p *preDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if network == "tcp" {
		p.mu.Lock()
		if s := p.spare[addr]; len(s) > 0 {
			c := s[0]
			p.spare[addr] = s[1:]
			p.mu.Unlock()
			return c, nil
		}
		p.mu.Unlock()
	}
	return p.d.DialContext(ctx, network, addr)
}

// dialSpare dials addr and keeps the connection for the transport's next
// dial there, closing it if nobody took it within spareTTL.
func (p *preDialer) dialSpare(addr string) {
	ctx, cancel := context.WithTimeout(context.Background(), spareTTL)
	defer cancel()
	c, err := p.d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return // the request that needs it dials again and reports
	}
	p.mu.Lock()
	p.spare[addr] = append(p.spare[addr], c)
	p.mu.Unlock()
	time.AfterFunc(spareTTL, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for i, s := range p.spare[addr] {
			if s == c {
				p.spare[addr] = append(p.spare[addr][:i:i], p.spare[addr][i+1:]...)
				c.Close()
				return
			}
		}
	})
}

// Preconnect dials one more TCP connection to rawURL's server in the
// background, for client's next request there that finds no idle
// connection: a request that is known to come soon, in parallel with one
// under way (a LUKS image's first data while its keyslot is read), then
// does not wait a round trip for the connection. It does nothing for a
// client NewHTTPClient did not make, or behind an HTTP proxy.
func Preconnect(client *http.Client, rawURL string) {
	t, ok := client.Transport.(*http.Transport)
	if !ok {
		return
	}
	v, ok := preDialers.Load(weak.Make(t))
	if !ok {
		return
	}
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return
	}
	if t.Proxy != nil {
		if pu, err := t.Proxy(&http.Request{URL: u}); err != nil || pu != nil {
			return
		}
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	go v.(*preDialer).dialSpare(net.JoinHostPort(u.Hostname(), port))
}

// Preconnect dials one more connection to the server of h's URL in the
// background (see the function Preconnect).
func (h *HTTP) Preconnect() { Preconnect(h.client, h.url) }
