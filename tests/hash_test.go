package tests

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"

	"github.com/imgfs/imgfs/tests/testimg"
)

// sumFile runs the coreutils tool (sha256sum, sha512sum) on a file: an
// implementation independent of imgfs's.
func sumFile(t *testing.T, tool, path string) string {
	t.Helper()
	return strings.Fields(string(testimg.Run(t, tool, path)))[0]
}

// `imgfs hash` of the four encrypted permutations in Glance: the stored
// hash equals sha256sum of the uploaded file (and, with --algo sha512,
// Glance's own os_hash_value), the plaintext hash equals sha256sum of the
// plaintext, and the Glance checksum is reported as verified.
func TestHashEvidenceOfEncryptedGlanceImages(t *testing.T) {
	tc := needCloud(t)
	plain := testimg.RandomBytes(2<<20+512, 23)
	clear(plain[1<<20 : 2<<20])
	dir := t.TempDir()
	plainPath := testimg.WriteFile(t, dir, "plain", plain)
	wantPlain := sumFile(t, "sha256sum", plainPath)
	for i, c := range encryptedCases {
		t.Run(c.name, func(t *testing.T) {
			p, payload := c.make(t, t.TempDir(), plain, uint64(200+i))
			secret := tc.createSecret(t, c.secretType, payload)
			id := tc.uploadImage(t, c.diskFormat, map[string]string{
				"os_encrypt_format": "luks", "os_encrypt_key_id": secret, "os_decrypt_size": strconv.Itoa(len(plain)),
			}, p)
			var got struct {
				ImageID        string `json:"image_id"`
				Algorithm      string `json:"algorithm"`
				Stored         string `json:"stored"`
				Plaintext      string `json:"plaintext"`
				PlaintextSize  int64  `json:"plaintext_size"`
				SourceVerified bool   `json:"source_verified"`
				Started        string `json:"started"`
			}
			if err := json.Unmarshal(mustImgfs(t, nil, "hash", "--json", id), &got); err != nil {
				t.Fatal(err)
			}
			if got.ImageID != id || got.Algorithm != "sha256" || got.Started == "" || !got.SourceVerified {
				t.Fatalf("hash --json: %+v", got)
			}
			if got.Plaintext != wantPlain || got.PlaintextSize != int64(len(plain)) {
				t.Fatalf("plaintext hash %s (%d bytes), sha256sum says %s", got.Plaintext, got.PlaintextSize, wantPlain)
			}
			if want := sumFile(t, "sha256sum", p); got.Stored != want {
				t.Fatalf("stored hash %s, sha256sum says %s", got.Stored, want)
			}
			img, err := images.Get(t.Context(), tc.images, id).Extract()
			if err != nil {
				t.Fatal(err)
			}
			text := string(mustImgfs(t, nil, "hash", "--algo", "sha512", id))
			glanceHash, _ := img.Properties["os_hash_value"].(string)
			if glanceHash == "" || !strings.Contains(text, glanceHash+"  stored") || glanceHash != sumFile(t, "sha512sum", p) {
				t.Fatalf("hash --algo sha512 printed %q; Glance's os_hash_value is %q", text, glanceHash)
			}
		})
	}
}
