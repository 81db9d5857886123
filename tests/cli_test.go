package tests

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

const testPass = "correct horse battery staple"

// luks1Image makes a raw LUKS1 image of plain with qemu-img and returns its path.
func luks1Image(t *testing.T, dir string, plain []byte, pass, cipherOpts string) string {
	t.Helper()
	raw := testimg.WriteFile(t, dir, "plain.raw", plain)
	out := filepath.Join(dir, "image.luks")
	opts := "key-secret=sec0,iter-time=10"
	if cipherOpts != "" {
		opts += "," + cipherOpts
	}
	testimg.QemuImg(t, "convert", "-f", "raw", "-O", "luks", "--object", "secret,id=sec0,data="+pass, "-o", opts, raw, out)
	return out
}

func passFile(t *testing.T, dir, pass string) string {
	t.Helper()
	return testimg.WriteFile(t, dir, "pass", []byte(pass+"\n"))
}

func TestCatRawLUKS1EqualsPlaintext(t *testing.T) {
	dir := t.TempDir()
	plain := testimg.RandomBytes(3<<20+4096, 1)
	img := luks1Image(t, dir, plain, testPass, "cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64")
	got := mustImgfs(t, nil, "cat", "--passphrase-file", passFile(t, dir, testPass), img)
	if !bytes.Equal(got, plain) {
		t.Fatalf("plaintext differs (got %d bytes, want %d)", len(got), len(plain))
	}
}

func TestCatPassphraseFromStdin(t *testing.T) {
	dir := t.TempDir()
	plain := testimg.RandomBytes(1<<20, 2)
	img := luks1Image(t, dir, plain, testPass, "")
	got := mustImgfs(t, []byte(testPass+"\n"), "cat", "--passphrase-file", "-", img)
	if !bytes.Equal(got, plain) {
		t.Fatal("plaintext differs")
	}
}

// A binary key (Barbican type "symmetric") opens the image whose passphrase is its lowercase hex.
func TestCatKeyFileUsesHexPassphrase(t *testing.T) {
	dir := t.TempDir()
	key := testimg.RandomBytes(32, 3)
	plain := testimg.RandomBytes(1<<20, 4)
	img := luks1Image(t, dir, plain, hex.EncodeToString(key), "")
	kf := testimg.WriteFile(t, dir, "key.bin", key)
	got := mustImgfs(t, nil, "cat", "--key-file", kf, img)
	if !bytes.Equal(got, plain) {
		t.Fatal("plaintext differs")
	}
}

func TestCatRangeWithSizeSuffixes(t *testing.T) {
	dir := t.TempDir()
	plain := testimg.RandomBytes(4<<20, 5)
	img := luks1Image(t, dir, plain, testPass, "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256")
	pf := passFile(t, dir, testPass)
	cases := []struct {
		off, length string
		o, n        int
	}{
		{"0", "1", 0, 1},
		{"12345", "1M", 12345, 1 << 20},
		{"1MiB", "4KiB", 1 << 20, 4096},
		{"511", "513", 511, 513},
		{strconv.Itoa(4<<20 - 7), "7", 4<<20 - 7, 7},
	}
	for _, c := range cases {
		got := mustImgfs(t, nil, "cat", "--passphrase-file", pf, "--offset", c.off, "--length", c.length, img)
		if !bytes.Equal(got, plain[c.o:c.o+c.n]) {
			t.Errorf("offset %s length %s: bytes differ", c.off, c.length)
		}
	}
	// Without --length: to the end.
	got := mustImgfs(t, nil, "cat", "--passphrase-file", pf, "--offset", "3M", img)
	if !bytes.Equal(got, plain[3<<20:]) {
		t.Error("offset 3M to the end: bytes differ")
	}
}

func TestCatToFileLeavesZeroBlocksSparse(t *testing.T) {
	dir := t.TempDir()
	plain := make([]byte, 32<<20)
	copy(plain[5<<20:], testimg.RandomBytes(100<<10, 6))
	copy(plain[30<<20:], testimg.RandomBytes(4096, 7))
	img := luks1Image(t, dir, plain, testPass, "")
	out := filepath.Join(dir, "out.raw")
	mustImgfs(t, nil, "cat", "--passphrase-file", passFile(t, dir, testPass), "-o", out, img)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, plain) {
		t.Fatal("output file differs from plaintext")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(out, &st); err != nil {
		t.Fatal(err)
	}
	if allocated := st.Blocks * 512; allocated > 12<<20 {
		t.Fatalf("output allocates %d bytes of a 32 MiB file that is mostly zeros: not sparse", allocated)
	}
}

func TestCatRefusals(t *testing.T) {
	dir := t.TempDir()
	plain := testimg.RandomBytes(1<<20, 8)
	img := luks1Image(t, dir, plain, testPass, "")
	raw := testimg.WriteFile(t, dir, "plain2.raw", plain)
	qcow := filepath.Join(dir, "plain.qcow2")
	testimg.QemuImg(t, "convert", "-f", "raw", "-O", "qcow2", raw, qcow)
	truncated := testimg.WriteFile(t, dir, "trunc.luks", readFile(t, img)[:len(readFile(t, img))-(300<<10+100)])
	pf := passFile(t, dir, testPass)
	wrong := testimg.WriteFile(t, dir, "wrong", []byte("not the passphrase\n"))

	cases := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"wrong passphrase", []string{"cat", "--passphrase-file", wrong, img}, "no keyslot matches the passphrase"},
		{"encrypted image without a key", []string{"cat", img}, "key is required"},
		{"key for an unencrypted image", []string{"cat", "--passphrase-file", pf, raw}, "not encrypted"},
		{"key for an unencrypted qcow2", []string{"cat", "--passphrase-file", pf, qcow}, "not encrypted"},
		{"qcow2 stated as raw", []string{"cat", "--format", "raw", qcow}, "format mismatch"},
		{"luks stated as qcow2", []string{"cat", "--format", "qcow2", "--passphrase-file", pf, img}, "format mismatch"},
		{"offset past the end", []string{"cat", "--passphrase-file", pf, "--offset", "2M", img}, "past the end"},
		{"range past the end", []string{"cat", "--passphrase-file", pf, "--offset", "1M", "--length", "1", img}, "past the end"},
		{"missing file", []string{"cat", filepath.Join(dir, "nope")}, "no such file"},
		{"passphrase file and key file together", []string{"cat", "--passphrase-file", pf, "--key-file", pf, img}, "exclude each other"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runImgfs(t, nil, c.args...)
			if r.code == 0 {
				t.Fatalf("exit 0, want failure; stdout %d bytes", len(r.stdout))
			}
			if len(r.stdout) != 0 {
				t.Errorf("wrote %d bytes to stdout on failure", len(r.stdout))
			}
			if !strings.Contains(string(r.stderr), c.wantErr) {
				t.Errorf("stderr %q does not say %q", r.stderr, c.wantErr)
			}
			if strings.Contains(string(r.stderr), testPass) || strings.Contains(string(r.stderr), "panic") {
				t.Errorf("stderr leaks the passphrase or panics: %q", r.stderr)
			}
		})
	}

	// A payload cut mid-sector is truncation, not a smaller disk: the stream
	// stops with an error; what was written is a correct prefix, never padded.
	r := runImgfs(t, nil, "cat", "--passphrase-file", pf, truncated)
	if r.code == 0 {
		t.Fatal("truncated image: exit 0")
	}
	if len(r.stdout) >= len(plain) || !bytes.Equal(r.stdout, plain[:len(r.stdout)]) {
		t.Fatalf("truncated image: wrote %d bytes that are not a correct prefix", len(r.stdout))
	}
	if !strings.Contains(strings.ToLower(string(r.stderr)), "truncated") {
		t.Errorf("truncated image: stderr %q does not say truncated", r.stderr)
	}
}

func TestInfoDescribesLUKS1WithoutKey(t *testing.T) {
	dir := t.TempDir()
	plain := testimg.RandomBytes(2<<20, 9)
	img := luks1Image(t, dir, plain, testPass, "cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha512")
	var info struct {
		Format      string `json:"format"`
		Encrypted   bool   `json:"encrypted"`
		VirtualSize int64  `json:"virtual_size"`
		LUKS        map[string]any
	}
	out := mustImgfs(t, nil, "info", "--json", img)
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("info --json: %v\n%s", err, out)
	}
	if info.Format != "luks" || !info.Encrypted || info.VirtualSize != int64(len(plain)) {
		t.Fatalf("info: %+v", info)
	}
	text := string(out)
	for _, want := range []string{"aes-xts-plain64", "sha512", "pbkdf2"} {
		if !strings.Contains(text, want) {
			t.Errorf("info --json does not mention %q:\n%s", want, text)
		}
	}
	human := string(mustImgfs(t, nil, "info", img))
	for _, want := range []string{"format:", "luks", "aes-xts-plain64", "512 bits", "keyslot 0", "verdict:"} {
		if !strings.Contains(human, want) {
			t.Errorf("info does not show %q:\n%s", want, human)
		}
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
