package cloud_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"

	"github.com/imgfs/imgfs/cloud"
)

// fakeBarbican serves one secret's metadata and payload, each answer
// delay late, and records how many requests were in flight at once. Its
// payload answers follow the real Barbican 15's: the stored bytes for
// application/octet-stream whatever the secret type, unless refuse406 names
// a content type it answers 406 to.
type fakeBarbican struct {
	typ, status string
	payload     []byte
	delay       time.Duration
	refuse406   string
	metaStatus  int // 0 = 200

	mu       sync.Mutex
	inFlight int
	maxIn    int
	accepts  []string
}

func (f *fakeBarbican) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.inFlight++
	f.maxIn = max(f.maxIn, f.inFlight)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inFlight--
		f.mu.Unlock()
	}()
	time.Sleep(f.delay)
	w.Header().Set("Connection", "close") // as Barbican's uwsgi does
	switch {
	case strings.HasSuffix(r.URL.Path, "/payload"):
		accept := r.Header.Get("Accept")
		f.mu.Lock()
		f.accepts = append(f.accepts, accept)
		f.mu.Unlock()
		if accept == f.refuse406 {
			http.Error(w, `{"code": 406}`, http.StatusNotAcceptable)
			return
		}
		w.Header().Set("Content-Type", accept)
		w.Write(f.payload)
	default:
		if f.metaStatus != 0 {
			http.Error(w, `{"code": 404}`, f.metaStatus)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status": "` + f.status + `", "secret_type": "` + f.typ + `", "name": "k"}`))
	}
}

func fakeClient(url string) *gophercloud.ServiceClient {
	return &gophercloud.ServiceClient{ProviderClient: &gophercloud.ProviderClient{HTTPClient: http.Client{}},
		Endpoint: url + "/", ResourceBase: url + "/v1/"}
}

// The metadata and the payload are asked for at the same time: two
// requests of 150 ms each take about 150 ms, not 300 (Barbican closes
// every connection, so at 20 ms of RTT each request in turn costs two
// round trips).
func TestBarbicanMetadataAndPayloadOverlap(t *testing.T) {
	f := &fakeBarbican{typ: "symmetric", status: "ACTIVE", payload: []byte{0, 0xff, 0x10}, delay: 150 * time.Millisecond}
	srv := httptest.NewServer(f)
	defer srv.Close()
	start := time.Now()
	got, err := cloud.Barbican{Client: fakeClient(srv.URL), SecretID: "11111111-2222-4333-8444-555555555555"}.Passphrase(context.Background())
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "00ff10" {
		t.Fatalf("passphrase %q, want 00ff10", got)
	}
	if f.maxIn != 2 || took >= 290*time.Millisecond {
		t.Fatalf("%d requests in flight at most, %v: the metadata and payload requests did not overlap", f.maxIn, took)
	}
}

// A Barbican that refuses octet-stream for a passphrase secret (406) is
// asked again with text/plain; the passphrase is exact either way.
func TestBarbicanPassphraseRetriesAsText(t *testing.T) {
	for _, refuse := range []string{"", "application/octet-stream"} {
		f := &fakeBarbican{typ: "passphrase", status: "ACTIVE", payload: []byte("pass ünï"), refuse406: refuse}
		srv := httptest.NewServer(f)
		got, err := cloud.Barbican{Client: fakeClient(srv.URL), SecretID: "11111111-2222-4333-8444-555555555555"}.Passphrase(context.Background())
		srv.Close()
		if err != nil || !bytes.Equal(got, []byte("pass ünï")) {
			t.Fatalf("refusing %q: passphrase %q, %v (asked as %q)", refuse, got, err, f.accepts)
		}
	}
	// Any other type is never asked for as text: a 406 is an error.
	f := &fakeBarbican{typ: "symmetric", status: "ACTIVE", payload: []byte{1}, refuse406: "application/octet-stream"}
	srv := httptest.NewServer(f)
	defer srv.Close()
	_, err := cloud.Barbican{Client: fakeClient(srv.URL), SecretID: "11111111-2222-4333-8444-555555555555"}.Passphrase(context.Background())
	if !errors.Is(err, cloud.ErrSecret) || !strings.Contains(err.Error(), "payload: HTTP 406") {
		t.Fatalf("symmetric secret refused as octet-stream: %v", err)
	}
}

// A failed metadata request is what the error names (its status), even
// though the payload came back meanwhile; the payload never shows; an
// inactive secret is refused.
func TestBarbicanMetadataErrorWins(t *testing.T) {
	f := &fakeBarbican{typ: "passphrase", status: "ACTIVE", payload: []byte("secret-payload-text"), metaStatus: http.StatusForbidden}
	srv := httptest.NewServer(f)
	defer srv.Close()
	_, err := cloud.Barbican{Client: fakeClient(srv.URL), SecretID: "11111111-2222-4333-8444-555555555555"}.Passphrase(context.Background())
	if !errors.Is(err, cloud.ErrSecret) || !strings.Contains(err.Error(), "metadata: HTTP 403 Forbidden (access denied)") ||
		strings.Contains(err.Error(), "secret-payload-text") {
		t.Fatalf("metadata refused: %v", err)
	}
	f2 := &fakeBarbican{typ: "passphrase", status: "PENDING", payload: []byte("secret-payload-text")}
	srv2 := httptest.NewServer(f2)
	defer srv2.Close()
	_, err = cloud.Barbican{Client: fakeClient(srv2.URL), SecretID: "11111111-2222-4333-8444-555555555555"}.Passphrase(context.Background())
	if !errors.Is(err, cloud.ErrSecret) || !strings.Contains(err.Error(), "status PENDING") || strings.Contains(err.Error(), "secret-payload-text") {
		t.Fatalf("pending secret: %v", err)
	}
}
