package tests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imgfs/imgfs/tests/testimg"
)

// mountImage is a test image with the plaintext it must show.
type mountImage struct {
	path      string // the image as stored
	plainPath string // the plaintext disk, made by the tools
	keyArgs   []string
	format    string
	encrypted bool
}

// qcow2Image converts the raw file plain to qcow2 with qemu-img; with pass
// set, the qcow2 uses native LUKS encryption.
func qcow2Image(t *testing.T, dir, plainPath, pass string) string {
	t.Helper()
	out := filepath.Join(dir, "image.qcow2")
	args := []string{"convert", "-f", "raw", "-O", "qcow2"}
	if pass != "" {
		args = append(args, "--object", "secret,id=sec0,data="+pass,
			"-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10")
	}
	testimg.QemuImg(t, append(args, plainPath, out)...)
	return out
}

// makeMountImage makes an image of the given kind holding plain.
func makeMountImage(t *testing.T, kind string, plain []byte) mountImage {
	t.Helper()
	dir := t.TempDir()
	switch kind {
	case "raw":
		p := testimg.WriteFile(t, dir, "plain.raw", plain)
		return mountImage{path: p, plainPath: p, format: "raw"}
	case "luks1":
		img := luks1Image(t, dir, plain, testPass, "")
		return mountImage{path: img, plainPath: filepath.Join(dir, "plain.raw"), format: "luks", encrypted: true,
			keyArgs: []string{"--passphrase-file", passFile(t, dir, testPass)}}
	case "qcow2":
		p := testimg.WriteFile(t, dir, "plain.raw", plain)
		return mountImage{path: qcow2Image(t, dir, p, ""), plainPath: p, format: "qcow2"}
	case "qcow2-luks":
		p := testimg.WriteFile(t, dir, "plain.raw", plain)
		return mountImage{path: qcow2Image(t, dir, p, testPass), plainPath: p, format: "qcow2", encrypted: true,
			keyArgs: []string{"--passphrase-file", passFile(t, dir, testPass)}}
	}
	t.Fatalf("unknown image kind %q", kind)
	return mountImage{}
}

var daemonPidRE = regexp.MustCompile(`daemon pid (\d+)`)

// mountDaemon runs `imgfs mount -d ARGS... DIR` on a new directory and
// returns the directory and the daemon's pid. Cleanup detaches anything a
// failed test left behind.
func mountDaemon(t *testing.T, args ...string) (string, int) {
	t.Helper()
	testimg.Need(t, "fusermount3")
	dir := t.TempDir()
	r := runImgfs(t, nil, append(append([]string{"mount", "-d"}, args...), dir)...)
	if r.code != 0 {
		t.Fatalf("imgfs mount -d %v: exit %d: %s", args, r.code, r.stderr)
	}
	m := daemonPidRE.FindSubmatch(r.stderr)
	if m == nil || !bytes.Contains(r.stderr, []byte("imgfs: mounted ")) {
		t.Fatalf("imgfs mount -d said %q; want the mount line with the daemon pid", r.stderr)
	}
	pid, _ := strconv.Atoi(string(m[1]))
	t.Cleanup(func() {
		if mountType(dir) != "" {
			exec.Command("fusermount3", "-u", "-z", dir).Run()
		}
		syscall.Kill(pid, syscall.SIGKILL)
	})
	if got := mountType(dir); got != "fuse.imgfs" {
		t.Fatalf("after mount -d, %s has mount type %q, want fuse.imgfs", dir, got)
	}
	return dir, pid
}

// unmountAndCheck runs `imgfs umount DIR` and checks that neither the mount
// nor the daemon is left.
func unmountAndCheck(t *testing.T, dir string, pid int) {
	t.Helper()
	mustImgfs(t, nil, "umount", dir)
	if got := mountType(dir); got != "" {
		t.Errorf("after imgfs umount, /proc/mounts still has a %s mount at %s", got, dir)
	}
	waitExit(t, pid)
}

// waitExit blocks until process pid has exited (it is not our child, so it
// is watched through a pidfd). The go test timeout bounds the wait.
func waitExit(t testing.TB, pid int) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return
	}
	if err != nil {
		t.Fatalf("pidfd_open(%d): %v", pid, err)
	}
	defer unix.Close(fd)
	for {
		_, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, -1)
		if err == nil {
			return
		}
		if !errors.Is(err, unix.EINTR) {
			t.Fatalf("poll pidfd: %v", err)
		}
	}
}

// mountType returns the type of the mount at dir in /proc/self/mounts, or "".
func mountType(dir string) string {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return ""
	}
	typ := ""
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[1] == dir {
			typ = f[2]
		}
	}
	return typ
}

// cmpFiles fails the test unless cmp(1) finds a and b identical.
func cmpFiles(t *testing.T, a, b string) {
	t.Helper()
	testimg.Need(t, "cmp")
	if out, err := exec.Command("cmp", a, b).CombinedOutput(); err != nil {
		t.Errorf("cmp %s %s: %v: %s", a, b, err, out)
	}
}

func TestMountShowsPlaintextCiphertextAndInfo(t *testing.T) {
	plain := testimg.RandomBytes(6<<20+512, 20)
	for _, kind := range []string{"raw", "luks1", "qcow2", "qcow2-luks"} {
		t.Run(kind, func(t *testing.T) {
			img := makeMountImage(t, kind, plain)
			dir, pid := mountDaemon(t, append(img.keyArgs, img.path)...)

			cmpFiles(t, filepath.Join(dir, "disk"), img.plainPath)
			enc := filepath.Join(dir, "encrypted")
			if img.encrypted {
				cmpFiles(t, enc, img.path)
			} else if _, err := os.Stat(enc); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("plaintext image: stat encrypted = %v, want not-exist", err)
			}

			js, err := os.ReadFile(filepath.Join(dir, "image.json"))
			if err != nil {
				t.Fatal(err)
			}
			var info struct {
				Format      string `json:"format"`
				Encrypted   bool   `json:"encrypted"`
				VirtualSize int64  `json:"virtual_size"`
				SourceSize  int64  `json:"source_size"`
			}
			if err := json.Unmarshal(js, &info); err != nil {
				t.Fatalf("image.json does not parse: %v\n%s", err, js)
			}
			st, _ := os.Stat(img.path)
			if info.Format != img.format || info.Encrypted != img.encrypted ||
				info.VirtualSize != int64(len(plain)) || info.SourceSize != st.Size() {
				t.Errorf("image.json = %+v; want format %s, encrypted %v, virtual size %d, source size %d",
					info, img.format, img.encrypted, len(plain), st.Size())
			}
			if bytes.Contains(js, []byte(testPass)) || bytes.Contains(bytes.ToLower(js), []byte("passphrase")) {
				t.Errorf("image.json mentions the passphrase:\n%s", js)
			}
			unmountAndCheck(t, dir, pid)
		})
	}
}

func TestMountDdSlicesEqualPlaintext(t *testing.T) {
	testimg.Need(t, "dd")
	plain := testimg.RandomBytes(8<<20, 21)
	for _, kind := range []string{"luks1", "qcow2-luks"} {
		t.Run(kind, func(t *testing.T) {
			img := makeMountImage(t, kind, plain)
			dir, pid := mountDaemon(t, append(img.keyArgs, img.path)...)
			disk := filepath.Join(dir, "disk")
			r := rand.New(rand.NewPCG(21, 22))
			for _, bs := range []int{512, 4096, 65536, 1 << 20, 3 << 20} {
				for i := 0; i < 6; i++ {
					off := r.Int64N(int64(len(plain)))
					count := 1 + r.Int64N(int64(len(plain))/int64(bs)+1)
					want := plain[off:min(int64(len(plain)), off+count*int64(bs))]
					got := testimg.Run(t, "dd", "if="+disk, "bs="+strconv.Itoa(bs), "skip="+strconv.FormatInt(off, 10),
						"count="+strconv.FormatInt(count, 10), "iflag=skip_bytes,fullblock", "status=none")
					if !bytes.Equal(got, want) {
						t.Fatalf("dd bs=%d skip=%d bytes count=%d: %d bytes, want %d equal to the plaintext", bs, off, count, len(got), len(want))
					}
				}
				// Whole blocks, block-aligned, through O_DIRECT: each read goes
				// to imgfs in one request, bypassing the page cache.
				skip := r.Int64N(int64(len(plain)) / int64(bs))
				got := testimg.Run(t, "dd", "if="+disk, "bs="+strconv.Itoa(bs), "skip="+strconv.FormatInt(skip, 10),
					"count=2", "iflag=direct", "status=none")
				want := plain[skip*int64(bs) : min(int64(len(plain)), (skip+2)*int64(bs))]
				if !bytes.Equal(got, want) {
					t.Fatalf("dd iflag=direct bs=%d skip=%d: bytes differ", bs, skip)
				}
			}
			unmountAndCheck(t, dir, pid)
		})
	}
}

func TestMountParallelReadersGetCorrectBytes(t *testing.T) {
	plain := testimg.RandomBytes(16<<20, 23)
	img := makeMountImage(t, "qcow2-luks", plain)
	dir, pid := mountDaemon(t, append(img.keyArgs, img.path)...)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.Open(filepath.Join(dir, "disk"))
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			r := rand.New(rand.NewPCG(uint64(g), 24))
			for i := 0; i < 50; i++ {
				off := r.Int64N(int64(len(plain)))
				buf := make([]byte, 1+r.IntN(2<<20))
				n, err := f.ReadAt(buf, off)
				if err != nil && err != io.EOF {
					errs <- fmt.Errorf("reader %d: %w", g, err)
					return
				}
				if n != min(len(buf), len(plain)-int(off)) || !bytes.Equal(buf[:n], plain[off:off+int64(n)]) {
					errs <- fmt.Errorf("reader %d: ReadAt(%d, %d): %d bytes, differ from the plaintext", g, len(buf), off, n)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	unmountAndCheck(t, dir, pid)
}

func TestMountSparseQcow2CopiesSparse(t *testing.T) {
	testimg.Need(t, "cp", "stat")
	dir := t.TempDir()
	img := filepath.Join(dir, "sparse.qcow2")
	testimg.QemuImg(t, "create", "-f", "qcow2", img, "1G")
	testimg.QemuIO(t, "-f", "qcow2", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0xa5 300M 2M",
		"-c", "write -P 0x33 1000M 64k", "-c", "write -P 0x77 1073676288 65536", img)
	expect := filepath.Join(dir, "expect.raw")
	testimg.QemuImg(t, "convert", "-f", "qcow2", "-O", "raw", img, expect)

	mnt, pid := mountDaemon(t, img)
	disk := filepath.Join(mnt, "disk")

	// SEEK_DATA / SEEK_HOLE through the mount follow the qcow2 L2 tables.
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		off    int64
		whence int
		want   int64
	}{
		{0, unix.SEEK_DATA, 0},
		{0, unix.SEEK_HOLE, 1 << 20},
		{1 << 20, unix.SEEK_DATA, 300 << 20},
		{300 << 20, unix.SEEK_HOLE, 302 << 20},
		{302 << 20, unix.SEEK_DATA, 1000 << 20},
		{1000 << 20, unix.SEEK_HOLE, 1000<<20 + 65536},
		{1000<<20 + 65536, unix.SEEK_DATA, 1073676288},
		{1073676288, unix.SEEK_HOLE, 1 << 30},
	} {
		if got, err := unix.Seek(int(f.Fd()), c.off, c.whence); err != nil || got != c.want {
			t.Errorf("lseek(%d, whence %d) = %d, %v; want %d", c.off, c.whence, got, err, c.want)
		}
	}
	f.Close()

	out := filepath.Join(dir, "copy.raw")
	testimg.Run(t, "cp", "--sparse=always", disk, out)
	cmpFiles(t, out, expect)
	fields := strings.Fields(string(testimg.Run(t, "stat", "-c", "%b %B %s", out)))
	blocks, _ := strconv.ParseInt(fields[0], 10, 64)
	unit, _ := strconv.ParseInt(fields[1], 10, 64)
	size, _ := strconv.ParseInt(fields[2], 10, 64)
	if size != 1<<30 || blocks*unit > 16<<20 {
		t.Errorf("cp --sparse=always copy: size %d, %d bytes allocated; want 1 GiB with a few MiB allocated", size, blocks*unit)
	}
	t.Logf("sparse copy: %d of %d bytes allocated", blocks*unit, size)

	// qemu-img reads the mounted disk as a raw image (it probes holes with
	// SEEK_DATA too) and finds it equal to the original qcow2.
	back := filepath.Join(dir, "back.qcow2")
	testimg.QemuImg(t, "convert", "-f", "raw", "-O", "qcow2", disk, back)
	testimg.QemuImg(t, "compare", "-f", "qcow2", "-F", "qcow2", img, back)
	unmountAndCheck(t, mnt, pid)
}

func TestMountPartitionTableReadsBack(t *testing.T) {
	testimg.Need(t, "sfdisk", "blkid")
	dir := t.TempDir()
	raw := filepath.Join(dir, "plain.raw")
	if err := os.WriteFile(raw, make([]byte, 64<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	script := "label: gpt\nstart=2048, size=40960, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n" +
		"start=43008, size=20480, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name=swap\n"
	cmd := exec.Command("sfdisk", "--no-reread", "--no-tell-kernel", raw)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
	want := testimg.Run(t, "sfdisk", "-d", raw)
	plain, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	// Encrypt the partitioned disk with qemu-img (cli_test.go's helper
	// rewrites plain.raw with the same bytes).
	img := luks1Image(t, dir, plain, testPass, "")
	mnt, pid := mountDaemon(t, "--passphrase-file", passFile(t, dir, testPass), img)
	disk := filepath.Join(mnt, "disk")

	got := testimg.Run(t, "sfdisk", "-d", disk)
	norm := func(b []byte, dev string) string { return strings.ReplaceAll(string(b), dev, "DEV") }
	if norm(got, disk) != norm(want, raw) {
		t.Errorf("sfdisk -d through the mount:\n%s\nwant (from the plaintext):\n%s", got, want)
	}
	probe := string(testimg.Run(t, "blkid", "-p", disk))
	if !strings.Contains(probe, `PTTYPE="gpt"`) {
		t.Errorf("blkid -p %s = %q; want PTTYPE=\"gpt\"", disk, probe)
	}
	unmountAndCheck(t, mnt, pid)
}

func TestMountIsReadOnlyAndPrivate(t *testing.T) {
	img := makeMountImage(t, "luks1", testimg.RandomBytes(1<<20, 25))
	dir, pid := mountDaemon(t, append(img.keyArgs, img.path)...)
	for _, name := range []string{"disk", "encrypted", "image.json"} {
		p := filepath.Join(dir, name)
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode != unix.S_IFREG|0o400 || st.Uid != uint32(os.Getuid()) {
			t.Errorf("%s: mode %o uid %d; want regular 0400 owned by uid %d", name, st.Mode, st.Uid, os.Getuid())
		}
		if _, err := os.OpenFile(p, os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: open O_RDWR: %v, want EROFS", name, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "new"), []byte("x"), 0o600); !errors.Is(err, syscall.EROFS) {
		t.Errorf("create in the mount: %v, want EROFS", err)
	}
	if err := os.Remove(filepath.Join(dir, "disk")); !errors.Is(err, syscall.EROFS) {
		t.Errorf("remove disk: %v, want EROFS", err)
	}
	testimg.Need(t, "dd")
	if _, err := testimg.RunErr("dd", "if=/dev/zero", "of="+filepath.Join(dir, "disk"), "bs=4096", "count=1", "conv=notrunc", "status=none"); err == nil ||
		!strings.Contains(err.Error(), "Read-only file system") {
		t.Errorf("dd into disk: %v; want Read-only file system", err)
	}
	cmpFiles(t, filepath.Join(dir, "disk"), img.plainPath)
	unmountAndCheck(t, dir, pid)
}

func TestMountKilledLeavesStaleMountThatUmountClears(t *testing.T) {
	img := makeMountImage(t, "luks1", testimg.RandomBytes(1<<20, 26))
	dir, pid := mountDaemon(t, append(img.keyArgs, img.path)...)
	cmpFiles(t, filepath.Join(dir, "disk"), img.plainPath)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitExit(t, pid)
	if _, err := os.ReadDir(dir); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("after kill -9, reading the mount: %v, want ENOTCONN", err)
	}
	r := runImgfs(t, nil, append(append([]string{"mount", "-d"}, img.keyArgs...), img.path, dir)...)
	if r.code == 0 || !bytes.Contains(r.stderr, []byte("imgfs umount")) {
		t.Errorf("mount over a stale mount: exit %d, %q; want a failure naming imgfs umount", r.code, r.stderr)
	}
	mustImgfs(t, nil, "umount", dir)
	if got := mountType(dir); got != "" {
		t.Fatalf("imgfs umount left a %s mount", got)
	}
	// The directory is usable again.
	dir2 := dir
	r = runImgfs(t, nil, append(append([]string{"mount", "-d"}, img.keyArgs...), img.path, dir2)...)
	if r.code != 0 {
		t.Fatalf("remount after clearing: exit %d: %s", r.code, r.stderr)
	}
	m := daemonPidRE.FindSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("no daemon pid in %q", r.stderr)
	}
	pid2, _ := strconv.Atoi(string(m[1]))
	cmpFiles(t, filepath.Join(dir2, "disk"), img.plainPath)
	unmountAndCheck(t, dir2, pid2)
}

func TestMountForegroundUnmountsOnSignal(t *testing.T) {
	for _, c := range []struct {
		sig  syscall.Signal
		kind string
	}{{syscall.SIGINT, "qcow2-luks"}, {syscall.SIGTERM, "raw"}, {syscall.SIGHUP, "qcow2"}} {
		sig := c.sig
		t.Run(sig.String(), func(t *testing.T) {
			testimg.Need(t, "fusermount3")
			img := makeMountImage(t, c.kind, testimg.RandomBytes(2<<20, 27))
			cmd, dir, stderr, line := mountForeground(t, append(img.keyArgs, img.path)...)
			if !strings.HasPrefix(line, "imgfs: mounted "+img.path+" at "+dir) {
				t.Fatalf("first stderr line %q; want the mounted line", line)
			}
			cmpFiles(t, filepath.Join(dir, "disk"), img.plainPath)
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			rest, _ := io.ReadAll(stderr)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("imgfs mount after %v: %v (stderr %q); want exit 0", sig, err, rest)
			}
			if got := mountType(dir); got != "" {
				t.Errorf("after %v, a %s mount is left", sig, got)
			}
		})
	}
}

func TestMountBusyUmountNeedsLazy(t *testing.T) {
	img := makeMountImage(t, "raw", testimg.RandomBytes(1<<20, 28))
	dir, pid := mountDaemon(t, img.path)
	f, err := os.Open(filepath.Join(dir, "disk"))
	if err != nil {
		t.Fatal(err)
	}
	r := runImgfs(t, nil, "umount", dir)
	if r.code == 0 || !bytes.Contains(r.stderr, []byte("--lazy")) {
		t.Errorf("umount while a file is open: exit %d, %q; want a failure suggesting --lazy", r.code, r.stderr)
	}
	if got := mountType(dir); got != "fuse.imgfs" {
		t.Fatalf("a refused umount changed the mount to %q", got)
	}
	mustImgfs(t, nil, "umount", "--lazy", dir)
	if got := mountType(dir); got != "" {
		t.Errorf("umount --lazy left a %s mount", got)
	}
	// The open file still reads the plaintext until it is closed; then the
	// daemon exits.
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 8192); err != nil || !bytes.Equal(buf, testimg.RandomBytes(1<<20, 28)[8192:8192+4096]) {
		t.Errorf("read through the lazily detached mount: %v or bytes differ", err)
	}
	f.Close()
	waitExit(t, pid)
}

func TestMountRefusals(t *testing.T) {
	testimg.Need(t, "fusermount3")
	img := makeMountImage(t, "luks1", testimg.RandomBytes(1<<20, 29))
	dir := t.TempDir()
	wrong := testimg.WriteFile(t, dir, "wrong", []byte("not the passphrase\n"))
	mnt := t.TempDir()
	notDir := testimg.WriteFile(t, dir, "file", []byte("x"))
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"wrong passphrase, daemon", []string{"mount", "-d", "--passphrase-file", wrong, img.path, mnt}, "passphrase"},
		{"wrong passphrase, foreground", []string{"mount", "--passphrase-file", wrong, img.path, mnt}, "passphrase"},
		{"no key", []string{"mount", "-d", img.path, mnt}, "key"},
		{"missing mountpoint", []string{"mount", "-d", img.path, filepath.Join(dir, "nope")}, "no such file"},
		{"mountpoint is a file", append(append([]string{"mount", "-d"}, img.keyArgs...), img.path, notDir), "not a directory"},
		{"missing source", append(append([]string{"mount", "-d"}, img.keyArgs...), filepath.Join(dir, "nope"), mnt), "no such file"},
		{"one argument", []string{"mount", img.path}, "SOURCE MOUNTPOINT"},
		{"--debug with --daemon", append(append([]string{"mount", "-d", "--debug"}, img.keyArgs...), img.path, mnt), "--debug"},
		{"umount of a plain directory", []string{"umount", mnt}, "not mounted"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runImgfs(t, nil, c.args...)
			if r.code == 0 || !strings.Contains(strings.ToLower(string(r.stderr)), strings.ToLower(c.want)) {
				t.Errorf("exit %d, stderr %q; want a failure mentioning %q", r.code, r.stderr, c.want)
			}
			if bytes.Contains(r.stderr, []byte("panic")) {
				t.Errorf("panicked: %s", r.stderr)
			}
			if got := mountType(mnt); got != "" {
				t.Errorf("a failed mount left a %s mount", got)
			}
		})
	}
}

// BenchmarkMountVsCat reads the same qcow2+LUKS image sequentially through
// the mount (dd bs=1M, a fresh mount each time so the page cache is cold)
// and with `imgfs cat`. Compare the two MB/s figures.
func BenchmarkMountVsCat(b *testing.B) {
	testimg.Need(b, "dd", "fusermount3")
	const size = 256 << 20
	dir := b.TempDir()
	plainPath := testimg.WriteFile(b, dir, "plain.raw", testimg.RandomBytes(size, 30))
	img := filepath.Join(dir, "image.qcow2")
	testimg.QemuImg(b, "convert", "-f", "raw", "-O", "qcow2", "--object", "secret,id=sec0,data="+testPass,
		"-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", plainPath, img)
	pass := testimg.WriteFile(b, dir, "pass", []byte(testPass+"\n"))
	mnt := b.TempDir()

	b.Run("cat", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			cmd := exec.Command(imgfsBin, "cat", "--passphrase-file", pass, img)
			n, err := pipeCount(cmd)
			if err != nil || n != size {
				b.Fatalf("imgfs cat: %d bytes, %v", n, err)
			}
		}
	})
	b.Run("mount-dd-1M", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			r := runImgfs(b, nil, "mount", "-d", "--passphrase-file", pass, img, mnt)
			if r.code != 0 {
				b.Fatalf("mount: %s", r.stderr)
			}
			n, err := pipeCount(exec.Command("dd", "if="+filepath.Join(mnt, "disk"), "bs=1M", "status=none"))
			if err != nil || n != size {
				b.Fatalf("dd: %d bytes, %v", n, err)
			}
			b.StopTimer()
			mustImgfs(b, nil, "umount", mnt)
			if m := daemonPidRE.FindSubmatch(r.stderr); m != nil {
				pid, _ := strconv.Atoi(string(m[1]))
				waitExit(b, pid)
			}
			b.StartTimer()
		}
	})
}

// pipeCount runs cmd and counts the bytes of its stdout.
func pipeCount(cmd *exec.Cmd) (int64, error) {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	n, _ := io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return n, fmt.Errorf("%v: %s", err, errb.String())
	}
	return n, nil
}

// A source that fails after the mount is up answers EIO (logged once on
// stderr), and the mount keeps serving: no read hangs.
func TestMountSourceErrorsBecomeEIO(t *testing.T) {
	testimg.Need(t, "fusermount3")
	plain := testimg.RandomBytes(8<<20, 31)
	origin := serveDir(t, filepath.Dir(testimg.WriteFile(t, t.TempDir(), "disk.raw", plain)))
	var broken atomic.Bool
	proxy, _ := faultProxy(t, origin, "", func(_ int64, w http.ResponseWriter, _ *http.Request) bool {
		if broken.Load() {
			http.Error(w, "gone", http.StatusNotFound)
			return true
		}
		return false
	})
	cmd, dir, errs, _ := mountForeground(t, "--format", "raw", "--block-size", "64KiB", proxy+"/disk.raw")
	f, err := os.Open(filepath.Join(dir, "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, plain[:4096]) {
		t.Fatalf("read before the fault: %v or bytes differ", err)
	}
	broken.Store(true)
	for _, off := range []int64{5 << 20, 7 << 20, 3 << 20} {
		if _, err := f.ReadAt(buf, off); !errors.Is(err, syscall.EIO) {
			t.Errorf("read at %d from a failing source: %v, want EIO", off, err)
		}
	}
	broken.Store(false)
	if _, err := f.ReadAt(buf, 6<<20); err != nil || !bytes.Equal(buf, plain[6<<20:6<<20+4096]) {
		t.Errorf("read after the source recovered: %v or bytes differ", err)
	}
	f.Close()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(errs)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("imgfs mount after SIGTERM: %v; stderr %q", err, rest)
	}
	t.Logf("stderr: %s", rest)
	if n := strings.Count(string(rest), "answered EIO"); n != 1 || !strings.Contains(string(rest), "404") {
		t.Errorf("stderr after the faults: %q; want one EIO line naming the 404", rest)
	}
}

// Only the mounting user sees the mount, unless --allow-other, which shows
// it to everyone with world-readable files. Needs root (to act as nobody).
func TestMountAllowOther(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("SKIP: needs root to read the mount as another user")
	}
	testimg.Need(t, "setpriv", "cat")
	img := makeMountImage(t, "raw", testimg.RandomBytes(1<<20, 32))
	asNobody := func(dir string) ([]byte, error) {
		return testimg.RunErr("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", filepath.Join(dir, "disk"))
	}
	openUp := func(dir string) { // let nobody reach the mountpoint
		for p := dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
			os.Chmod(p, 0o755)
		}
	}

	dir, pid := mountDaemon(t, img.path)
	openUp(dir)
	if out, err := asNobody(dir); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Errorf("nobody reading a private mount: %v, %d bytes; want Permission denied", err, len(out))
	}
	unmountAndCheck(t, dir, pid)

	dir, pid = mountDaemon(t, "--allow-other", img.path)
	openUp(dir)
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, "disk"), &st); err != nil || st.Mode != unix.S_IFREG|0o444 {
		t.Errorf("--allow-other: disk mode %o, %v; want 0444", st.Mode, err)
	}
	if !strings.Contains(mountOptions(dir), "allow_other") {
		t.Errorf("--allow-other: mount options %q lack allow_other", mountOptions(dir))
	}
	got, err := asNobody(dir)
	if err != nil || !bytes.Equal(got, testimg.RandomBytes(1<<20, 32)) {
		t.Errorf("nobody reading an --allow-other mount: %v, or %d bytes differ from the plaintext", err, len(got))
	}
	unmountAndCheck(t, dir, pid)
}

// mountOptions returns the options of the mount at dir in /proc/self/mounts.
func mountOptions(dir string) string {
	data, _ := os.ReadFile("/proc/self/mounts")
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[1] == dir {
			return f[3]
		}
	}
	return ""
}

// The daemon reads --passphrase-file - from the caller's stdin before it
// detaches.
func TestMountDaemonTakesPassphraseFromStdin(t *testing.T) {
	testimg.Need(t, "fusermount3")
	img := makeMountImage(t, "luks1", testimg.RandomBytes(2<<20, 33))
	dir := t.TempDir()
	r := runImgfs(t, []byte(testPass+"\n"), "mount", "-d", "--passphrase-file", "-", img.path, dir)
	if r.code != 0 {
		t.Fatalf("mount -d --passphrase-file -: exit %d: %s", r.code, r.stderr)
	}
	m := daemonPidRE.FindSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("no daemon pid in %q", r.stderr)
	}
	pid, _ := strconv.Atoi(string(m[1]))
	t.Cleanup(func() { exec.Command("fusermount3", "-u", "-z", dir).Run(); syscall.Kill(pid, syscall.SIGKILL) })
	cmpFiles(t, filepath.Join(dir, "disk"), img.plainPath)
	unmountAndCheck(t, dir, pid)
}

// SIGTERM while a file is open cannot unmount cleanly: the mount is
// detached lazily (as libfuse does) and imgfs still exits 0.
func TestMountSignalWhileBusyDetachesLazily(t *testing.T) {
	testimg.Need(t, "fusermount3")
	img := makeMountImage(t, "raw", testimg.RandomBytes(1<<20, 34))
	cmd, dir, errs, _ := mountForeground(t, img.path)
	f, err := os.Open(filepath.Join(dir, "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 8192)
	if _, err := f.ReadAt(buf, 4096); err != nil || !bytes.Equal(buf, testimg.RandomBytes(1<<20, 34)[4096:4096+8192]) {
		t.Fatalf("read through the mount: %v or bytes differ", err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	rest, _ := io.ReadAll(errs)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM while busy: %v; stderr %q", err, rest)
	}
	if !strings.Contains(string(rest), "detached it lazily") {
		t.Errorf("stderr %q; want the lazy-detach note", rest)
	}
	if got := mountType(dir); got != "" {
		t.Errorf("a %s mount is left after SIGTERM", got)
	}
}

// A Glance qcow2+LUKS image whose key is in Barbican mounts by its id; the
// daemon child does the whole open (Keystone, Glance ranges, Barbican).
func TestMountGlanceImageWithBarbicanKey(t *testing.T) {
	tc := needCloud(t)
	testimg.Need(t, "fusermount3")
	dir := t.TempDir()
	plain := testimg.RandomBytes(5<<20, 35)
	clear(plain[1<<20 : 3<<20]) // unallocated clusters in the qcow2
	p := testimg.ConvertQcow2(t, dir, "img.qcow2", plain, "", testPassphrase, false)
	secret := tc.createSecret(t, "passphrase", []byte(testPassphrase))
	id := tc.uploadImage(t, "qcow2", map[string]string{
		"os_encrypt_format":              "luks",
		"os_encrypt_key_id":              secret,
		"os_encrypt_key_deletion_policy": "on_image_deletion",
		"os_decrypt_size":                strconv.Itoa(len(plain)),
		"os_decrypt_container_format":    "bare",
	}, p)
	plainPath := testimg.WriteFile(t, dir, "plain.raw", plain)

	mnt, pid := mountDaemon(t, id)
	cmpFiles(t, filepath.Join(mnt, "disk"), plainPath)
	cmpFiles(t, filepath.Join(mnt, "encrypted"), p)
	js, err := os.ReadFile(filepath.Join(mnt, "image.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(js) || !bytes.Contains(js, []byte(id)) || bytes.Contains(js, []byte(testPassphrase)) {
		t.Errorf("image.json: want valid JSON naming the Glance image and not the passphrase:\n%s", js)
	}
	// The mount does not hash what it serves (nothing would report the
	// result; the hash cost a dd of the disk half its speed), and says so.
	if !bytes.Contains(js, []byte(`"checksum": "sha512 (not checked while reading; imgfs hash checks it)"`)) {
		t.Errorf("image.json: want the checksum marked as not checked by the mount:\n%s", js)
	}
	unmountAndCheck(t, mnt, pid)
}

// An ordinary user mounts through the setuid fusermount3: the files are
// theirs, root's sysfs readahead tweak is skipped, and --allow-other without
// user_allow_other in /etc/fuse.conf fails naming the fix. Needs root (to
// become nobody).
func TestMountAsUnprivilegedUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("SKIP: needs root to act as the unprivileged user nobody")
	}
	testimg.Need(t, "setpriv", "fusermount3", "cmp")
	if conf, _ := os.ReadFile("/etc/fuse.conf"); regexp.MustCompile(`(?m)^\s*user_allow_other`).Match(conf) {
		t.Skip("SKIP: /etc/fuse.conf has user_allow_other; the refusal cannot be shown")
	}
	const nobody = 65534
	// A world-readable corner of /tmp for the binary, the image and the mountpoint.
	base, err := os.MkdirTemp("", "imgfs-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	bin := filepath.Join(base, "imgfs")
	exe, err := os.ReadFile(imgfsBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	plain := testimg.RandomBytes(3<<20, 36)
	img := testimg.WriteFile(t, base, "disk.raw", plain)
	os.Chmod(img, 0o644)
	mnt := filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(mnt, nobody, nobody)
	asNobody := func(name string, args ...string) ([]byte, error) {
		return testimg.RunErr("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", name}, args...)...)
	}
	t.Cleanup(func() { exec.Command("fusermount3", "-u", "-z", mnt).Run() })

	if _, err := asNobody(bin, "mount", "-d", "--allow-other", img, mnt); err == nil || !strings.Contains(err.Error(), "user_allow_other") {
		t.Errorf("--allow-other as nobody without user_allow_other: %v; want a failure naming user_allow_other", err)
	}
	if got := mountType(mnt); got != "" {
		t.Fatalf("the refused mount left a %s mount", got)
	}

	if _, err := asNobody(bin, "mount", "-d", img, mnt); err != nil {
		t.Fatalf("mount -d as nobody: %v", err)
	}
	if opts := mountOptions(mnt); !strings.Contains(opts, "user_id=65534") || !strings.Contains(opts, "ro") {
		t.Errorf("mount options %q; want ro and user_id=65534", opts)
	}
	if _, err := asNobody("cmp", filepath.Join(mnt, "disk"), img); err != nil {
		t.Errorf("cmp as nobody: %v", err)
	}
	st, err := asNobody("stat", "-c", "%u %a", filepath.Join(mnt, "disk"))
	if err != nil || strings.TrimSpace(string(st)) != "65534 400" {
		t.Errorf("stat as nobody: %q, %v; want owner 65534, mode 400", st, err)
	}
	// Without allow_other, not even root gets in.
	if _, err := os.Stat(filepath.Join(mnt, "disk")); !errors.Is(err, os.ErrPermission) {
		t.Errorf("root stat of nobody's private mount: %v, want permission denied", err)
	}
	if _, err := asNobody(bin, "umount", mnt); err != nil {
		t.Fatalf("umount as nobody: %v", err)
	}
	if got := mountType(mnt); got != "" {
		t.Errorf("after umount, a %s mount is left", got)
	}
}

// A daemon has no stderr: --log FILE keeps its read errors.
func TestMountDaemonLogsErrorsToFile(t *testing.T) {
	plain := testimg.RandomBytes(4<<20, 37)
	origin := serveDir(t, filepath.Dir(testimg.WriteFile(t, t.TempDir(), "disk.raw", plain)))
	var broken atomic.Bool
	proxy, _ := faultProxy(t, origin, "", func(_ int64, w http.ResponseWriter, _ *http.Request) bool {
		if broken.Load() {
			http.Error(w, "gone", http.StatusNotFound)
			return true
		}
		return false
	})
	logPath := filepath.Join(t.TempDir(), "imgfs.log")
	dir, pid := mountDaemon(t, "--log", logPath, "--block-size", "64KiB", proxy+"/disk.raw")
	f, err := os.Open(filepath.Join(dir, "disk"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, plain[:4096]) {
		t.Fatalf("read before the fault: %v or bytes differ", err)
	}
	broken.Store(true)
	if _, err := f.ReadAt(buf, 3<<20); !errors.Is(err, syscall.EIO) {
		t.Errorf("read from a failing source: %v, want EIO", err)
	}
	f.Close()
	unmountAndCheck(t, dir, pid)
	logged, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(logged), "answered EIO") != 1 || !strings.Contains(string(logged), "404") {
		t.Errorf("log file %q; want one EIO line naming the 404", logged)
	}
}

// mountForeground starts `imgfs mount ARGS... DIR` in the foreground on a new
// directory and returns once imgfs has said it is mounted: the command, the
// directory, the rest of its stderr and that first line. Cleanup kills it and
// detaches whatever a failed test left behind.
func mountForeground(t *testing.T, args ...string) (*exec.Cmd, string, *bufio.Reader, string) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(imgfsBin, append(append([]string{"mount"}, args...), dir)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		exec.Command("fusermount3", "-u", "-z", dir).Run()
	})
	errs := bufio.NewReader(stderr)
	line, _ := errs.ReadString('\n')
	if !strings.Contains(line, "imgfs: mounted ") {
		t.Fatalf("first stderr line %q; want the mounted line", line)
	}
	return cmd, dir, errs, line
}
