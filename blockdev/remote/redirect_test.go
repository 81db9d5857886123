package remote

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

type fixedToken string

func (f fixedToken) Token(context.Context) (string, error)         { return string(f), nil }
func (f fixedToken) Renew(context.Context, string) (string, error) { return string(f), nil }

// A server that redirects to another host must not hand that host the
// token: the second server sees no credentials (as with curl), for the
// default header and for a custom one.
func TestRedirectToAnotherHostDropsTheToken(t *testing.T) {
	data := testData(256<<10, 3)
	for _, header := range []string{"", "X-Custom-Token"} {
		var leaked atomic.Int64
		other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for name := range r.Header {
				if strings.Contains(strings.ToLower(name), "token") || name == "Authorization" {
					leaked.Add(1)
				}
			}
			http.ServeContent(w, r, "x", time.Time{}, bytes.NewReader(data))
		}))
		defer other.Close()
		// Same address, other host name: "localhost" instead of 127.0.0.1.
		u, _ := url.Parse(other.URL)
		target := "http://localhost:" + u.Port() + "/image"
		var sawToken atomic.Int64
		first := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-Auth-Token") != "" || r.Header.Get("X-Custom-Token") != "" {
				sawToken.Add(1)
			}
			http.Redirect(w, r, target, http.StatusFound)
		}))
		defer first.Close()
		h, err := OpenHTTP(context.Background(), first.URL+"/image", HTTPOptions{Token: fixedToken("secret-token"), TokenHeader: header, Retry: fastRetry})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(data))
		if _, err := h.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		h.Close()
		if sawToken.Load() == 0 {
			t.Fatalf("header %q: the first server never saw the token: the test proves nothing", header)
		}
		if n := leaked.Load(); n != 0 {
			t.Fatalf("header %q: the token reached the other host %d times", header, n)
		}
	}
}

// https is never downgraded to http on a redirect.
func TestRedirectRefusesHTTPSToHTTP(t *testing.T) {
	from, _ := http.NewRequest(http.MethodGet, "https://glance.example/v2/images/x/file", nil)
	to, _ := http.NewRequest(http.MethodGet, "http://glance.example/v2/images/x/file", nil)
	if err := checkRedirect(to, []*http.Request{from}); err == nil || !strings.Contains(err.Error(), "https") {
		t.Fatalf("https→http redirect: %v, want a refusal", err)
	}
	same, _ := http.NewRequest(http.MethodGet, "https://glance.example/other", nil)
	same.Header.Set("X-Auth-Token", "t")
	if err := checkRedirect(same, []*http.Request{from}); err != nil || same.Header.Get("X-Auth-Token") != "t" {
		t.Fatalf("same-host redirect: %v, token %q; want it kept", err, same.Header.Get("X-Auth-Token"))
	}
}
