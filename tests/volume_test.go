package tests

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgfs/imgfs/tests/testimg"
)

// loopDevice attaches a size-byte file filled with 0xFF (in /dev/shm when
// it exists) to a free loop device and returns the device's path; the
// device is detached when the test ends. Without losetup or loop devices
// the test skips loudly, and fails in CI.
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	testimg.Need(t, "losetup")
	dir := "/dev/shm"
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		dir = ""
	}
	f, err := os.CreateTemp(dir, "imgfs-loop-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(f.Name()) })
	ff := bytes.Repeat([]byte{0xff}, 1<<20)
	for off := int64(0); off < size; off += int64(len(ff)) {
		if _, err := f.Write(ff[:min(int64(len(ff)), size-off)]); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	out, err := testimg.RunErr("losetup", "-f", "--show", f.Name())
	if err != nil {
		if testimg.InCI() {
			t.Fatalf("losetup: %v", err)
		}
		t.Skipf("SKIP: cannot attach a loop device (needs root and /dev/loop*): %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if _, err := testimg.RunErr("losetup", "-d", dev); err != nil {
			t.Errorf("losetup -d %s: %v", dev, err)
		}
	})
	return dev
}

// readDevice returns the first n bytes of a device.
func readDevice(t *testing.T, dev string, n int64) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := io.ReadFull(f, b); err != nil {
		t.Fatalf("read %s: %v", dev, err)
	}
	return b
}

// allFF reports whether b is all 0xFF (the prefill: nothing was written).
func allFF(b []byte) bool { return len(bytes.Trim(b, "\xff")) == 0 }

// qemuCompare runs qemu-img compare on two --image-opts specs with the
// secret s0 = pass.
func qemuCompare(t *testing.T, pass, a, b string) {
	t.Helper()
	testimg.QemuImg(t, "compare", "--object", "secret,id=s0,data="+pass, "--image-opts", a, b)
}

// Export writes raw LUKS (copied as stored), qcow2+LUKS (as raw LUKS) and
// a sparse 1 GiB plain qcow2 (as raw) into loop devices prefilled with
// 0xFF, from a file and from an http:// URL: cryptsetup reads the header,
// imgfs cat of the device with the key is the plaintext, qemu-img compare
// agrees with the source, and the holes read as zeros.
func TestExportIntoLoopDevice(t *testing.T) {
	testimg.Need(t, "cryptsetup", "qemu-img")
	dir := t.TempDir()
	url := serveDir(t, dir)
	pf := passFile(t, dir, testPass)

	plainLUKS := testimg.RandomBytes(6<<20, 161)
	clear(plainLUKS[1<<20 : 3<<20])
	rawLUKS := luks1Image(t, dir, plainLUKS, testPass, "")
	qcowLUKS, plainQcow := testimg.MakeQcow2(t, dir, "enc.qcow2", testimg.QcowImage{
		Size: 16 << 20, Options: "cluster_size=65536", Passphrase: testPass, Passes: exportWrites(65536),
	})
	sparse, _ := testimg.MakeQcow2(t, dir, "sparse.qcow2", testimg.QcowImage{
		Size: 1 << 30, Passes: [][]testimg.QcowWrite{{{Off: 5 << 20, Len: 1 << 20, Seed: 162}, {Off: 700 << 20, Len: 3<<20 + 4096, Seed: 163}, {Off: 1<<30 - 4096, Len: 4096, Seed: 164}}},
	})
	rawLUKSSize := fileSize(t, rawLUKS)

	for _, from := range []struct{ name, prefix string }{{"file", dir + "/"}, {"http", url + "/"}} {
		t.Run("rawLUKS-"+from.name, func(t *testing.T) {
			dev := loopDevice(t, rawLUKSSize)
			mustImgfs(t, nil, "export", "--to", "luks", "--verify", "-o", dev, from.prefix+filepath.Base(rawLUKS))
			if got, want := readDevice(t, dev, rawLUKSSize), readFile(t, rawLUKS); !bytes.Equal(got, want) {
				t.Fatalf("the device differs from the stored raw LUKS image at byte %d", firstDiffAt(got, want))
			}
			testimg.Run(t, "cryptsetup", "luksDump", dev)
			if got := mustImgfs(t, nil, "cat", "--passphrase-file", pf, dev); !bytes.Equal(got[:len(plainLUKS)], plainLUKS) {
				t.Fatal("imgfs cat of the device differs from the plaintext")
			}
		})
		t.Run("qcow2LUKS-"+from.name, func(t *testing.T) {
			size := int64(2<<20 + len(plainQcow))
			dev := loopDevice(t, size)
			mustImgfs(t, nil, "export", "--to", "luks", "--passphrase-file", pf, "--verify", "-o", dev, from.prefix+"enc.qcow2")
			checkLUKSExport(t, dev, testPass, plainQcow)
			if got := mustImgfs(t, nil, "cat", "--passphrase-file", pf, dev); !bytes.Equal(got, plainQcow) {
				t.Fatal("imgfs cat of the device differs from the plaintext")
			}
			qemuCompare(t, testPass, "driver=luks,key-secret=s0,file.filename="+dev,
				"driver=qcow2,encrypt.key-secret=s0,file.filename="+qcowLUKS)
		})
		t.Run("sparseQcow2-"+from.name, func(t *testing.T) {
			dev := loopDevice(t, 1<<30)
			mustImgfs(t, nil, "export", "--to", "raw", "--verify", "-o", dev, from.prefix+"sparse.qcow2")
			// The holes were 0xFF on the device: compare proves they are zeros now.
			qemuCompare(t, testPass, "driver=raw,file.filename="+dev, "driver=qcow2,file.filename="+sparse)
		})
	}
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// --target-is-zero leaves the holes of a device alone (here still 0xFF),
// and the default writes them as zeros.
func TestExportTargetIsZeroSkipsHoles(t *testing.T) {
	dir := t.TempDir()
	plain := testimg.RandomBytes(12<<20, 165)
	clear(plain[4<<20 : 8<<20])
	src := testimg.WriteFile(t, dir, "plain.raw", plain)
	dev := loopDevice(t, int64(len(plain)))
	mustImgfs(t, nil, "cat", "--target-is-zero", "-o", dev, src)
	got := readDevice(t, dev, int64(len(plain)))
	if !bytes.Equal(got[:4<<20], plain[:4<<20]) || !allFF(got[4<<20:8<<20]) || !bytes.Equal(got[8<<20:], plain[8<<20:]) {
		t.Fatal("--target-is-zero: data not written or the hole touched")
	}
	mustImgfs(t, nil, "cat", "-o", dev, src)
	if !bytes.Equal(readDevice(t, dev, int64(len(plain))), plain) {
		t.Fatal("the hole was not written as zeros")
	}
}

// A device too small, held open exclusively, or mounted is refused before a
// byte is written; a directory and a character device are refused naming
// what -o takes.
func TestExportRefusesDevices(t *testing.T) {
	dir := t.TempDir()
	plain := testimg.RandomBytes(8<<20, 166)
	src := testimg.WriteFile(t, dir, "plain.raw", plain)

	small := loopDevice(t, 8<<20-4096)
	r := runImgfs(t, nil, "cat", "-o", small, src)
	if r.code != 1 || !strings.Contains(string(r.stderr), "does not fit") {
		t.Fatalf("too small: exit %d: %s", r.code, r.stderr)
	}
	if !allFF(readDevice(t, small, 8<<20-4096)) {
		t.Fatal("too small: bytes were written")
	}

	held := loopDevice(t, 8<<20)
	f, err := os.OpenFile(held, os.O_RDONLY|syscall.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	r = runImgfs(t, nil, "cat", "-o", held, src)
	f.Close()
	if r.code != 1 || !strings.Contains(string(r.stderr), "in use") {
		t.Fatalf("held: exit %d: %s", r.code, r.stderr)
	}
	if !allFF(readDevice(t, held, 8<<20)) {
		t.Fatal("held: bytes were written")
	}

	testimg.Need(t, "mkfs.ext4", "mount", "umount")
	mounted := loopDevice(t, 8<<20)
	testimg.Run(t, "mkfs.ext4", "-q", mounted)
	mnt := t.TempDir()
	testimg.Run(t, "mount", mounted, mnt)
	r = runImgfs(t, nil, "cat", "-o", mounted, src)
	testimg.Run(t, "umount", mnt)
	if r.code != 1 || !strings.Contains(string(r.stderr), "in use") {
		t.Fatalf("mounted: exit %d: %s", r.code, r.stderr)
	}
	if out := testimg.Run(t, "blkid", "-o", "value", "-s", "TYPE", mounted); strings.TrimSpace(string(out)) != "ext4" {
		t.Fatalf("mounted: the filesystem is gone (%q)", out)
	}

	for _, bad := range []string{dir, "/dev/zero"} {
		r = runImgfs(t, nil, "cat", "-o", bad, src)
		if r.code == 0 || !strings.Contains(string(r.stderr), "a block device (written in place)") {
			t.Fatalf("-o %s: exit %d: %s", bad, r.code, r.stderr)
		}
	}
}

// SIGTERM during an export into a device exits non-zero and says how far
// it got.
func TestExportIntoDeviceSIGTERM(t *testing.T) {
	dir := t.TempDir()
	plain := testimg.RandomBytes(64<<20, 167)
	testimg.WriteFile(t, dir, "plain.raw", plain)
	// A slow body, not a slow request: imgfs's requests grow to tens of
	// MiB in a sequential run, so a per-request delay would let the
	// export finish before its first progress report.
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "plain.raw", time.Time{}, &slowReader{bytes.NewReader(plain)})
	}))
	defer slow.Close()
	dev := loopDevice(t, int64(len(plain)))
	cmd := exec.Command(imgfsBin, "export", "--to", "raw", "--progress", "json", "--parallel", "1", "-o", dev, slow.URL+"/plain.raw")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []string
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		var ev struct {
			Event string
			Bytes int64
		}
		if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Event == "progress" && ev.Bytes > 0 {
			cmd.Process.Signal(syscall.SIGTERM)
			break
		}
	}
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	err = cmd.Wait()
	all := strings.Join(lines, "\n")
	if err == nil {
		t.Fatalf("SIGTERM: exit 0:\n%s", all)
	}
	if !strings.Contains(all, "interrupted after ") || strings.Contains(all, "interrupted after 0 of") || !strings.Contains(all, fmt.Sprintf(" of %d bytes", len(plain))) {
		t.Fatalf("SIGTERM: no progress in the message:\n%s", all)
	}
}

// luksDumpSlots counts the enabled keyslots cryptsetup sees.
func luksDumpSlots(t *testing.T, dev string) int {
	t.Helper()
	return strings.Count(string(testimg.Run(t, "cryptsetup", "luksDump", dev)), ": ENABLED")
}

// opens reports whether cryptsetup accepts pass for dev.
func opens(dev, pass string) bool {
	cmd := exec.Command("cryptsetup", "luksOpen", "--test-passphrase", "--key-file", "-", dev)
	cmd.Stdin = strings.NewReader(pass)
	return cmd.Run() == nil
}

// export --to luks with a new passphrase writes a volume that cryptsetup
// and qemu-img open with the new passphrase, with the old one only when
// --keep-old-keyslots kept it, with the same volume key and plaintext and
// one keyslot when the old ones were removed; for a raw LUKS source
// (copied as stored, header re-wrapped) and for qcow2+LUKS. A LUKS2
// source is refused before writing.
func TestExportNewKeyIntoLoopDevice(t *testing.T) {
	testimg.Need(t, "cryptsetup", "qemu-img")
	dir := t.TempDir()
	const newPass = "a passphrase of the volume's own"
	pf, npf := passFile(t, dir, testPass), testimg.PassFile(t, newPass)
	plain := testimg.RandomBytes(5<<20, 171)
	rawLUKS := luks1Image(t, dir, plain, testPass, "")
	qcowLUKS, plainQcow := testimg.MakeQcow2(t, dir, "enc.qcow2", testimg.QcowImage{
		Size: 16 << 20, Options: "cluster_size=65536", Passphrase: testPass, Passes: exportWrites(65536),
	})
	oldKey, _ := testimg.CryptsetupVolumeKey(t, rawLUKS, testPass)
	for _, src := range []struct {
		name, path string
		plain      []byte
		size       int64
	}{{"rawLUKS", rawLUKS, plain, fileSize(t, rawLUKS)}, {"qcow2LUKS", qcowLUKS, plainQcow, 2<<20 + int64(len(plainQcow))}} {
		for _, keep := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s-keep=%v", src.name, keep), func(t *testing.T) {
				dev := loopDevice(t, src.size)
				args := []string{"export", "--to", "luks", "--passphrase-file", pf, "--new-passphrase-file", npf, "--new-pbkdf-iterations", "1000", "--verify", "-o", dev, src.path}
				if keep {
					args = append(args, "--keep-old-keyslots")
				}
				mustImgfs(t, nil, args...)
				if !opens(dev, newPass) {
					t.Fatal("cryptsetup does not open the volume with the new passphrase")
				}
				if opens(dev, testPass) != keep {
					t.Fatalf("keep=%v: cryptsetup opens with the old passphrase: %v", keep, !keep)
				}
				if n, want := luksDumpSlots(t, dev), map[bool]int{false: 1, true: 2}[keep]; n != want {
					t.Fatalf("luksDump shows %d keyslots, want %d", n, want)
				}
				if src.name == "rawLUKS" {
					if key, _ := testimg.CryptsetupVolumeKey(t, dev, newPass); !bytes.Equal(key, oldKey) {
						t.Fatal("the volume key changed: the payload would need re-encryption")
					}
					// The payload is the stored one, byte for byte.
					pay := int64(2 << 20)
					if got, want := readDevice(t, dev, src.size)[pay:], readFile(t, rawLUKS)[pay:]; !bytes.Equal(got, want) {
						t.Fatal("the payload was not copied as stored")
					}
				}
				if got := testimg.QemuLUKSDecrypt(t, dev, newPass); !bytes.Equal(got[:len(src.plain)], src.plain) {
					t.Fatal("qemu-img with the new passphrase reads another plaintext")
				}
				_, err := testimg.RunErr("qemu-img", "compare", "--object", "secret,id=s0,data="+testPass, "--image-opts",
					"driver=luks,key-secret=s0,file.filename="+dev, "driver=luks,key-secret=s0,file.filename="+dev)
				if (err == nil) != keep {
					t.Fatalf("keep=%v: qemu-img with the old passphrase: %v", keep, err)
				}
			})
		}
	}
	t.Run("luks2-refused", func(t *testing.T) {
		l2 := filepath.Join(dir, "luks2.img")
		testimg.CryptsetupFormat(t, l2, 4<<20, testPass, "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
		dev := loopDevice(t, 4<<20)
		r := runImgfs(t, nil, "export", "--to", "luks", "--passphrase-file", pf, "--new-passphrase-file", npf, "-o", dev, l2)
		if r.code != 1 || !strings.Contains(string(r.stderr), "only LUKS1 headers are re-wrapped") {
			t.Fatalf("LUKS2: exit %d: %s", r.code, r.stderr)
		}
		if !allFF(readDevice(t, dev, 4<<20)) {
			t.Fatal("LUKS2: bytes were written")
		}
	})
}

// --new-key makes a random Barbican secret and prints its id, --new-key-id
// takes an existing one (passphrase type as-is, symmetric as hex): the
// exported volume opens with the secret's passphrase only.
func TestExportNewBarbicanKey(t *testing.T) {
	tc := needCloud(t)
	testimg.Need(t, "cryptsetup")
	dir := t.TempDir()
	plain := testimg.RandomBytes(3<<20, 172)
	rawLUKS := luks1Image(t, dir, plain, testPass, "")
	pf := passFile(t, dir, testPass)
	size := fileSize(t, rawLUKS)

	dev := loopDevice(t, size)
	id := strings.TrimSpace(string(mustImgfs(t, nil, "export", "--to", "luks", "--passphrase-file", pf, "--new-key", "--new-pbkdf-iterations", "1000", "-o", dev, rawLUKS)))
	if len(id) != 36 {
		t.Fatalf("--new-key printed %q, want a secret id", id)
	}
	if got := mustImgfs(t, nil, "cat", "--key-id", id, dev); !bytes.Equal(got[:len(plain)], plain) {
		t.Fatal("the Barbican secret made by --new-key does not open the volume")
	}
	if opens(dev, testPass) {
		t.Fatal("the old passphrase still opens the volume")
	}

	sym := testimg.RandomBytes(32, 173)
	for _, s := range []struct{ typ, pass string }{{"passphrase", "barbican passphrase"}, {"symmetric", hex.EncodeToString(sym)}} {
		payload := []byte(s.pass)
		if s.typ == "symmetric" {
			payload = sym
		}
		sid := tc.createSecret(t, s.typ, payload)
		dev := loopDevice(t, size)
		mustImgfs(t, nil, "export", "--to", "luks", "--passphrase-file", pf, "--new-key-id", sid, "--new-pbkdf-iterations", "1000", "-o", dev, rawLUKS)
		if !opens(dev, s.pass) || opens(dev, testPass) {
			t.Fatalf("%s secret: the volume does not open with the os-brick passphrase only", s.typ)
		}
	}
}

// A Glance image exports into a loop device: raw LUKS as stored (no key),
// qcow2+LUKS as raw LUKS with the Barbican key; an image changed in
// Glance's store behind its back fails the export into a device with the
// integrity error (the checksum is checked while streaming whatever the
// target).
func TestExportGlanceIntoLoopDevice(t *testing.T) {
	tc := needCloud(t)
	store := os.Getenv("IMGFS_TEST_CLOUD_DIR")
	if store == "" {
		t.Fatal("IMGFS_TEST_CLOUD_DIR not set (tests/with-cloud.sh sets it)")
	}
	testimg.Need(t, "cryptsetup", "qemu-img")
	dir := t.TempDir()
	secret := tc.createSecret(t, "passphrase", []byte(testPass))
	props := map[string]string{"os_encrypt_format": "luks", "os_encrypt_key_id": secret}

	plain := testimg.RandomBytes(4<<20, 191)
	rawLUKS := luks1Image(t, dir, plain, testPass, "")
	rawID := tc.uploadImage(t, "raw", props, rawLUKS)
	dev := loopDevice(t, fileSize(t, rawLUKS))
	mustImgfs(t, nil, "export", "--to", "luks", "--verify", "-o", dev, rawID)
	if !bytes.Equal(readDevice(t, dev, fileSize(t, rawLUKS)), readFile(t, rawLUKS)) {
		t.Fatal("raw LUKS from Glance: the device is not the stored image")
	}

	qcow, plainQcow := testimg.MakeQcow2(t, dir, "enc.qcow2", testimg.QcowImage{
		Size: 16 << 20, Options: "cluster_size=65536", Passphrase: testPass, Passes: exportWrites(65536),
	})
	qID := tc.uploadImage(t, "qcow2", props, qcow)
	qdev := loopDevice(t, 2<<20+int64(len(plainQcow)))
	mustImgfs(t, nil, "export", "--to", "luks", "--verify", "-o", qdev, qID)
	checkLUKSExport(t, qdev, testPass, plainQcow)

	f, err := os.OpenFile(filepath.Join(store, "glance", "images", rawID), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("glance store file: %v", err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 3<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{b[0] ^ 0xff}, 3<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	mustFail(t, runImgfs(t, nil, "export", "--to", "luks", "-o", loopDevice(t, fileSize(t, rawLUKS)), rawID), "integrity check failed")
}

// encrypt writes a new LUKS1 volume straight into a device (no temporary
// file): cryptsetup opens it and imgfs cat reads the plaintext back.
func TestEncryptIntoLoopDevice(t *testing.T) {
	testimg.Need(t, "cryptsetup")
	dir := t.TempDir()
	plain := testimg.RandomBytes(6<<20, 192)
	clear(plain[1<<20 : 5<<20])
	src := testimg.WriteFile(t, dir, "plain.raw", plain)
	pf := passFile(t, dir, testPass)
	dev := loopDevice(t, 2<<20+int64(len(plain)))
	mustImgfs(t, nil, "encrypt", "--format", "luks", "--passphrase-file", pf, "--pbkdf-iterations", "1000", "--verify", "-o", dev, src)
	if !opens(dev, testPass) {
		t.Fatal("cryptsetup does not open the encrypted device")
	}
	if got := mustImgfs(t, nil, "cat", "--passphrase-file", pf, dev); !bytes.Equal(got, plain) {
		t.Fatal("the device's plaintext differs")
	}
}

// slowReader delivers at most about 6 MB/s (32 KiB every 5 ms).
type slowReader struct{ *bytes.Reader }

func (r *slowReader) Read(p []byte) (int, error) {
	time.Sleep(5 * time.Millisecond)
	return r.Reader.Read(p[:min(len(p), 32<<10)])
}
