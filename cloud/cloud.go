package cloud

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"

	"github.com/imgfs/imgfs/blockdev/remote"
)

// Session is an authenticated OpenStack session: the provider client whose
// token the Glance and Barbican requests carry, and where to find endpoints.
type Session struct {
	Provider *gophercloud.ProviderClient
	Endpoint gophercloud.EndpointOpts
	// Name is the clouds.yaml entry used, or "OS_* environment".
	Name string
	// HTTP is the client for data requests (keep-alive, the cloud's TLS).
	HTTP *http.Client

	mu     sync.Mutex
	images *gophercloud.ServiceClient // ImageService, made once
	keys   *gophercloud.ServiceClient // KeyManager, made once
}

// Connect authenticates from clouds.yaml when a cloud name is given
// (or OS_CLOUD is set; OS_CLIENT_CONFIG_FILE names the file), else from the
// OS_* environment variables. The token is renewed when it expires.
func Connect(ctx context.Context, name string) (*Session, error) {
	if name == "" {
		name = os.Getenv("OS_CLOUD")
	}
	var (
		ao  gophercloud.AuthOptions
		eo  gophercloud.EndpointOpts
		err error
	)
	hc := remote.NewHTTPClient()
	switch {
	case name != "":
		var tlsc = hc.Transport.(*http.Transport).TLSClientConfig
		ao, eo, tlsc, err = clouds.Parse(clouds.WithCloudName(name))
		if err != nil {
			return nil, fmt.Errorf("cloud %q: %w", name, err)
		}
		if tlsc != nil {
			hc.Transport.(*http.Transport).TLSClientConfig = tlsc
		}
	case os.Getenv("OS_AUTH_URL") != "":
		name = "OS_* environment"
		// gophercloud reads only OS_DOMAIN_NAME/OS_DOMAIN_ID; openrc files
		// usually set the user and project domain instead.
		if os.Getenv("OS_DOMAIN_NAME") == "" && os.Getenv("OS_DOMAIN_ID") == "" && os.Getenv("OS_PROJECT_ID") == "" {
			for _, v := range []string{"OS_USER_DOMAIN_NAME", "OS_PROJECT_DOMAIN_NAME"} {
				if d := os.Getenv(v); d != "" {
					os.Setenv("OS_DOMAIN_NAME", d)
					break
				}
			}
		}
		ao, err = openstack.AuthOptionsFromEnv()
		if err != nil {
			return nil, fmt.Errorf("OpenStack credentials from OS_* variables: %w", err)
		}
		eo = gophercloud.EndpointOpts{Region: os.Getenv("OS_REGION_NAME")}
		switch strings.TrimSuffix(os.Getenv("OS_INTERFACE"), "URL") {
		case "internal":
			eo.Availability = gophercloud.AvailabilityInternal
		case "admin":
			eo.Availability = gophercloud.AvailabilityAdmin
		}
	default:
		return nil, errors.New("no OpenStack credentials: use --os-cloud (or OS_CLOUD) with a clouds.yaml, or set OS_AUTH_URL and the other OS_* variables")
	}
	ao.AllowReauth = true
	pc, err := openstack.NewClient(ao.IdentityEndpoint)
	if err != nil {
		return nil, fmt.Errorf("cloud %s: %w", name, err)
	}
	pc.HTTPClient = *hc
	if err := openstack.Authenticate(ctx, pc, ao); err != nil {
		return nil, fmt.Errorf("cloud %s: authentication at %s failed: %s", name, remote.RedactURL(ao.IdentityEndpoint), DescribeAPIError(err))
	}
	// Do not keep the connection to Keystone open: it is not needed again
	// until the token is renewed, and a Keystone served by uwsgi's
	// http11-socket with one worker (a small or test deployment) waits on
	// an idle keep-alive connection for its socket timeout, 4 s, before it
	// serves anyone else, such as Glance and Barbican validating this very
	// token. Nothing but Keystone has been contacted yet.
	hc.CloseIdleConnections()
	return &Session{Provider: pc, Endpoint: eo, Name: name, HTTP: hc}, nil
}

// TokenSource returns the session's token for HTTP sources; Renew
// re-authenticates (once for all readers that saw the same stale token).
func (c *Session) TokenSource() remote.TokenSource { return providerToken{c.Provider} }

type providerToken struct{ pc *gophercloud.ProviderClient }

func (p providerToken) Token(context.Context) (string, error) { return p.pc.Token(), nil }

func (p providerToken) Renew(ctx context.Context, stale string) (string, error) {
	if err := p.pc.Reauthenticate(ctx, stale); err != nil {
		return "", fmt.Errorf("re-authentication: %s", DescribeAPIError(err))
	}
	return p.pc.Token(), nil
}

// HTTPStatus returns the HTTP status of a gophercloud error, or 0.
func HTTPStatus(err error) int {
	var ue gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &ue) {
		return ue.Actual
	}
	return 0
}

// DescribeAPIError words a gophercloud error without its response body
// (which for some services echoes request data) and without tokens.
func DescribeAPIError(err error) string {
	var ue gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &ue) {
		return fmt.Sprintf("HTTP %d %s from %s %s", ue.Actual, http.StatusText(ue.Actual), ue.Method, remote.RedactURL(ue.URL))
	}
	return err.Error()
}
