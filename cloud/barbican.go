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
// for secret_type "passphrase", the lowercase hex of the payload bytes for
// any other type, following os-brick. The secret's metadata (its type and
// status) and its payload are asked for at the same time: the payload is
// asked for as application/octet-stream, which Barbican answers with the
// stored bytes for every secret type (a passphrase's UTF-8 text included),
// so the type is needed only to word the passphrase, not to ask for it.
// Errors name the secret and the HTTP status, never the payload.
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

// Payload content types: octet-stream gives any secret's bytes; text/plain
// is what a Barbican that refuses octet-stream for a passphrase (406) is
// asked again with.
const (
	payloadBinary = "application/octet-stream"
	payloadText   = "text/plain"
)

// Passphrase implements Source. The metadata and payload requests run in
// parallel (Barbican's uwsgi closes every connection, so each costs a
// connect and a round trip); a metadata error is reported first, as when
// the two were asked in turn.
func (b Barbican) Passphrase(ctx context.Context) ([]byte, error) {
	id := b.SecretUUID()
	if id == "" || strings.ContainsAny(id, "?#") {
		return nil, fmt.Errorf("barbican secret id %q is not valid: %w", b.SecretID, ErrSecret)
	}
	if b.Client == nil {
		return nil, fmt.Errorf("%s: no key-manager client: %w", b, ErrSecret)
	}
	var (
		payload []byte
		payErr  error
		fetched = make(chan struct{})
	)
	go func() {
		defer close(fetched)
		payload, payErr = b.payload(ctx, id, payloadBinary)
	}()
	meta, err := secrets.Get(ctx, b.Client, id).Extract()
	<-fetched
	defer func() { keyring.Zero(payload) }()
	if err != nil {
		return nil, b.apiError("metadata", err)
	}
	if meta.Status != "" && !strings.EqualFold(meta.Status, "ACTIVE") {
		return nil, fmt.Errorf("%s: status %s: %w", b, meta.Status, ErrSecret)
	}
	if HTTPStatus(payErr) == http.StatusNotAcceptable && meta.SecretType == "passphrase" {
		payload, payErr = b.payload(ctx, id, payloadText)
	}
	if payErr != nil {
		return nil, b.apiError("payload", payErr)
	}
	if len(payload) == 0 {
		return nil, fmt.Errorf("%s: empty payload: %w", b, keyring.ErrEmptyPassphrase)
	}
	return keyring.PassphraseFromSecret(meta.SecretType, payload), nil
}

// payload asks for the secret's payload as content type accept.
func (b Barbican) payload(ctx context.Context, id, accept string) ([]byte, error) {
	return secrets.GetPayload(ctx, b.Client, id, secrets.GetPayloadOpts{PayloadContentType: accept}).Extract()
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
