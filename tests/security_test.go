package tests

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/imgfs/imgfs/tests/testimg"
)

// Text from an image reaches the terminal escaped: an OSC sequence planted
// in a LUKS1 header's UUID field is printed as \x1b, not sent raw; JSON
// output keeps the exact bytes (JSON escapes them itself).
func TestInfoEscapesControlCharacters(t *testing.T) {
	dir := t.TempDir()
	img := testimg.QemuLUKS1(t, dir, "img", testimg.RandomBytes(1<<20, 3), testPassphrase, testimg.QemuLUKSOpts{})
	evil := "\x1b]0;owned\x07\x1b[2J"
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	uuid := make([]byte, 40) // LUKS1 uuid[40] at offset 168
	copy(uuid, evil)
	if _, err := f.WriteAt(uuid, 168); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out := mustImgfs(t, nil, "info", img)
	if bytes.ContainsAny(out, "\x1b\x07") {
		t.Fatalf("info printed raw control characters: %q", out)
	}
	if !bytes.Contains(out, []byte(`\x1b]0;owned\a`)) {
		t.Fatalf("info does not show the escaped UUID: %s", out)
	}
	var info struct {
		LUKS struct {
			UUID string `json:"uuid"`
		} `json:"luks"`
	}
	js := mustImgfs(t, nil, "info", "--json", img)
	if err := json.Unmarshal(js, &info); err != nil {
		t.Fatal(err)
	}
	if info.LUKS.UUID != evil {
		t.Fatalf("JSON UUID %q, want the exact %q", info.LUKS.UUID, evil)
	}
}

// A whole Glance image is verified before an output file counts as done:
// on a checksum mismatch `cat -o` and `export -o` leave the previous file
// (or none) and no temporary file; on success the file is replaced and is
// 0600 even if the file it replaces was 0644.
func TestVerifiedOutputFiles(t *testing.T) {
	tc := needCloud(t)
	store := os.Getenv("IMGFS_TEST_CLOUD_DIR")
	if store == "" {
		t.Fatal("IMGFS_TEST_CLOUD_DIR not set (tests/with-cloud.sh sets it)")
	}
	dir := t.TempDir()
	data := testimg.RandomBytes(2<<20, 33)
	id := tc.uploadImage(t, "raw", nil, testimg.WriteFile(t, dir, "r", data))
	outDir := t.TempDir()
	out := filepath.Join(outDir, "out.raw")
	if err := os.WriteFile(out, []byte("previous"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustImgfs(t, nil, "cat", id, "-o", out)
	got, _ := os.ReadFile(out)
	st, _ := os.Stat(out)
	if !bytes.Equal(got, data) || st.Mode().Perm() != 0o600 {
		t.Fatalf("cat -o: %d bytes equal=%v, mode %v; want the image, 0600", len(got), bytes.Equal(got, data), st.Mode().Perm())
	}

	// Tamper with the stored image behind Glance's back.
	f, err := os.OpenFile(filepath.Join(store, "glance", "images", id), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("glance store file: %v", err)
	}
	if _, err := f.WriteAt([]byte{data[1<<20] ^ 1}, 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.WriteFile(out, []byte("previous"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustFail(t, runImgfs(t, nil, "cat", id, "-o", out), "integrity check failed")
	if got, _ := os.ReadFile(out); string(got) != "previous" {
		t.Fatalf("a failed verification replaced the output (%d bytes)", len(got))
	}
	exp := filepath.Join(outDir, "export.raw")
	mustFail(t, runImgfs(t, nil, "export", id, "--to", "raw", "-o", exp), "integrity check failed")
	if _, err := os.Stat(exp); err == nil {
		t.Fatal("export left an unverified file")
	}
	entries, _ := os.ReadDir(outDir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".imgfs-") {
			t.Fatalf("temporary file left: %s", e.Name())
		}
	}
}

// --no-consumer uploads without registering the image as a consumer of its
// secret, and says so; by default the registration is made.
func TestUploadNoConsumer(t *testing.T) {
	tc := needCloud(t)
	dir := t.TempDir()
	plain := testimg.RandomBytes(1<<20, 84)
	in := testimg.WriteFile(t, dir, "disk.raw", plain)
	id, stderr := tc.upload(t, "--no-consumer", in)
	if got := mustImgfs(t, nil, "cat", id); !bytes.Equal(got, plain) {
		t.Fatal("the uploaded image reads back differently")
	}
	img, err := images.Get(t.Context(), tc.images, id).Extract()
	if err != nil {
		t.Fatal(err)
	}
	secret, _ := img.Properties["os_encrypt_key_id"].(string)
	if !strings.Contains(stderr, "not registered as a consumer") {
		t.Fatalf("--no-consumer is not reported: %s", stderr)
	}
	if tc.isConsumer(t, secret, id) {
		t.Fatal("--no-consumer registered the image anyway")
	}
	id2, _ := tc.upload(t, "--key-id", secret, "--key-deletion-policy", "do_not_delete", in)
	if !tc.isConsumer(t, secret, id2) {
		t.Fatal("the default upload did not register the image as a consumer")
	}
}

// An output that is the source itself — by another path, a hard link or
// a loop device's backing file aside — is refused before anything is
// written: writing a device in place while reading it would destroy it.
func TestOutputIsSourceRefused(t *testing.T) {
	dir := t.TempDir()
	plain := testimg.RandomBytes(1<<20, 7)
	src := testimg.WriteFile(t, dir, "disk.raw", plain)
	link := filepath.Join(dir, "link.raw")
	if err := os.Link(src, link); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"cat", src, "-o", link},
		{"export", src, "--to", "raw", "-o", link},
		{"export", src, "--to", "raw", "-o", filepath.Join(dir, ".", "disk.raw")},
	} {
		r := runImgfs(t, nil, args...)
		mustFail(t, r, "is SOURCE itself")
		if r.code != 2 {
			t.Fatalf("%v: exit %d, want 2", args, r.code)
		}
		if got, _ := os.ReadFile(src); !bytes.Equal(got, plain) {
			t.Fatalf("%v changed the source", args)
		}
	}
}
