package cloud_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgfs/imgfs/cloud"
)

// fakeKeystone answers a v3 password authentication with a token and a
// catalog holding an image service (whose version document it also
// serves), and counts the versions requests and the open connections.
func fakeKeystone(t *testing.T) (srv *httptest.Server, open *atomic.Int64, discovery *atomic.Int64) {
	t.Helper()
	open, discovery = new(atomic.Int64), new(atomic.Int64)
	var states sync.Map
	mux := http.NewServeMux()
	srv = httptest.NewUnstartedServer(mux)
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
			states.Store(c, s)
		case http.StateClosed, http.StateHijacked:
			if _, ok := states.LoadAndDelete(c); ok {
				open.Add(-1)
			}
		}
	}
	mux.HandleFunc("POST /v3/auth/tokens", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Subject-Token", "fake-token")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"token": {"expires_at": %q, "methods": ["password"],
			"project": {"id": "p1", "name": "demo", "domain": {"id": "default", "name": "Default"}},
			"user": {"id": "u1", "name": "demo", "domain": {"id": "default", "name": "Default"}},
			"catalog": [{"type": "image", "name": "glance", "id": "s1", "endpoints": [
				{"id": "e1", "interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": %q}]}]}}`,
			time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "http://"+r.Host+"/image")
	})
	mux.HandleFunc("GET /image/", func(w http.ResponseWriter, r *http.Request) {
		discovery.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusMultipleChoices)
		fmt.Fprintf(w, `{"versions": [{"id": "v2.9", "status": "CURRENT", "links": [{"rel": "self", "href": "http://%s/image/v2/"}]}]}`, r.Host)
	})
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, open, discovery
}

func fakeEnv(t *testing.T, srv *httptest.Server) {
	t.Setenv("OS_CLOUD", "")
	t.Setenv("OS_CLIENT_CONFIG_FILE", "/nonexistent")
	t.Setenv("OS_AUTH_URL", srv.URL+"/v3")
	t.Setenv("OS_USERNAME", "demo")
	t.Setenv("OS_PASSWORD", "demopw")
	t.Setenv("OS_PROJECT_NAME", "demo")
	t.Setenv("OS_DOMAIN_NAME", "Default")
	t.Setenv("OS_REGION_NAME", "RegionOne")
}

// Connect leaves no idle connection to Keystone: a uwsgi Keystone with one
// worker would wait on it for 4 s before serving Glance's and Barbican's
// validations of the new token (the slow first calls of issue #14).
func TestConnectClosesKeystoneConnection(t *testing.T) {
	srv, open, _ := fakeKeystone(t)
	fakeEnv(t, srv)
	sess, err := cloud.Connect(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if sess.Provider.Token() != "fake-token" {
		t.Fatalf("token %q", sess.Provider.Token())
	}
	deadline := time.Now().Add(5 * time.Second)
	for open.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connection(s) to Keystone still open after Connect", open.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The image service client comes from the token's catalog, once per
// session: gophercloud's constructor asks the endpoint for its versions
// each time it makes one (a round trip before the first byte; OpenGlance
// made two).
func TestSessionServiceClientWithoutDiscovery(t *testing.T) {
	srv, _, discovery := fakeKeystone(t)
	fakeEnv(t, srv)
	sess, err := cloud.Connect(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		ic, err := sess.ImageService()
		if err != nil {
			t.Fatal(err)
		}
		if want := srv.URL + "/image/v2/"; ic.ResourceBase != want {
			t.Fatalf("image API at %s, want %s", ic.ResourceBase, want)
		}
	}
	if n := discovery.Load(); n != 0 {
		t.Fatalf("%d version discovery requests for 3 ImageService calls, want 0", n)
	}
}
