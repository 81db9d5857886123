package cloud_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path"
	"strings"
	"testing"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/keymanager/v1/secrets"

	"github.com/imgfs/imgfs/cloud"
)

// barbican connects to the real Barbican of the test cloud that
// tests/with-cloud.sh starts; without it the test fails in CI and skips
// loudly elsewhere.
func barbican(t *testing.T, cloudName string) *gophercloud.ServiceClient {
	t.Helper()
	if os.Getenv("IMGFS_TEST_CLOUD") != "1" {
		if os.Getenv("CI") == "true" {
			t.Fatal("no test cloud: run the tests through tests/with-cloud.sh, as `make test` does")
		}
		t.Skip("SKIP: no local OpenStack cloud: run `tests/with-cloud.sh go test ./cloud/` to test Barbican")
	}
	c, err := cloud.Connect(context.Background(), cloudName)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := openstack.NewKeyManagerV1(c.Provider, c.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

func store(t *testing.T, kc *gophercloud.ServiceClient, typ string, payload []byte) (id, ref string) {
	t.Helper()
	opts := secrets.CreateOpts{Name: "imgfs-keyring-test", SecretType: secrets.SecretType(typ)}
	if typ == "passphrase" {
		opts.Payload, opts.PayloadContentType = string(payload), "text/plain"
	} else {
		opts.Payload = base64.StdEncoding.EncodeToString(payload)
		opts.PayloadContentType, opts.PayloadContentEncoding = "application/octet-stream", "base64"
		opts.Algorithm, opts.BitLength, opts.Mode = "aes", len(payload)*8, "cbc"
	}
	s, err := secrets.Create(context.Background(), kc, opts).Extract()
	if err != nil {
		t.Fatal(err)
	}
	id = path.Base(s.SecretRef)
	t.Cleanup(func() { secrets.Delete(context.Background(), kc, id) })
	return id, s.SecretRef
}

// Each secret type yields the passphrase os-brick would: a passphrase
// as-is, binary keys (with bytes that are not text, NUL included) as their
// lowercase hex. Ids and hrefs both work.
func TestBarbicanPassphraseByType(t *testing.T) {
	kc := barbican(t, "")
	key := []byte{0x00, 0xff, 0x10, 0x80, 0x7f, 0x0a, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 9,
		1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	for _, c := range []struct {
		typ     string
		payload []byte
		want    string
	}{
		{"passphrase", []byte("Pass phrase with spaces, ünïcode"), "Pass phrase with spaces, ünïcode"},
		{"symmetric", key, hex.EncodeToString(key)},
		{"opaque", key[:16], hex.EncodeToString(key[:16])},
	} {
		t.Run(c.typ, func(t *testing.T) {
			id, ref := store(t, kc, c.typ, c.payload)
			for _, sid := range []string{id, ref} {
				got, err := cloud.Barbican{Client: kc, SecretID: sid}.Passphrase(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, []byte(c.want)) {
					t.Fatalf("%s: passphrase %q, want %q", sid, got, c.want)
				}
			}
		})
	}
}

// Missing and foreign secrets: the error names the secret and the status.
func TestBarbicanErrors(t *testing.T) {
	kc := barbican(t, "")
	admin := barbican(t, "loopback-admin")
	missing := "11111111-2222-4333-8444-555555555555"
	_, err := cloud.Barbican{Client: kc, SecretID: missing}.Passphrase(context.Background())
	if !errors.Is(err, cloud.ErrSecret) || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "404") {
		t.Fatalf("missing secret: %v", err)
	}
	foreign, _ := store(t, admin, "passphrase", []byte("admin-only-payload"))
	_, err = cloud.Barbican{Client: kc, SecretID: foreign}.Passphrase(context.Background())
	if !errors.Is(err, cloud.ErrSecret) || !strings.Contains(err.Error(), foreign) || !strings.Contains(err.Error(), "403") {
		t.Fatalf("foreign secret: %v", err)
	}
	if strings.Contains(err.Error(), "admin-only-payload") {
		t.Fatal("payload in the error")
	}
	if _, err := (cloud.Barbican{Client: kc, SecretID: "x?y"}).Passphrase(context.Background()); !errors.Is(err, cloud.ErrSecret) {
		t.Fatalf("bad id: %v", err)
	}
}

// The payload is asked for as octet-stream whatever the secret type, and
// the type alone decides the passphrase: a passphrase secret stored as
// base64 binary is still the passphrase as-is, an opaque secret stored as
// text is still the hex of its bytes (os-brick's rule on the bytes).
func TestBarbicanPayloadStoredEitherWay(t *testing.T) {
	kc := barbican(t, "")
	for _, c := range []struct {
		typ, contentType, encoding, payload, want string
	}{
		{"passphrase", "application/octet-stream", "base64", base64.StdEncoding.EncodeToString([]byte("pass ünï")), "pass ünï"},
		{"opaque", "text/plain", "", "text opaque", hex.EncodeToString([]byte("text opaque"))},
	} {
		s, err := secrets.Create(context.Background(), kc, secrets.CreateOpts{Name: "imgfs-keyring-test", SecretType: secrets.SecretType(c.typ),
			Payload: c.payload, PayloadContentType: c.contentType, PayloadContentEncoding: c.encoding}).Extract()
		if err != nil {
			t.Fatal(err)
		}
		id := path.Base(s.SecretRef)
		t.Cleanup(func() { secrets.Delete(context.Background(), kc, id) })
		got, err := cloud.Barbican{Client: kc, SecretID: id}.Passphrase(context.Background())
		if err != nil || string(got) != c.want {
			t.Fatalf("%s stored as %s: passphrase %q, %v; want %q", c.typ, c.contentType, got, err, c.want)
		}
	}
}
