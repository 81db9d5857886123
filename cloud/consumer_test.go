package cloud

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gophercloud/gophercloud/v2"
)

// A Barbican that refuses the consumer registration — 404 from one
// without the consumers API, 403, 500 — is an error naming the secret and
// the status, never a silent success. (A stand-in server: the real
// Barbican of the test cloud has the API and cannot be made to refuse.)
func TestAddSecretConsumerRefusedIsAnError(t *testing.T) {
	for _, status := range []int{404, 405, 403, 500} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/secrets/s-1/consumers") {
				t.Errorf("unexpected %s %s", r.Method, r.URL.Path)
			}
			w.WriteHeader(status)
		}))
		kc := &gophercloud.ServiceClient{ProviderClient: &gophercloud.ProviderClient{}, Endpoint: srv.URL + "/v1/"}
		err := AddSecretConsumer(context.Background(), kc, "s-1", "img-1")
		srv.Close()
		if err == nil || !strings.Contains(err.Error(), "s-1") || !strings.Contains(err.Error(), http.StatusText(status)) {
			t.Fatalf("HTTP %d: %v, want an error naming the secret and the status", status, err)
		}
	}
}
