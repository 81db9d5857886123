package cloud

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/imgfs/imgfs/keyring"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/keymanager/v1/secrets"
)

// ErrSecret means Barbican could not give the key: the secret does not
// exist, access is denied, or it has no payload.
var ErrSecret = errors.New("barbican secret unavailable")

// Barbican reads the passphrase from a Barbican secret: the payload as-is
// for secret_type "passphrase" (Accept: text/plain), the lowercase hex of
// the payload bytes for any other type (Accept: application/octet-stream),
// following os-brick. Errors name the secret and the HTTP status, never the
// payload.
type Barbican struct {
	// Client is a key-manager service client (openstack.NewKeyManagerV1).
	Client *gophercloud.ServiceClient
	// SecretID is the secret's UUID or its full href
	// (https://barbican/v1/secrets/<uuid>).
	SecretID string
}

// SecretUUID returns the secret's UUID from an id or href.
func (b Barbican) SecretUUID() string {
	id := strings.TrimRight(strings.TrimSpace(b.SecretID), "/")
	if i := strings.LastIndex(id, "/"); i >= 0 {
		id = id[i+1:]
	}
	return id
}

func (b Barbican) String() string { return "barbican secret " + b.SecretUUID() }

// Passphrase implements Source.
func (b Barbican) Passphrase(ctx context.Context) ([]byte, error) {
	id := b.SecretUUID()
	if id == "" || strings.ContainsAny(id, "?#") {
		return nil, fmt.Errorf("barbican secret id %q is not valid: %w", b.SecretID, ErrSecret)
	}
	if b.Client == nil {
		return nil, fmt.Errorf("%s: no key-manager client: %w", b, ErrSecret)
	}
	meta, err := secrets.Get(ctx, b.Client, id).Extract()
	if err != nil {
		return nil, b.apiError("metadata", err)
	}
	if meta.Status != "" && !strings.EqualFold(meta.Status, "ACTIVE") {
		return nil, fmt.Errorf("%s: status %s: %w", b, meta.Status, ErrSecret)
	}
	accept := "application/octet-stream"
	if meta.SecretType == "passphrase" {
		accept = "text/plain"
	}
	payload, err := secrets.GetPayload(ctx, b.Client, id, secrets.GetPayloadOpts{PayloadContentType: accept}).Extract()
	if err != nil {
		return nil, b.apiError("payload", err)
	}
	defer keyring.Zero(payload)
	if len(payload) == 0 {
		return nil, fmt.Errorf("%s: empty payload: %w", b, keyring.ErrEmptyPassphrase)
	}
	return keyring.PassphraseFromSecret(meta.SecretType, payload), nil
}

// apiError words a failed request by status only: Barbican's error bodies
// are not needed and a payload must never reach a message.
func (b Barbican) apiError(what string, err error) error {
	var ue gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &ue) {
		hint := ""
		switch ue.Actual {
		case http.StatusNotFound:
			hint = " (no such secret)"
		case http.StatusForbidden:
			hint = " (access denied)"
		case http.StatusUnauthorized:
			hint = " (authentication failed)"
		}
		return fmt.Errorf("%s: %s: HTTP %d %s%s: %w", b, what, ue.Actual, http.StatusText(ue.Actual), hint, ErrSecret)
	}
	// Not an HTTP answer (connection refused, no endpoint, a cancelled
	// context): such errors cannot hold a payload.
	return fmt.Errorf("%s: %s: %v: %w", b, what, err, ErrSecret)
}
