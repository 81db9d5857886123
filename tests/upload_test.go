package tests

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/gophercloud/gophercloud/v2/openstack/keymanager/v1/secrets"

	"github.com/imgfs/imgfs/tests/testimg"
)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// upload runs `imgfs upload` (cheap PBKDF2) and returns the image id it
// printed; the image and its secret are deleted when the test ends.
func (tc *testCloud) upload(t *testing.T, args ...string) (id string, stderr string) {
	t.Helper()
	args = append([]string{"upload", "--pbkdf-iterations", "1000", "--name", "imgfs-" + t.Name()}, args...)
	r := runImgfs(t, nil, args...)
	if r.code != 0 {
		t.Fatalf("imgfs %v: exit %d: %s", args, r.code, r.stderr)
	}
	id = strings.TrimSpace(string(r.stdout))
	if !uuidRE.MatchString(id) || strings.Count(string(r.stdout), "\n") != 1 {
		t.Fatalf("upload printed %q, want one image id line", r.stdout)
	}
	ctx := context.Background()
	img, err := images.Get(ctx, tc.images, id).Extract()
	if err != nil {
		t.Fatalf("glance get %s: %v", id, err)
	}
	keyID, _ := img.Properties["os_encrypt_key_id"].(string)
	t.Cleanup(func() {
		images.Delete(context.Background(), tc.images, id)
		if keyID != "" && !strings.Contains(strings.Join(args, " "), "--key-id") {
			secrets.Delete(context.Background(), tc.keys, keyID)
		}
	})
	return id, string(r.stderr)
}

// checkUploaded checks the image's Glance record and its secret's type, and
// that `imgfs cat <id>` (key from Barbican) is the plaintext. It returns
// the secret id.
func (tc *testCloud) checkUploaded(t *testing.T, id, diskFormat, policy, secretType string, plain []byte) string {
	t.Helper()
	ctx := context.Background()
	img, err := images.Get(ctx, tc.images, id).Extract()
	if err != nil {
		t.Fatal(err)
	}
	if img.Status != images.ImageStatusActive || img.DiskFormat != diskFormat || img.ContainerFormat != "bare" {
		t.Fatalf("image %s: status %s, disk_format %s, container_format %s", id, img.Status, img.DiskFormat, img.ContainerFormat)
	}
	prop := func(k string) string { s, _ := img.Properties[k].(string); return s }
	want := map[string]string{
		"os_encrypt_format":              "luks",
		"os_encrypt_key_deletion_policy": policy,
		"os_decrypt_size":                strconv.Itoa(len(plain)),
		"os_decrypt_container_format":    "bare",
	}
	for k, v := range want {
		if got := prop(k); got != v {
			t.Errorf("property %s = %q (%T), want %q", k, got, img.Properties[k], v)
		}
	}
	secret := prop("os_encrypt_key_id")
	if !uuidRE.MatchString(secret) {
		t.Fatalf("os_encrypt_key_id %q is not a secret UUID", secret)
	}
	meta, err := secrets.Get(ctx, tc.keys, secret).Extract()
	if err != nil {
		t.Fatalf("barbican get %s: %v", secret, err)
	}
	if meta.SecretType != secretType {
		t.Fatalf("secret %s: type %s, want %s", secret, meta.SecretType, secretType)
	}
	if secretType == "symmetric" && (meta.Algorithm != "aes" || meta.BitLength != 256) {
		t.Fatalf("secret %s: algorithm %s, bit_length %d; want aes, 256", secret, meta.Algorithm, meta.BitLength)
	}
	if got := mustImgfs(t, nil, "cat", id); !bytes.Equal(got, plain) {
		t.Fatalf("imgfs cat %s: %d bytes differ from the %d-byte plaintext", id, len(got), len(plain))
	}
	tc.checkConsumer(t, secret, id)
	return secret
}

// checkConsumer checks that the image is a consumer of the secret.
func (tc *testCloud) checkConsumer(t *testing.T, secret, id string) {
	t.Helper()
	if !tc.isConsumer(t, secret, id) {
		t.Fatalf("image %s is not a consumer of secret %s", id, secret)
	}
}

// isConsumer reports whether Barbican lists the image as a consumer of
// the secret.
func (tc *testCloud) isConsumer(t *testing.T, secret, id string) bool {
	t.Helper()
	var body struct {
		Consumers []struct {
			Service      string `json:"service"`
			ResourceType string `json:"resource_type"`
			ResourceID   string `json:"resource_id"`
		} `json:"consumers"`
	}
	_, err := tc.keys.Get(context.Background(), tc.keys.ServiceURL("secrets", secret, "consumers"), &body, nil)
	if err != nil {
		t.Fatalf("list consumers of %s: %v", secret, err)
	}
	for _, c := range body.Consumers {
		if c.Service == "image" && c.ResourceType == "image" && c.ResourceID == id {
			return true
		}
	}
	return false
}

// Upload without a key flag: a new random 256-bit symmetric secret, as
// luks and as qcow2+luks; the image reads back through Barbican.
func TestUploadNewSymmetricSecret(t *testing.T) {
	tc := needCloud(t)
	dir := t.TempDir()
	plain := testimg.RandomBytes(3<<20, 81)
	clear(plain[1<<20 : 2<<20])
	in := testimg.WriteFile(t, dir, "disk.raw", plain)
	for _, c := range []struct{ format, diskFormat string }{{"luks", "luks"}, {"qcow2+luks", "qcow2"}} {
		t.Run(c.format, func(t *testing.T) {
			id, stderr := tc.upload(t, "--format", c.format, in)
			secret := tc.checkUploaded(t, id, c.diskFormat, "on_image_deletion", "symmetric", plain)
			if !strings.Contains(stderr, id) || !strings.Contains(stderr, secret) {
				t.Fatalf("summary does not name the image and secret: %s", stderr)
			}
			// the key is never printed: neither the payload nor its hex
			payload, err := secrets.GetPayload(context.Background(), tc.keys, secret, secrets.GetPayloadOpts{PayloadContentType: "application/octet-stream"}).Extract()
			if err != nil || len(payload) != 32 {
				t.Fatalf("payload: %d bytes, %v", len(payload), err)
			}
			if strings.Contains(stderr, hex.EncodeToString(payload)) || bytes.Contains([]byte(stderr), payload) {
				t.Fatal("the key is printed")
			}
		})
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".imgfs-upload-*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// --passphrase-file stores the passphrase as a Barbican passphrase secret;
// --key-file a binary key as a symmetric one.
func TestUploadPassphraseAndKeyFile(t *testing.T) {
	tc := needCloud(t)
	dir := t.TempDir()
	plain := testimg.RandomBytes(2<<20+4096, 82)
	in := testimg.WriteFile(t, dir, "disk.raw", plain)
	id, stderr := tc.upload(t, "--format", "qcow2+luks", "--passphrase-file", passFile(t, dir, testPassphrase), in)
	secret := tc.checkUploaded(t, id, "qcow2", "on_image_deletion", "passphrase", plain)
	if strings.Contains(stderr, testPassphrase) {
		t.Fatal("the passphrase is printed")
	}
	p, err := secrets.GetPayload(context.Background(), tc.keys, secret, secrets.GetPayloadOpts{PayloadContentType: "text/plain"}).Extract()
	if err != nil || string(p) != testPassphrase {
		t.Fatalf("passphrase secret payload: %v", err)
	}
	// the image opens with the passphrase itself, without Barbican
	if got := mustImgfs(t, nil, "cat", "--passphrase-file", passFile(t, dir, testPassphrase), id); !bytes.Equal(got, plain) {
		t.Fatal("plaintext with the passphrase file differs")
	}

	key := testimg.RandomBytes(32, 83)
	kf := testimg.WriteFile(t, dir, "key.bin", key)
	id, _ = tc.upload(t, "--format", "luks", "--key-file", kf, in)
	secret = tc.checkUploaded(t, id, "luks", "on_image_deletion", "symmetric", plain)
	p, err = secrets.GetPayload(context.Background(), tc.keys, secret, secrets.GetPayloadOpts{PayloadContentType: "application/octet-stream"}).Extract()
	if err != nil || !bytes.Equal(p, key) {
		t.Fatalf("symmetric secret payload differs from the key file: %v", err)
	}
}

// --key-id reuses an existing secret (of either type); the deletion policy
// defaults to do_not_delete, and the secret survives.
func TestUploadExistingKeyID(t *testing.T) {
	tc := needCloud(t)
	dir := t.TempDir()
	plain := testimg.RandomBytes(1<<20, 84)
	in := testimg.WriteFile(t, dir, "disk.raw", plain)
	sym := tc.createSecret(t, "symmetric", testimg.RandomBytes(32, 85))
	id, _ := tc.upload(t, "--format", "luks", "--key-id", sym, in)
	if got := tc.checkUploaded(t, id, "luks", "do_not_delete", "symmetric", plain); got != sym {
		t.Fatalf("os_encrypt_key_id %s, want the given %s", got, sym)
	}
	pass := tc.createSecret(t, "passphrase", []byte(testPassphrase))
	id, _ = tc.upload(t, "--format", "qcow2+luks", "--key-id", pass, "--key-deletion-policy", "on_image_deletion", in)
	tc.checkUploaded(t, id, "qcow2", "on_image_deletion", "passphrase", plain)
	if got := mustImgfs(t, nil, "cat", "--passphrase-file", passFile(t, dir, testPassphrase), id); !bytes.Equal(got, plain) {
		t.Fatal("the given passphrase secret was not the key")
	}
}

// Failures are one clear line and a non-zero exit; a secret the failed
// upload created is deleted, one given by --key-id is not.
func TestUploadFailures(t *testing.T) {
	tc := needCloud(t)
	dir := t.TempDir()
	plain := testimg.RandomBytes(1<<20, 86)
	in := testimg.WriteFile(t, dir, "disk.raw", plain)
	missing := "11111111-2222-4333-8444-555555555555"
	mustFail(t, runImgfs(t, nil, "upload", "--key-id", missing, in), "barbican secret "+missing, "404")
	mustFail(t, runImgfs(t, nil, "upload", "--format", "vmdk", in), "--format")
	mustFail(t, runImgfs(t, nil, "upload", "--key-id", missing, "--passphrase-file", "x", in), "exclude")
	mustFail(t, runImgfs(t, nil, "upload", filepath.Join(dir, "nonexistent")), "nonexistent")

	// an already encrypted INPUT fails after the secret was created
	luks := filepath.Join(dir, "disk.luks")
	mustImgfs(t, nil, "encrypt", "--pbkdf-iterations", "1000", "--passphrase-file", passFile(t, dir, testPassphrase), "-o", luks, in)
	name := "imgfs-" + t.Name() + "-encrypted-input"
	r := runImgfs(t, nil, "upload", "--pbkdf-iterations", "1000", "--name", name, luks)
	mustFail(t, r, "already encrypted")
	if !strings.Contains(string(r.stderr), "deleted barbican secret") {
		t.Fatalf("no word of the secret's deletion: %s", r.stderr)
	}
	all, err := secrets.List(tc.keys, secrets.ListOpts{Name: "imgfs image " + name}).AllPages(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if left, err := secrets.ExtractSecrets(all); err != nil || len(left) != 0 {
		t.Fatalf("secrets of the failed upload left: %d (%v)", len(left), err)
	}
	// with --key-id the given secret stays
	own := tc.createSecret(t, "passphrase", []byte(testPassphrase))
	mustFail(t, runImgfs(t, nil, "upload", "--pbkdf-iterations", "1000", "--key-id", own, luks), "already encrypted")
	if _, err := secrets.Get(context.Background(), tc.keys, own).Extract(); err != nil {
		t.Fatalf("the given secret is gone: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".imgfs-upload-*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// Raw LUKS holds whole 512-byte sectors: an upload of 1 MiB + 1000 bytes
// is padded, and os_decrypt_size cuts the padding off again, so the
// round trip is exact. Metadata that disagrees with the payload beyond the
// padding is an error, not a guess.
func TestUploadOddSizeCutToDecryptSize(t *testing.T) {
	tc := needCloud(t)
	dir := t.TempDir()
	plain := testimg.RandomBytes(1<<20+1000, 87)
	in := testimg.WriteFile(t, dir, "disk.raw", plain)
	pf := passFile(t, dir, testPassphrase)
	id, _ := tc.upload(t, "--format", "luks", "--passphrase-file", pf, in)
	tc.checkUploaded(t, id, "luks", "on_image_deletion", "passphrase", plain) // cat <id> == plain

	stored := testimg.QemuLUKS1(t, dir, "img", plain[:1<<20], testPassphrase, testimg.QemuLUKSOpts{})
	for _, c := range []struct {
		size string
		want []string
	}{
		{fmt.Sprint(1<<20 + 1), []string{"os_decrypt_size says 1048577 bytes", "1048576", "truncated"}},
		{fmt.Sprint(1<<20 - 512), []string{"os_decrypt_size says 1048064 bytes", "more than one 512-byte sector of padding"}},
		{"1.5GB", []string{`os_decrypt_size "1.5GB" is not a size in bytes`}},
	} {
		id := tc.uploadImage(t, "raw", map[string]string{"os_encrypt_format": "luks", "os_decrypt_size": c.size}, stored)
		r := runImgfs(t, nil, "cat", "--passphrase-file", pf, id)
		mustFail(t, r, c.want...)
		if len(r.stdout) != 0 {
			t.Fatalf("os_decrypt_size %s: %d bytes written", c.size, len(r.stdout))
		}
	}
	// within one sector of padding: cut
	id = tc.uploadImage(t, "raw", map[string]string{"os_encrypt_format": "luks", "os_decrypt_size": fmt.Sprint(1<<20 - 100)}, stored)
	if got := mustImgfs(t, nil, "cat", "--passphrase-file", pf, id); !bytes.Equal(got, plain[:1<<20-100]) {
		t.Fatalf("cut to os_decrypt_size: %d bytes, want %d", len(got), 1<<20-100)
	}
}
