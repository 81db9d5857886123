package imgfs

import (
	"strings"
	"testing"

	"github.com/imgfs/imgfs/blockdev/rbd"
	"github.com/imgfs/imgfs/cloud"
)

// glanceSeed is an image record as Glance 25 returns it with an rbd store,
// show_image_direct_url and show_multiple_locations on.
const glanceSeed = `{"id":"0b1e4d2a-1c7b-4a55-9a56-3f0e9d1c2b3a","name":"disk","status":"active",
"disk_format":"qcow2","container_format":"bare","size":37748736,"virtual_size":1073741824,
"checksum":"9e107d9d372bb6826bd81d3542a419d6","os_hash_algo":"sha512",
"os_hash_value":"07e547d9586f6a73f73fbac0435ed76951218fb7d0c8d788a309d785436bbb642e93a252a954f23912547d1e8a3b5ed6e1bfd7097821233fa0538f3db854fee6",
"os_encrypt_format":"luks","os_encrypt_key_id":"3f6e8a1c-2b4d-4e6f-8a9b-0c1d2e3f4a5b",
"os_encrypt_key_deletion_policy":"on_image_deletion","os_decrypt_size":"1073741824",
"direct_url":"rbd://5e1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8/images/0b1e4d2a-1c7b-4a55-9a56-3f0e9d1c2b3a/snap",
"locations":[{"url":"rbd://5e1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8/images/0b1e4d2a-1c7b-4a55-9a56-3f0e9d1c2b3a/snap","metadata":{"store":"ceph"}}],
"visibility":"private","protected":false,"tags":[],"min_disk":0,"min_ram":0}`

// FuzzGlanceMetadata feeds arbitrary image records through everything
// imgfs decides from Glance metadata: the stated format and encryption,
// os_decrypt_size, the key id, the checksum and the RBD locations. None may
// panic, and the decisions must be consistent: a decrypt size only for an
// encrypted image, a bad size an error naming os_decrypt_size.
func FuzzGlanceMetadata(f *testing.F) {
	f.Add([]byte(glanceSeed))
	f.Add([]byte(strings.ReplaceAll(glanceSeed, `"os_decrypt_size":"1073741824"`, `"os_decrypt_size":"-5"`)))
	f.Add([]byte(strings.ReplaceAll(glanceSeed, `"disk_format":"qcow2"`, `"disk_format":"raw","cinder_encryption_key_id":"k"`)))
	f.Add([]byte(`{"locations":[{"url":7},{"url":"rbd://a/b/c/d"},null,"x"],"direct_url":{"x":1},"os_hash_algo":"shake_128","os_hash_value":"zz"}`))
	f.Add([]byte(`{"id":"x","size":-1,"os_decrypt_size":"1e30","os_encrypt_format":"LUKSv1"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := cloud.ParseImage(data)
		if err != nil {
			return
		}
		format, encrypted := img.Stated()
		switch format {
		case "", FormatRaw, FormatLUKS, FormatQcow2:
		default:
			t.Fatalf("Stated format %q", format)
		}
		_ = img.KeyID()
		h := img.Hash()
		_ = h.Supported()
		for _, loc := range img.DirectLocations() {
			if _, _, err := rbd.ParseLocation(loc); err != nil && !strings.Contains(err.Error(), "rbd") {
				t.Fatalf("ParseLocation(%q): error %q does not say what it parsed", loc, err)
			}
		}
		st, err := statedByGlance(img)
		if err != nil {
			if !strings.Contains(err.Error(), "os_decrypt_size") {
				t.Fatalf("statedByGlance: %v", err)
			}
			return
		}
		if st.decryptSize != 0 && (!st.encrypted || st.decryptSize < 0) {
			t.Fatalf("decrypt size %d for encrypted=%v", st.decryptSize, st.encrypted)
		}
		if st.encrypted != encrypted {
			t.Fatal("statedByGlance and Stated disagree")
		}
	})
}
