package tests

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// imgfs cat of qcow2 and qcow2+LUKS equals both the plaintext the image was
// made from and qemu-img's own reading of it.
func TestCatQcow2EqualsQemuImg(t *testing.T) {
	dir := t.TempDir()
	pf := passFile(t, dir, testPass)
	writes := [][]testimg.QcowWrite{
		{{Off: 3 << 20, Len: 200 << 10, Seed: 11}, {Off: 0, Len: 70 << 10, Seed: 12}},
		{{Off: 1 << 20, Len: 64 << 10, Seed: 13}, {Off: 7<<20 + 512, Len: 4096, Seed: 14}},
	}
	cases := []struct {
		name, options, pass string
	}{
		{"qcow2 64k clusters", "cluster_size=65536", ""},
		{"qcow2 v2 4k clusters", "cluster_size=4096,compat=0.10", ""},
		{"qcow2+LUKS 64k clusters", "cluster_size=65536", testPass},
		{"qcow2+LUKS 4k clusters", "cluster_size=4096", testPass},
		{"qcow2+LUKS 2M clusters", "cluster_size=2097152", testPass},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img, plain := testimg.MakeQcow2(t, dir, "img"+string(rune('a'+i))+".qcow2",
				testimg.QcowImage{Size: 8 << 20, Options: c.options, Passphrase: c.pass, Passes: writes})
			args := []string{"cat"}
			if c.pass != "" {
				args = append(args, "--passphrase-file", pf)
			}
			got := mustImgfs(t, nil, append(args, img)...)
			if !bytes.Equal(got, plain) {
				t.Fatal("imgfs cat differs from the plaintext written")
			}
			if !bytes.Equal(got, testimg.QemuRaw(t, img, c.pass)) {
				t.Fatal("imgfs cat differs from qemu-img convert -O raw")
			}
		})
	}
}

func TestQcow2WithBackingFileIsRefusedAndReported(t *testing.T) {
	dir := t.TempDir()
	base := testimg.WriteFile(t, dir, "base.raw", testimg.RandomBytes(1<<20, 21))
	img := filepath.Join(dir, "overlay.qcow2")
	testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", img)

	r := runImgfs(t, nil, "cat", img)
	if r.code == 0 || len(r.stdout) != 0 {
		t.Fatalf("cat of a qcow2 with a backing file: exit %d, %d bytes out", r.code, len(r.stdout))
	}
	if !strings.Contains(string(r.stderr), "backing file") {
		t.Fatalf("stderr does not name the backing file: %s", r.stderr)
	}
	var info struct {
		Safe    bool     `json:"safe"`
		Reasons []string `json:"reasons"`
	}
	if err := json.Unmarshal(mustImgfs(t, nil, "info", "--json", img), &info); err != nil {
		t.Fatal(err)
	}
	if info.Safe || !strings.Contains(strings.Join(info.Reasons, ";"), "backing file") {
		t.Fatalf("info verdict: %+v", info)
	}
	human := string(mustImgfs(t, nil, "info", img))
	if !strings.Contains(human, "UNSAFE") || !strings.Contains(human, base) {
		t.Fatalf("info does not show the verdict and the backing file:\n%s", human)
	}
}

func TestQcow2LUKSInfoAndRefusals(t *testing.T) {
	dir := t.TempDir()
	img, plain := testimg.MakeQcow2(t, dir, "enc.qcow2", testimg.QcowImage{Size: 4 << 20, Passphrase: testPass,
		Passes: [][]testimg.QcowWrite{{{Off: 0, Len: 1 << 20, Seed: 31}}}})
	out := mustImgfs(t, nil, "info", "--json", img)
	var info struct {
		Format    string `json:"format"`
		Encrypted bool   `json:"encrypted"`
		Virtual   int64  `json:"virtual_size"`
		LUKS      struct {
			Version int    `json:"version"`
			Cipher  string `json:"cipher"`
		} `json:"luks"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" || !info.Encrypted || info.Virtual != 4<<20 || info.LUKS.Version != 1 || info.LUKS.Cipher != "aes-xts-plain64" {
		t.Fatalf("info: %s", out)
	}
	wrong := testimg.WriteFile(t, dir, "wrong", []byte("wrong\n"))
	for name, args := range map[string][]string{
		"no key":           {"cat", img},
		"wrong passphrase": {"cat", "--passphrase-file", wrong, img},
		"stated as luks":   {"cat", "--format", "luks", "--passphrase-file", passFile(t, dir, testPass), img},
	} {
		r := runImgfs(t, nil, args...)
		if r.code == 0 || len(r.stdout) != 0 {
			t.Errorf("%s: exit %d, %d bytes of output", name, r.code, len(r.stdout))
		}
	}
	// A range read through the CLI is exact.
	got := mustImgfs(t, nil, "cat", "--passphrase-file", passFile(t, dir, testPass), "--offset", "65000", "--length", "70000", img)
	if !bytes.Equal(got, plain[65000:135000]) {
		t.Fatal("range read differs")
	}
	// Sparse output: a 4 MiB disk with 1 MiB written allocates about 1 MiB.
	o := filepath.Join(dir, "out.raw")
	mustImgfs(t, nil, "cat", "--passphrase-file", passFile(t, dir, testPass), "-o", o, img)
	if b, _ := os.ReadFile(o); !bytes.Equal(b, plain) {
		t.Fatal("sparse output differs")
	}
}
