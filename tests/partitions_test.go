package tests

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imgfs/imgfs/tests/testimg"
)

// forensicDisk writes a raw disk with a GPT: partition 1 an ext4 made by
// mkfs.ext4 -d holding /etc/hostname, partition 2 a LUKS1 volume made by
// cryptsetup whose payload holds innerPlain (filled by python3-cryptography
// with the volume key cryptsetup dumps). It returns the disk's path.
func forensicDisk(t *testing.T, dir, hostname string) (disk string, innerPlain []byte) {
	t.Helper()
	testimg.Need(t, "sfdisk", "mkfs.ext4", "cryptsetup")
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "hostname"), []byte(hostname), 0o644); err != nil {
		t.Fatal(err)
	}
	disk = filepath.Join(dir, "disk.raw")
	ext4, luks := filepath.Join(dir, "p1.ext4"), filepath.Join(dir, "p2.luks")
	for _, f := range []struct {
		path string
		size int64
	}{{disk, 48 << 20}, {ext4, 24 << 20}, {luks, 8 << 20}} {
		if err := os.WriteFile(f.path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(f.path, f.size); err != nil {
			t.Fatal(err)
		}
	}
	script := "label: gpt\nstart=2048, size=49152, type=" + linuxFSType + ", name=\"rootfs\"\nstart=51200, size=16384, type=CA7D7CCB-63ED-4C53-861C-1742536059CC, name=\"secret\"\n"
	testimg.Run(t, "sh", "-c", "sfdisk --no-reread --no-tell-kernel -q \"$1\" <<'EOF'\n"+script+"EOF\n", "sh", disk)
	testimg.Run(t, "mkfs.ext4", "-q", "-F", "-L", "evidence", "-d", root, ext4)
	testimg.CryptsetupFormat(t, luks, 8<<20, innerPassphrase, "--type", "luks1", "--pbkdf-force-iterations", "1000")
	key, payload := testimg.CryptsetupVolumeKey(t, luks, innerPassphrase)
	innerPlain = testimg.RandomBytes(int(8<<20-payload), 61)
	testimg.FillPayload(t, luks, payload, key, "aes-xts-plain64", 512, 0, innerPlain)
	f, err := os.OpenFile(disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range []struct {
		path string
		at   int64
	}{{ext4, 2048 * 512}, {luks, 51200 * 512}} {
		b, err := os.ReadFile(p.path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(b, p.at); err != nil {
			t.Fatal(err)
		}
	}
	return disk, innerPlain
}

const innerPassphrase = "inner passphrase"

// A mount shows each partition as a file: debugfs reads a known file out of
// the ext4 in disk.p1 of an encrypted qcow2+LUKS image, fsck.ext4 -n finds
// it clean, SEEK_HOLE finds holes in it, partitions.json gives the GPT
// names, type GUIDs, offsets and sizes, and the LUKS volume in partition 2
// is listed as such without being opened. Also as an unprivileged user.
func TestMountPartitionFiles(t *testing.T) {
	testimg.Need(t, "debugfs", "fsck.ext4", "qemu-img", "fusermount3")
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil { // nobody must reach the files
			t.Fatal(err)
		}
	}
	const hostname = "imgfs-forensics-host\n"
	raw, innerPlain := forensicDisk(t, dir, hostname)
	plain, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	img := testimg.ConvertQcow2(t, dir, "evidence.qcow2", plain, "", testPassphrase, false)
	pf := passFile(t, dir, testPassphrase)

	check := func(t *testing.T, mnt string, as *syscall.Credential) {
		run := func(name string, args ...string) ([]byte, error) {
			cmd := exec.Command(name, args...)
			if as != nil {
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: as}
			}
			return cmd.CombinedOutput()
		}
		out, err := run("debugfs", "-R", "cat /etc/hostname", filepath.Join(mnt, "disk.p1"))
		if err != nil || !strings.Contains(string(out), hostname) {
			t.Fatalf("debugfs cat /etc/hostname: %v: %q", err, out)
		}
		if out, err := run("fsck.ext4", "-n", "-f", filepath.Join(mnt, "disk.p1")); err != nil {
			t.Fatalf("fsck.ext4 -n: %v: %s", err, out)
		}
	}

	innerPF := filepath.Join(dir, "inner.pass")
	if err := os.WriteFile(innerPF, []byte(innerPassphrase), 0o600); err != nil {
		t.Fatal(err)
	}
	mustFail(t, runImgfs(t, nil, "mount", img, t.TempDir(), "--passphrase-file", pf, "--partition-passphrase-file", "2="+pf), "no keyslot matches")
	mustFail(t, runImgfs(t, nil, "mount", img, t.TempDir(), "--passphrase-file", pf, "--partition-passphrase-file", "1="+innerPF), "not a LUKS volume")
	mustFail(t, runImgfs(t, nil, "mount", img, t.TempDir(), "--passphrase-file", pf, "--partition-passphrase-file", "2="+innerPF, "--partition-passphrase-file", "2="+innerPF), "partition 2 given twice")
	mnt, pid := mountDaemon(t, img, "--passphrase-file", pf, "--partition-passphrase-file", "2="+innerPF)
	if got, err := os.ReadFile(filepath.Join(mnt, "disk.p2.plain")); err != nil || !bytes.Equal(got, innerPlain) {
		t.Fatalf("disk.p2.plain differs from the inner LUKS volume's plaintext (%v)", err)
	}
	p1, err := os.ReadFile(filepath.Join(mnt, "disk.p1"))
	if err != nil || !bytes.Equal(p1, plain[2048*512:(2048+49152)*512]) {
		t.Fatalf("disk.p1 differs from the partition's bytes (%v)", err)
	}
	check(t, mnt, nil)
	f, err := os.Open(filepath.Join(mnt, "disk.p1"))
	if err != nil {
		t.Fatal(err)
	}
	hole, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE)
	f.Close()
	if err != nil || hole >= int64(len(p1)) {
		t.Fatalf("SEEK_HOLE on disk.p1 = %d, %v: want a hole inside the mostly empty ext4", hole, err)
	}
	var parts struct {
		Table struct {
			Scheme string `json:"scheme"`
		} `json:"table"`
		Partitions []struct {
			File     string `json:"file"`
			Name     string `json:"name"`
			Type     string `json:"type"`
			Start    int64  `json:"start"`
			Size     int64  `json:"size"`
			Contents string `json:"contents"`
		} `json:"partitions"`
	}
	js, err := os.ReadFile(filepath.Join(mnt, "partitions.json"))
	if err != nil || json.Unmarshal(js, &parts) != nil {
		t.Fatalf("partitions.json: %v: %s", err, js)
	}
	if parts.Table.Scheme != "gpt" || len(parts.Partitions) != 2 {
		t.Fatalf("partitions.json: %s", js)
	}
	p, q := parts.Partitions[0], parts.Partitions[1]
	if p.File != "disk.p1" || p.Name != "rootfs" || !strings.EqualFold(p.Type, linuxFSType) || p.Start != 2048*512 || p.Size != 49152*512 || p.Contents != "ext4" {
		t.Fatalf("partition 1: %+v", p)
	}
	if q.File != "disk.p2" || q.Name != "secret" || q.Start != 51200*512 || q.Contents != "luks" {
		t.Fatalf("partition 2: %+v", q)
	}
	p2, _ := os.ReadFile(filepath.Join(mnt, "disk.p2"))
	if !bytes.HasPrefix(p2, []byte("LUKS\xba\xbe")) {
		t.Fatal("disk.p2 is not the LUKS volume as stored")
	}
	unmountAndCheck(t, mnt, pid)

	t.Run("unprivileged", func(t *testing.T) {
		if os.Geteuid() != 0 {
			if testimg.InCI() {
				t.Fatal("CI runs as root; this test needs it to run as nobody")
			}
			t.Skip("SKIP: needs root to run imgfs as another user")
		}
		const nobody = 65534
		as := &syscall.Credential{Uid: nobody, Gid: nobody}
		mnt := filepath.Join(dir, "mnt-nobody")
		if err := os.Mkdir(mnt, 0o755); err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(dir, "imgfs")
		testimg.CopyFile(t, imgfsBin, bin)
		if err := os.Chmod(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{mnt, img, pf} {
			if err := os.Chown(p, nobody, nobody); err != nil {
				t.Fatal(err)
			}
		}
		cmd := exec.Command(bin, "mount", "-d", img, mnt, "--passphrase-file", pf)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: as}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("imgfs mount as nobody: %v: %s", err, out)
		}
		defer exec.Command("fusermount3", "-u", "-z", mnt).Run()
		check(t, mnt, as)
		um := exec.Command(bin, "umount", mnt)
		um.SysProcAttr = &syscall.SysProcAttr{Credential: as}
		if out, err := um.CombinedOutput(); err != nil {
			t.Fatalf("imgfs umount as nobody: %v: %s", err, out)
		}
	})
}
