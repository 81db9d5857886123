package tests

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgfs/imgfs/tests/testimg"
)

// exportWrites leave sparse regions, cross cluster boundaries at odd
// offsets, overwrite earlier data from a later pass (allocating new host
// clusters out of guest order) and zero a written range.
func exportWrites(cluster int64) [][]testimg.QcowWrite {
	return [][]testimg.QcowWrite{
		{
			{Off: 3*cluster + 1000, Len: 5*cluster + 333, Seed: 1},
			{Off: 6 << 20, Len: 700 << 10, Seed: 2},
			{Off: 15<<20 - 4096, Len: 4096, Seed: 3},
		},
		{
			{Off: 1 << 20, Len: 2*cluster + 7, Seed: 4},
			{Off: 4*cluster + 17, Len: cluster, Seed: 5},
			{Off: 6<<20 + 100<<10, Len: 64 << 10, Zero: true},
		},
	}
}

// checkLUKSExport proves that path is a raw LUKS1 volume that pass opens in
// cryptsetup and qemu-img with exactly want as its plaintext.
func checkLUKSExport(t *testing.T, path, pass string, want []byte) {
	t.Helper()
	testimg.Need(t, "cryptsetup")
	testimg.Run(t, "cryptsetup", "isLuks", path)
	dump := string(testimg.Run(t, "cryptsetup", "luksDump", path))
	if !strings.Contains(dump, "Version:       \t1") || !strings.Contains(dump, "Key Slot 0: ENABLED") {
		t.Fatalf("luksDump:\n%s", dump)
	}
	key, payload := testimg.CryptsetupVolumeKey(t, path, pass)
	if len(key) == 0 || payload%(1<<20) != 0 {
		t.Fatalf("cryptsetup: %d-byte key, payload offset %d", len(key), payload)
	}
	got := testimg.QemuLUKSDecrypt(t, path, pass)
	if !bytes.Equal(got, want) {
		t.Fatalf("qemu-img reads %d bytes that differ from the %d-byte plaintext at byte %d", len(got), len(want), firstDiffAt(got, want))
	}
}

func firstDiffAt(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// A qcow2+LUKS image made by qemu-img exported --to luks is a raw LUKS1
// volume that the same passphrase opens in cryptsetup and qemu-img, with
// the same plaintext (unallocated clusters read as zeros), for 4 KiB and
// 64 KiB clusters and for XTS, XTS with 32-bit "plain" IVs and CBC-ESSIV.
func TestExportQcow2LUKSToLUKS(t *testing.T) {
	for _, tc := range []struct {
		cluster  int64
		cipher   string
		wantMode string // the exported header's cipher mode
	}{
		{4096, "", "xts-plain64"},
		{65536, "", "xts-plain64"},
		{65536, "encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha1", "cbc-essiv:sha256"},
		{4096, "encrypt.cipher-alg=aes-256,encrypt.cipher-mode=xts,encrypt.ivgen-alg=plain,encrypt.hash-alg=sha512", "xts-plain"},
	} {
		cluster := tc.cluster
		name := fmt.Sprintf("cluster%d", cluster)
		opts := fmt.Sprintf("cluster_size=%d", cluster)
		if tc.cipher != "" {
			name += "-" + strings.NewReplacer("encrypt.", "", "=", "-", ",", "_").Replace(tc.cipher)
			opts += "," + tc.cipher
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			img, plain := testimg.MakeQcow2(t, dir, "enc.qcow2", testimg.QcowImage{
				Size: 16 << 20, Options: opts,
				Passphrase: testPass, Passes: exportWrites(cluster),
			})
			if qemu := testimg.QemuRaw(t, img, testPass); !bytes.Equal(qemu, plain) {
				t.Fatal("vector: qemu-img's plaintext of the qcow2 differs from the writes")
			}
			out := filepath.Join(dir, "out.luks")
			r := runImgfs(t, nil, "export", "--to", "luks", "--passphrase-file", passFile(t, dir, testPass), "-o", out, img)
			if r.code != 0 || len(r.stderr) != 0 {
				t.Fatalf("export: exit %d, stderr %q (progress must be off when stderr is not a terminal)", r.code, r.stderr)
			}
			checkLUKSExport(t, out, testPass, plain)
			if dump := string(testimg.Run(t, "cryptsetup", "luksDump", out)); !strings.Contains(dump, "Cipher mode:   \t"+tc.wantMode+"\n") {
				t.Fatalf("exported header is not %s:\n%s", tc.wantMode, dump)
			}
			// imgfs reads its own export too.
			if got := mustImgfs(t, nil, "cat", "--passphrase-file", passFile(t, dir, testPass), out); !bytes.Equal(got, plain) {
				t.Fatal("imgfs cat of the export differs")
			}
		})
	}
}

// A Barbican-style binary key (passphrase = its lowercase hex) opens the
// export, and the export streams to stdout as well.
func TestExportQcow2LUKSWithKeyFileToStdout(t *testing.T) {
	dir := t.TempDir()
	key := testimg.RandomBytes(32, 77)
	pass := hex.EncodeToString(key)
	raw := testimg.RandomBytes(3<<20, 78)
	clear(raw[1<<20 : 2<<20])
	img := testimg.ConvertQcow2(t, dir, "enc.qcow2", raw, "", pass, false)
	kf := testimg.WriteFile(t, dir, "key.bin", key)
	stdout := mustImgfs(t, nil, "export", "--to", "luks", "--key-file", kf, img)
	out := testimg.WriteFile(t, dir, "out.luks", stdout)
	checkLUKSExport(t, out, pass, raw)
}

// A raw LUKS source exports as its stored bytes, with or without a key.
func TestExportRawLUKSIsStoredBytes(t *testing.T) {
	dir := t.TempDir()
	plain := testimg.RandomBytes(2<<20+512, 20)
	img := luks1Image(t, dir, plain, testPass, "")
	stored := readFile(t, img)
	for _, args := range [][]string{{}, {"--passphrase-file", passFile(t, dir, testPass)}} {
		out := filepath.Join(dir, "out.luks")
		mustImgfs(t, nil, append(append([]string{"export", "--to", "luks", "-o", out}, args...), img)...)
		if !bytes.Equal(readFile(t, out), stored) {
			t.Fatalf("export %v differs from the stored image", args)
		}
	}
}

// --to raw writes the plaintext disk, sparse in a file.
func TestExportToRaw(t *testing.T) {
	dir := t.TempDir()
	img, plain := testimg.MakeQcow2(t, dir, "enc.qcow2", testimg.QcowImage{
		Size: 16 << 20, Options: "cluster_size=65536", Passphrase: testPass, Passes: exportWrites(65536),
	})
	out := filepath.Join(dir, "out.raw")
	mustImgfs(t, nil, "export", "--to", "raw", "--passphrase-file", passFile(t, dir, testPass), "-o", out, img)
	if !bytes.Equal(readFile(t, out), plain) {
		t.Fatal("--to raw differs from the plaintext")
	}
	got := mustImgfs(t, nil, "export", "--to", "raw", "--passphrase-file", passFile(t, dir, testPass), img)
	if !bytes.Equal(got, plain) {
		t.Fatal("--to raw on stdout differs from the plaintext")
	}
}

// --progress=json prints one JSON object per line on stderr, ending with
// "done" and every byte counted.
func TestExportProgressJSON(t *testing.T) {
	dir := t.TempDir()
	raw := testimg.RandomBytes(6<<20, 30)
	img := testimg.ConvertQcow2(t, dir, "enc.qcow2", raw, "cluster_size=4096", testPass, false)
	out := filepath.Join(dir, "out.luks")
	r := runImgfs(t, nil, "export", "--to", "luks", "--progress=json", "--passphrase-file", passFile(t, dir, testPass), "-o", out, img)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	size := int64(len(readFile(t, out)))
	lines := strings.Split(strings.TrimSpace(string(r.stderr)), "\n")
	var last struct {
		Event string  `json:"event"`
		Bytes int64   `json:"bytes"`
		Total int64   `json:"total"`
		Rate  float64 `json:"bytes_per_second"`
	}
	for _, l := range lines {
		if err := json.Unmarshal([]byte(l), &last); err != nil {
			t.Fatalf("progress line %q is not JSON: %v", l, err)
		}
	}
	if len(lines) < 2 || last.Event != "done" || last.Bytes != size || last.Total != size || last.Rate <= 0 {
		t.Fatalf("progress ends with %+v after %d lines; output is %d bytes", last, len(lines), size)
	}
	// --progress=text also works without a terminal and ends with a summary line.
	r = runImgfs(t, nil, "export", "--to", "luks", "--progress=text", "--passphrase-file", passFile(t, dir, testPass), "-o", out, img)
	if r.code != 0 || !strings.Contains(string(r.stderr), "100.0%") {
		t.Fatalf("--progress=text: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestExportRefusals(t *testing.T) {
	dir := t.TempDir()
	raw := testimg.RandomBytes(1<<20, 40)
	enc := testimg.ConvertQcow2(t, dir, "enc.qcow2", raw, "", testPass, false)
	plainQcow := testimg.ConvertQcow2(t, dir, "plain.qcow2", raw, "", "", false)
	rawFile := testimg.WriteFile(t, dir, "plain.raw", raw)
	pf := passFile(t, dir, testPass)
	wrong := testimg.WriteFile(t, dir, "wrong", []byte("not it\n"))
	out := filepath.Join(dir, "out.luks")

	cases := []struct {
		name     string
		args     []string
		code     int
		wantErr  string
		withFile bool
	}{
		{"qcow2 target on stdout", []string{"--to", "qcow2", "--passphrase-file", pf, enc}, 2, "use -o FILE", false},
		{"bad cluster size", []string{"--to", "qcow2", "--cluster-size", "3K", "--passphrase-file", pf, "-o", out, enc}, 2, "--cluster-size", true},
		{"unknown target", []string{"--to", "vmdk", enc}, 2, "want luks, raw or qcow2", false},
		{"no target", []string{enc}, 2, "to", false},
		{"wrong passphrase", []string{"--to", "luks", "--passphrase-file", wrong, "-o", out, enc}, 1, "no keyslot matches the passphrase", true},
		{"no key for qcow2+LUKS", []string{"--to", "luks", "-o", out, enc}, 1, "key is required", true},
		{"unencrypted qcow2 to luks", []string{"--to", "luks", "-o", out, plainQcow}, 1, "imgfs encrypt", true},
		{"unencrypted raw to luks", []string{"--to", "luks", "-o", out, rawFile}, 1, "imgfs encrypt", true},
		{"bad progress mode", []string{"--to", "raw", "--progress", "loud", rawFile}, 2, "--progress", false},
		{"output directory missing", []string{"--to", "luks", "--passphrase-file", pf, "-o", filepath.Join(dir, "no", "x"), enc}, 1, "no such file", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runImgfs(t, nil, append([]string{"export"}, c.args...)...)
			if r.code != c.code {
				t.Fatalf("exit %d, want %d; stderr %q", r.code, c.code, r.stderr)
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
			if _, err := os.Stat(out); c.withFile && err == nil {
				t.Error("a failed export left an output file")
			}
			if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*imgfs-*")); len(leftovers) > 0 {
				t.Errorf("temporary files left behind: %v", leftovers)
			}
		})
	}
}

// qemuCheckQcow2 runs `qemu-img check` (with the key for an encrypted image)
// and fails unless it reports no errors and no leaks.
func qemuCheckQcow2(t *testing.T, path, pass string) {
	t.Helper()
	args := []string{"check"}
	if pass != "" {
		args = append(args, "--object", "secret,id=sec0,data="+pass, "--image-opts", "driver=qcow2,encrypt.key-secret=sec0,file.filename="+path)
	} else {
		args = append(args, "-f", "qcow2", path)
	}
	out := string(testimg.QemuImg(t, args...))
	if !strings.Contains(out, "No errors were found on the image.") || strings.Contains(out, "leaked") {
		t.Fatalf("qemu-img check:\n%s", out)
	}
}

// --to qcow2 keeps the encryption and the keyslots: a qcow2+LUKS source,
// a raw LUKS1 source and an unencrypted source become compact qcow2 images
// that qemu-img checks clean and reads as the same plaintext with the same
// passphrase.
func TestExportToQcow2(t *testing.T) {
	dir := t.TempDir()
	pf := passFile(t, dir, testPass)
	encQcow, plain := testimg.MakeQcow2(t, dir, "enc.qcow2", testimg.QcowImage{
		Size: 16 << 20, Options: "cluster_size=4096", Passphrase: testPass, Passes: exportWrites(4096),
	})
	rawLUKS := luks1Image(t, dir, plain, testPass, "")
	plainQcow := testimg.ConvertQcow2(t, dir, "plain.qcow2", plain, "", "", false)
	for _, c := range []struct {
		name, src, pass, clusters string
	}{
		{"qcow2+LUKS", encQcow, testPass, "4K"},
		{"raw LUKS1", rawLUKS, testPass, "64K"},
		{"unencrypted qcow2", plainQcow, "", "256K"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(dir, "out-"+strings.ReplaceAll(c.name, " ", "-")+".qcow2")
			args := []string{"export", "--to", "qcow2", "--cluster-size", c.clusters, "-o", out}
			if c.pass != "" {
				args = append(args, "--passphrase-file", pf)
			}
			mustImgfs(t, nil, append(args, c.src)...)
			qemuCheckQcow2(t, out, c.pass)
			if got := testimg.QemuRaw(t, out, c.pass); !bytes.Equal(got, plain) {
				t.Fatalf("qemu-img plaintext differs at byte %d", firstDiffAt(got, plain))
			}
			info := string(testimg.QemuImg(t, "info", out))
			if enc := strings.Contains(info, "encrypted: yes"); enc != (c.pass != "") {
				t.Fatalf("qemu-img info (encrypted = %v expected):\n%s", c.pass != "", info)
			}
			if st, _ := os.Stat(out); st.Size() > 8<<20 {
				t.Errorf("%d-byte qcow2 for a 16 MiB disk with ~4 MiB of data: zero clusters allocated?", st.Size())
			}
		})
	}
}

// A 256 MiB sparse qcow2+LUKS disk exports in bounded memory; the test logs
// the throughput (the whole disk is re-encrypted: unallocated clusters
// become encrypted zeros).
func TestExportLargeSparseDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("large export")
	}
	dir := t.TempDir()
	const size = 256 << 20
	img, _ := testimg.MakeQcow2(t, dir, "big.qcow2", testimg.QcowImage{
		Size: size, Passphrase: testPass,
		Passes: [][]testimg.QcowWrite{{{Off: 0, Len: 1 << 20, Seed: 50}, {Off: size - 3<<20, Len: 2 << 20, Seed: 51}}},
	})
	out := filepath.Join(dir, "big.luks")
	start := time.Now()
	mustImgfs(t, nil, "export", "--to", "luks", "--passphrase-file", passFile(t, dir, testPass), "-o", out, img)
	elapsed := time.Since(start)
	t.Logf("exported %d MiB in %v (%.0f MiB/s)", size>>20, elapsed.Round(time.Millisecond), float64(size>>20)/elapsed.Seconds())
	want := testimg.QemuRaw(t, img, testPass)
	if got := testimg.QemuLUKSDecrypt(t, out, testPass); !bytes.Equal(got, want) {
		t.Fatalf("qemu-img reads the export differently at byte %d", firstDiffAt(got, want))
	}
}

// On a terminal (a pty made by script(1)) export shows a progress line by
// default, and it refuses to write the image itself to the terminal.
func TestExportProgressOnTerminal(t *testing.T) {
	testimg.Need(t, "script")
	dir := t.TempDir()
	raw := testimg.RandomBytes(3<<20, 90)
	img := testimg.ConvertQcow2(t, dir, "enc.qcow2", raw, "", testPass, false)
	pf := passFile(t, dir, testPass)
	out := filepath.Join(dir, "out.luks")
	tty := string(testimg.Run(t, "script", "-qec", strings.Join([]string{imgfsBin, "export", "--to", "luks", "--passphrase-file", pf, "-o", out, img}, " "), "/dev/null"))
	if !strings.Contains(tty, "\r\x1b[K") || !strings.Contains(tty, "100.0%") || !strings.Contains(tty, "MiB/s") {
		t.Fatalf("no progress line on the terminal: %q", tty)
	}
	checkLUKSExport(t, out, testPass, raw)
	r, err := testimg.RunErr("script", "-qec", strings.Join([]string{imgfsBin, "export", "--to", "luks", "--passphrase-file", pf, img}, " "), "/dev/null")
	if !strings.Contains(string(r), "refusing to write an image to a terminal") || len(r) > 200 {
		t.Fatalf("export to a terminal: %v, %q", err, r)
	}
}

// SIGINT stops an export cleanly: non-zero exit, no output and no
// temporary file left behind.
func TestExportInterruptedLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "big.qcow2")
	testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data="+testPass,
		"-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", img, "64G")
	out := filepath.Join(dir, "out", "big.luks")
	if err := os.Mkdir(filepath.Dir(out), 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(imgfsBin, "export", "--to", "luks", "--passphrase-file", passFile(t, dir, testPass), "-o", out, img)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the temporary file exists, then interrupt.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m, _ := filepath.Glob(filepath.Join(dir, "out", ".*imgfs-*")); len(m) > 0 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("no temporary file appeared")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	if err == nil {
		t.Fatal("interrupted export exited 0")
	}
	if !strings.Contains(stderr.String(), "context canceled") {
		t.Errorf("stderr %q does not say it was cancelled", stderr.String())
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
		t.Fatalf("left behind: %v", entries)
	}
}

// A cryptsetup LUKS2 volume exports --to luks as stored (no key needed),
// --to raw as its plaintext, and is refused --to qcow2 (qcow2+LUKS holds
// LUKS1 only).
func TestExportLUKS2Source(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "v2.luks")
	testimg.CryptsetupFormat(t, path, 20<<20, testPass, "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--sector-size", "4096")
	key, payload := testimg.CryptsetupVolumeKey(t, path, testPass)
	plain := testimg.RandomBytes(int(20<<20-payload), 95)
	testimg.FillPayload(t, path, payload, key, "aes-xts-plain64", 4096, 0, plain)
	pf := passFile(t, dir, testPass)

	out := filepath.Join(dir, "out.luks")
	mustImgfs(t, nil, "export", "--to", "luks", "-o", out, path)
	if !bytes.Equal(readFile(t, out), readFile(t, path)) {
		t.Fatal("--to luks of a LUKS2 volume is not its stored bytes")
	}
	if got := mustImgfs(t, nil, "export", "--to", "raw", "--passphrase-file", pf, path); !bytes.Equal(got, plain) {
		t.Fatal("--to raw differs from the plaintext")
	}
	r := runImgfs(t, nil, "export", "--to", "qcow2", "--passphrase-file", pf, "-o", filepath.Join(dir, "x.qcow2"), path)
	if r.code != 1 || !strings.Contains(string(r.stderr), "LUKS2") {
		t.Fatalf("--to qcow2 of LUKS2: exit %d, %s", r.code, r.stderr)
	}
}
