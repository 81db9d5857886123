package tests

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// checkNewLUKS1 proves that path is a cryptsetup-default LUKS1 volume of
// want: the header as cryptsetup shows it, the payload equal to an
// independent encryption (python3-cryptography) of want with the volume key
// cryptsetup extracts, and qemu-img's plaintext equal to want.
func checkNewLUKS1(t *testing.T, path, pass string, want []byte, spec string, keyBits int) {
	t.Helper()
	testimg.Need(t, "cryptsetup", testimg.Python)
	testimg.Run(t, "cryptsetup", "isLuks", path)
	dump := string(testimg.Run(t, "cryptsetup", "luksDump", path))
	name, mode, _ := strings.Cut(spec, "-")
	for _, line := range []string{"Version:       \t1", "Cipher name:   \t" + name, "Cipher mode:   \t" + mode,
		"Payload offset:\t4096", "MK bits:       \t" + strconv.Itoa(keyBits), "Key Slot 0: ENABLED", "Key Slot 7: DISABLED"} {
		if !strings.Contains(dump, line) {
			t.Errorf("luksDump lacks %q:\n%s", line, dump)
		}
	}
	key, payload := testimg.CryptsetupVolumeKey(t, path, pass)
	stored := readFile(t, path)
	if payload != 2<<20 || len(key) != keyBits/8 || int64(len(stored)) != payload+int64(len(want)) {
		t.Fatalf("payload at %d, %d-byte key, file %d bytes for %d bytes of plaintext", payload, len(key), len(stored), len(want))
	}
	if ct := testimg.PyEncrypt(t, key, spec, 512, 0, want); !bytes.Equal(stored[payload:], ct) {
		t.Fatalf("payload differs from python3-cryptography's encryption at byte %d", firstDiffAt(stored[payload:], ct))
	}
	if got := testimg.QemuLUKSDecrypt(t, path, pass); !bytes.Equal(got, want) {
		t.Fatalf("qemu-img plaintext differs at byte %d", firstDiffAt(got, want))
	}
}

// A raw disk encrypted with the defaults (aes-xts-plain64, 512-bit key,
// PBKDF2-sha256) opens in cryptsetup and qemu-img; so does imgfs.
func TestEncryptRawToLUKS(t *testing.T) {
	dir := t.TempDir()
	plain := testimg.RandomBytes(5<<20+1536, 60)
	clear(plain[1<<20 : 3<<20])
	in := testimg.WriteFile(t, dir, "disk.raw", plain)
	out := filepath.Join(dir, "disk.luks")
	pf := passFile(t, dir, testPass)
	r := runImgfs(t, nil, "encrypt", "--format", "luks", "--passphrase-file", pf, "--pbkdf-iterations", "1000", "-o", out, in)
	if r.code != 0 || len(r.stderr) != 0 {
		t.Fatalf("encrypt: exit %d, stderr %q", r.code, r.stderr)
	}
	checkNewLUKS1(t, out, testPass, plain, "aes-xts-plain64", 512)
	if got := mustImgfs(t, nil, "cat", "--passphrase-file", pf, out); !bytes.Equal(got, plain) {
		t.Fatal("imgfs cat of the new volume differs")
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("output mode %v, %v; want 0600", st.Mode(), err)
	}
}

// A sparse qcow2 made by qemu-img is encrypted through its plaintext: the
// volume holds what qemu-img reads from the qcow2, with another cipher,
// and a binary key file (hex passphrase) on stdin.
func TestEncryptQcow2ToLUKSWithKeyFile(t *testing.T) {
	dir := t.TempDir()
	img, plain := testimg.MakeQcow2(t, dir, "disk.qcow2", testimg.QcowImage{
		Size: 16 << 20, Options: "cluster_size=4096", Passes: exportWrites(4096),
	})
	if qemu := testimg.QemuRaw(t, img, ""); !bytes.Equal(qemu, plain) {
		t.Fatal("vector: qemu-img's plaintext differs from the writes")
	}
	key := testimg.RandomBytes(32, 61)
	out := filepath.Join(dir, "disk.luks")
	mustImgfs(t, key, "encrypt", "--key-file", "-", "--cipher", "aes-cbc-essiv:sha256", "--key-size", "256",
		"--hash", "sha512", "--pbkdf-iterations", "2000", "-o", out, img)
	checkNewLUKS1(t, out, hex.EncodeToString(key), plain, "aes-cbc-essiv:sha256", 256)
	if dump := string(testimg.Run(t, "cryptsetup", "luksDump", out)); !strings.Contains(dump, "Hash spec:     \tsha512") || !strings.Contains(dump, "Iterations:         \t2000") {
		t.Errorf("luksDump does not show sha512 and 2000 iterations:\n%s", dump)
	}
}

// --format qcow2+luks writes a qcow2 v3 image with LUKS1 encryption that
// qemu-img checks clean and decrypts to the input's plaintext, with zero
// clusters unallocated; cryptsetup accepts the embedded header.
func TestEncryptToQcow2LUKS(t *testing.T) {
	dir := t.TempDir()
	pf := passFile(t, dir, testPass)
	for _, cs := range []string{"4K", "64K"} {
		t.Run("cluster"+cs, func(t *testing.T) {
			in, plain := testimg.MakeQcow2(t, dir, "in-"+cs+".qcow2", testimg.QcowImage{
				Size: 16<<20 + 512, Passes: exportWrites(4096),
			})
			out := filepath.Join(dir, "out-"+cs+".qcow2")
			mustImgfs(t, nil, "encrypt", "--format", "qcow2+luks", "--cluster-size", cs, "--passphrase-file", pf,
				"--pbkdf-iterations", "1000", "-o", out, in)
			qemuCheckQcow2(t, out, testPass)
			if got := testimg.QemuRaw(t, out, testPass); !bytes.Equal(got, plain) {
				t.Fatalf("qemu-img plaintext differs at byte %d", firstDiffAt(got, plain))
			}
			info := string(testimg.QemuImg(t, "info", out))
			for _, want := range []string{"encrypted: yes", "format: luks", "cipher alg: aes-256", "cipher mode: xts", "iters: 1000"} {
				if !strings.Contains(info, want) {
					t.Errorf("qemu-img info lacks %q:\n%s", want, info)
				}
			}
			if got := mustImgfs(t, nil, "cat", "--passphrase-file", pf, out); !bytes.Equal(got, plain) {
				t.Fatal("imgfs cat differs")
			}
			// The compact image holds about the written data, not the disk.
			if st, _ := os.Stat(out); st.Size() > 2<<20+6<<20 {
				t.Errorf("%d-byte image for ~4 MiB of data", st.Size())
			}
			// And it exports --to luks with the same passphrase.
			lk := filepath.Join(dir, "out-"+cs+".luks")
			mustImgfs(t, nil, "export", "--to", "luks", "--passphrase-file", pf, "-o", lk, out)
			if got := testimg.QemuLUKSDecrypt(t, lk, testPass); !bytes.Equal(got, plain) {
				t.Fatal("qemu-img plaintext of the re-export differs")
			}
		})
	}
}

// Without --pbkdf-iterations the iterations are calibrated to --iter-time.
func TestEncryptCalibratesIterations(t *testing.T) {
	dir := t.TempDir()
	plain := testimg.RandomBytes(1<<20, 62)
	in := testimg.WriteFile(t, dir, "disk.raw", plain)
	out := filepath.Join(dir, "disk.luks")
	mustImgfs(t, nil, "encrypt", "--passphrase-file", passFile(t, dir, testPass), "--iter-time", "100", "-o", out, in)
	dump := string(testimg.Run(t, "cryptsetup", "luksDump", out))
	m := regexp.MustCompile(`Iterations:\s+(\d+)`).FindStringSubmatch(dump)
	if m == nil {
		t.Fatalf("no iterations in luksDump:\n%s", dump)
	}
	if n, _ := strconv.Atoi(m[1]); n < 1000 {
		t.Fatalf("%d iterations: below cryptsetup's minimum", n)
	}
	if got := testimg.QemuLUKSDecrypt(t, out, testPass); !bytes.Equal(got, plain) {
		t.Fatal("qemu-img plaintext differs")
	}
}

func TestEncryptRefusals(t *testing.T) {
	dir := t.TempDir()
	raw := testimg.RandomBytes(1<<20, 63)
	in := testimg.WriteFile(t, dir, "disk.raw", raw)
	enc := luks1Image(t, dir, raw, testPass, "")
	encQcow := testimg.ConvertQcow2(t, dir, "enc.qcow2", raw, "", testPass, false)
	pf := passFile(t, dir, testPass)
	out := filepath.Join(dir, "out.luks")
	cases := []struct {
		name    string
		args    []string
		code    int
		wantErr string
	}{
		{"qcow2+luks on stdout", []string{"--format", "qcow2+luks", "--passphrase-file", pf, "-o", "-", in}, 2, "use -o FILE"},
		{"unknown format", []string{"--format", "vhd", "--passphrase-file", pf, "-o", out, in}, 2, "want luks"},
		{"no passphrase", []string{"-o", out, in}, 2, "passphrase is required"},
		{"no output", []string{"--passphrase-file", pf, in}, 2, "output"},
		{"raw LUKS input", []string{"--passphrase-file", pf, "-o", out, enc}, 1, "already encrypted"},
		{"qcow2+LUKS input", []string{"--passphrase-file", pf, "-o", out, encQcow}, 1, "already encrypted"},
		{"input stated as qcow2", []string{"--input-format", "qcow2", "--passphrase-file", pf, "-o", out, in}, 1, "format mismatch"},
		{"too few iterations", []string{"--pbkdf-iterations", "10", "--passphrase-file", pf, "-o", out, in}, 2, "pbkdf-iterations"},
		{"unknown cipher", []string{"--cipher", "serpent-xts-plain64", "--passphrase-file", pf, "-o", out, in}, 1, "unsupported cipher"},
		{"bad key size", []string{"--key-size", "160", "--passphrase-file", pf, "-o", out, in}, 1, "key size"},
		{"output is input", []string{"--passphrase-file", pf, "-o", in, in}, 2, "OUTPUT is INPUT"},
		{"missing input", []string{"--passphrase-file", pf, "-o", out, filepath.Join(dir, "nope")}, 1, "no such file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runImgfs(t, nil, append([]string{"encrypt"}, c.args...)...)
			if r.code != c.code {
				t.Fatalf("exit %d, want %d; stderr %q", r.code, c.code, r.stderr)
			}
			if !strings.Contains(string(r.stderr), c.wantErr) {
				t.Errorf("stderr %q does not say %q", r.stderr, c.wantErr)
			}
			if strings.Contains(string(r.stderr), testPass) || strings.Contains(string(r.stderr), "panic") {
				t.Errorf("stderr leaks the passphrase or panics: %q", r.stderr)
			}
			if _, err := os.Stat(out); err == nil {
				t.Error("a failed encrypt left an output file")
			}
			if !bytes.Equal(readFile(t, in), raw) {
				t.Error("the input was modified")
			}
		})
	}
}
