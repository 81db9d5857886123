package cloud

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"path"
	"strings"
	"sync"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"
	"github.com/gophercloud/gophercloud/v2/openstack/keymanager/v1/secrets"

	"github.com/imgfs/imgfs/keyring"
)

// BarbicanKey returns a key source for the Barbican secret id (UUID or
// href). It connects — to the cloud named cloudName unless sess is given,
// then to the key manager — only when the passphrase is first needed, so
// describing an image works without Barbican.
func BarbicanKey(cloudName string, sess *Session, id string) keyring.Source {
	return &lazyBarbican{cloudName: cloudName, sess: sess, b: Barbican{SecretID: id}}
}

// lazyBarbican is a Barbican whose client is made on first use.
type lazyBarbican struct {
	cloudName string
	mu        sync.Mutex
	sess      *Session
	b         Barbican
}

func (l *lazyBarbican) String() string { return l.b.String() }

// Passphrase implements keyring.Source.
func (l *lazyBarbican) Passphrase(ctx context.Context) ([]byte, error) {
	l.mu.Lock()
	if l.b.Client == nil {
		if l.sess == nil {
			sess, err := Connect(ctx, l.cloudName)
			if err != nil {
				l.mu.Unlock()
				return nil, fmt.Errorf("%s: %w", l.b, err)
			}
			l.sess = sess
		}
		client, err := l.sess.KeyManager()
		if err != nil {
			l.mu.Unlock()
			return nil, fmt.Errorf("%s: %w", l.b, err)
		}
		l.b.Client = client
	}
	b := l.b
	l.mu.Unlock()
	return b.Passphrase(ctx)
}

// KeyManager returns the Barbican client of the session's cloud, made once
// per session (see serviceClient).
func (c *Session) KeyManager() (*gophercloud.ServiceClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.keys == nil {
		kc, err := c.serviceClient("key-manager", "v1/", openstack.NewKeyManagerV1)
		if err != nil {
			return nil, fmt.Errorf("no key manager (Barbican) in the catalog of cloud %s: %w", c.Name, err)
		}
		c.keys = kc
	}
	return c.keys, nil
}

// ImageService returns the Glance client of the session's cloud, made once
// per session (see serviceClient).
func (c *Session) ImageService() (*gophercloud.ServiceClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.images == nil {
		ic, err := c.serviceClient("image", "v2/", openstack.NewImageV2)
		if err != nil {
			return nil, fmt.Errorf("no image service (Glance) in the catalog of cloud %s: %w", c.Name, err)
		}
		c.images = ic
	}
	return c.images, nil
}

// serviceClient makes the client of service type typ, whose API is under
// apiPath of its endpoint, from the catalog of the session's token.
// gophercloud's own constructor (fallback) first asks the endpoint which
// versions it serves (GET /, a round trip before the first byte, every
// time); Glance's only API is v2 and Barbican's v1, so the catalog's
// endpoint is used as is, as fallback would use it; fallback is used when
// the token carries no v3 catalog.
func (c *Session) serviceClient(typ, apiPath string, fallback func(*gophercloud.ProviderClient, gophercloud.EndpointOpts) (*gophercloud.ServiceClient, error)) (*gophercloud.ServiceClient, error) {
	if ar, ok := c.Provider.GetAuthResult().(interface {
		ExtractServiceCatalog() (*tokens.ServiceCatalog, error)
	}); ok {
		if catalog, err := ar.ExtractServiceCatalog(); err == nil && catalog != nil {
			eo := c.Endpoint
			eo.ApplyDefaults(typ)
			eo.Version = 0 // no version discovery: no request to the endpoint
			if url, err := openstack.V3Endpoint(context.Background(), c.Provider, catalog, eo); err == nil {
				return &gophercloud.ServiceClient{ProviderClient: c.Provider, Endpoint: url, Type: typ, ResourceBase: url + apiPath}, nil
			}
		}
	}
	return fallback(c.Provider, c.Endpoint)
}

// Secret is a Barbican secret that holds an image key, with the LUKS
// passphrase derived from it by the os-brick rule. Close zeroes the
// passphrase.
type Secret struct {
	ID   string // UUID
	Type string // secret_type: passphrase, symmetric, ...
	// Created is true when this run made the secret (so a failed upload
	// deletes it again).
	Created bool
	// Passphrase is the LUKS passphrase: the payload of a passphrase
	// secret, the lowercase hex of any other type's payload.
	Passphrase []byte
}

// Close zeroes the passphrase.
func (s *Secret) Close() { keyring.Zero(s.Passphrase) }

// ExistingSecret reads the secret id (UUID or href) and its passphrase.
func ExistingSecret(ctx context.Context, kc *gophercloud.ServiceClient, id string) (*Secret, error) {
	b := Barbican{Client: kc, SecretID: id}
	pass, err := b.Passphrase(ctx)
	if err != nil {
		return nil, err
	}
	meta, err := secrets.Get(ctx, kc, b.SecretUUID()).Extract()
	if err != nil {
		keyring.Zero(pass)
		return nil, fmt.Errorf("%s: %s", b, DescribeAPIError(err))
	}
	return &Secret{ID: b.SecretUUID(), Type: meta.SecretType, Passphrase: pass}, nil
}

// NewPassphraseSecret stores pass (UTF-8 text) as a new Barbican secret of
// type passphrase; the passphrase is pass itself. pass is not zeroed.
func NewPassphraseSecret(ctx context.Context, kc *gophercloud.ServiceClient, name string, pass []byte) (*Secret, error) {
	opts := secrets.CreateOpts{Name: name, SecretType: secrets.PassphraseSecret,
		Payload: string(pass), PayloadContentType: "text/plain"}
	return createSecret(ctx, kc, opts, append([]byte(nil), pass...))
}

// NewSymmetricSecret stores raw (nil: 32 new random bytes, as Nova and
// Cinder make them) as a new symmetric aes secret; the passphrase is its
// lowercase hex. raw is not zeroed.
func NewSymmetricSecret(ctx context.Context, kc *gophercloud.ServiceClient, name string, raw []byte) (*Secret, error) {
	if raw == nil {
		raw = make([]byte, 32)
		defer keyring.Zero(raw)
		if _, err := rand.Read(raw); err != nil {
			return nil, fmt.Errorf("random key: %w", err)
		}
	}
	opts := secrets.CreateOpts{Name: name, SecretType: secrets.SymmetricSecret,
		Payload:            base64.StdEncoding.EncodeToString(raw),
		PayloadContentType: "application/octet-stream", PayloadContentEncoding: "base64",
		Algorithm: "aes", BitLength: len(raw) * 8, Mode: "xts"}
	return createSecret(ctx, kc, opts, keyring.PassphraseFromSecret("symmetric", raw))
}

func createSecret(ctx context.Context, kc *gophercloud.ServiceClient, opts secrets.CreateOpts, pass []byte) (*Secret, error) {
	s, err := secrets.Create(ctx, kc, opts).Extract()
	if err != nil {
		keyring.Zero(pass)
		return nil, fmt.Errorf("barbican secret create: %s", DescribeAPIError(err))
	}
	id := path.Base(strings.TrimRight(s.SecretRef, "/"))
	return &Secret{ID: id, Type: string(opts.SecretType), Created: true, Passphrase: pass}, nil
}

// DeleteSecret deletes a secret (one made for an upload that failed).
func DeleteSecret(ctx context.Context, kc *gophercloud.ServiceClient, id string) error {
	if err := secrets.Delete(ctx, kc, id).ExtractErr(); err != nil {
		return fmt.Errorf("barbican secret %s: delete: %s", id, DescribeAPIError(err))
	}
	return nil
}

// AddSecretConsumer registers the image as a consumer of the secret
// (Barbican's secret consumers API), so that the secret is not deleted
// while the image needs it. A Barbican without the API (404, 405) fails
// like any other error: callers that accept that skip the call.
func AddSecretConsumer(ctx context.Context, kc *gophercloud.ServiceClient, secretID, imageID string) error {
	body := map[string]string{"service": "image", "resource_type": "image", "resource_id": imageID}
	_, err := kc.Post(ctx, kc.ServiceURL("secrets", secretID, "consumers"), body, nil,
		&gophercloud.RequestOpts{OkCodes: []int{200, 201, 202}})
	if err == nil {
		return nil
	}
	hint := ""
	switch HTTPStatus(err) {
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		hint = " (this Barbican may lack the secret consumers API)"
	}
	return fmt.Errorf("barbican secret %s: registering image %s as a consumer failed: %s%s", secretID, imageID, DescribeAPIError(err), hint)
}
