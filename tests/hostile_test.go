package tests

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/blockdev/remote"
	"github.com/imgfs/imgfs/fusefs"
	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/qcowio"
	"github.com/imgfs/imgfs/tests/hostile"
	"github.com/imgfs/imgfs/tests/testimg"
)

// Bounds every hostile image must respect, in the binary and in the Go API.
var hostileDeadline = 10 * time.Second

const (
	hostileMaxRSS   = 200 << 20 // bytes, peak RSS of one imgfs run
	hostileMaxAlloc = 200 << 20 // bytes allocated by one Go API attempt
)

// limitedResult is one imgfs run with its peak RSS.
type limitedResult struct {
	result
	maxRSS int64 // bytes
}

// timeBin measures the peak RSS of a child: ru_maxrss read by os/exec is
// not usable because Go starts children with vfork, so the child's figure
// includes the test process's own memory until exec.
const timeBin = "/usr/bin/time"

// runLimited runs the binary under `/usr/bin/time -f %M` with a deadline
// and reports its peak RSS. A run that does not finish within
// hostileDeadline fails the test: a parse must not hang.
func runLimited(t *testing.T, args ...string) limitedResult {
	t.Helper()
	testimg.Need(t, timeBin)
	ctx, cancel := context.WithTimeout(context.Background(), hostileDeadline)
	defer cancel()
	rssFile := filepath.Join(t.TempDir(), "rss")
	cmd := exec.CommandContext(ctx, timeBin, append([]string{"-f", "%M", "-o", rssFile, imgfsBin}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("imgfs %v did not finish within %v", args, hostileDeadline)
	}
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run imgfs: %v", err)
	}
	b, err := os.ReadFile(rssFile)
	if err != nil {
		t.Fatal(err)
	}
	// With a non-zero exit, time writes "Command exited with non-zero
	// status N" before the figure.
	f := strings.Fields(string(b))
	kib, err := strconv.ParseInt(f[len(f)-1], 10, 64)
	if err != nil {
		t.Fatalf("%s output %q: %v", timeBin, b, err)
	}
	return limitedResult{result{out.Bytes(), errb.Bytes(), code}, kib << 10}
}

// apiOpen opens path through the public Go API the way imgfs does (qcowio
// or luksio, unlocking with pass if non-empty, default KDF limits) and reads
// the whole plaintext. It returns the first error.
func apiOpen(path, pass string) error {
	dev, err := blockdev.OpenFile(path)
	if err != nil {
		return err
	}
	defer dev.Close()
	head := make([]byte, 8)
	if err := blockdev.ReadFull(dev, head, 0); err != nil {
		return err
	}
	var disk blockdev.Device
	if qcowio.IsQcow2(head) {
		img, err := qcowio.Open(dev, qcowio.Policy{})
		if err != nil {
			return err
		}
		defer img.Close()
		if img.Encrypted() {
			if err := img.Unlock([]byte(pass), luksio.UnlockOptions{Slot: luksio.AnySlot}); err != nil {
				return err
			}
		}
		disk = img
	} else {
		h, err := luksio.ReadHeader(dev, dev.Size())
		if err != nil {
			return err
		}
		k, err := h.Unlock(dev, []byte(pass), luksio.UnlockOptions{Slot: luksio.AnySlot})
		if err != nil {
			return err
		}
		vol, err := luksio.NewVolume(dev, h, k)
		if err != nil {
			k.Close()
			return err
		}
		defer vol.Close()
		disk = vol
	}
	_, err = io.Copy(io.Discard, io.NewSectionReader(disk, 0, disk.Size()))
	return err
}

// apiLimited runs apiOpen with a deadline and returns the bytes it
// allocated and its error (runtime.MemStats.TotalAlloc: an upper bound of the
// heap it could have used).
func apiLimited(t *testing.T, path, pass string) (uint64, error) {
	t.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	done := make(chan error, 1)
	go func() { done <- apiOpen(path, pass) }()
	select {
	case err := <-done:
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc, err
	case <-time.After(hostileDeadline):
		t.Fatalf("Go API open of %s did not finish within %v", path, hostileDeadline)
		return 0, nil
	}
}

// hostileCases builds every malicious image (shared by the tests below).
func hostileCases(t *testing.T, dir string) []hostile.Case {
	testimg.Need(t, "qemu-img", "qemu-io", "cryptsetup", testimg.Python)
	cases := hostile.Qcow2Cases(t, dir)
	cases = append(cases, hostile.Qcow2LUKSCases(t, dir)...)
	return append(cases, hostile.LUKSCases(t, dir)...)
}

// TestHostileImagesRefused runs every malicious image through `imgfs cat`
// (with the passphrase when encrypted), `imgfs info` and the Go API. Each
// must end in a non-zero exit / error that names the problem, within the
// deadline, below the RSS and allocation bounds, without a panic and
// without writing a byte of disk data.
func TestHostileImagesRefused(t *testing.T) {
	dir := t.TempDir()
	cases := hostileCases(t, dir)
	pf := passFile(t, dir, hostile.Pass)
	var maxRSS int64
	var maxAlloc uint64
	refused := 0
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			args := []string{"cat"}
			if c.Key {
				args = append(args, "--passphrase-file", pf)
			}
			r := runLimited(t, append(args, c.Path)...)
			stderr := string(r.stderr)
			switch {
			case r.code == 0:
				t.Fatalf("cat accepted the image (%d bytes out)", len(r.stdout))
			case !strings.Contains(stderr, c.Want):
				t.Fatalf("cat error does not name the problem %q: %s", c.Want, stderr)
			case len(r.stdout) != 0:
				t.Fatalf("cat wrote %d bytes before failing", len(r.stdout))
			case strings.Contains(stderr, "panic") || strings.Contains(stderr, "goroutine "):
				t.Fatalf("cat panicked: %s", stderr)
			case r.maxRSS > hostileMaxRSS:
				t.Fatalf("cat peak RSS %d MiB > %d MiB", r.maxRSS>>20, hostileMaxRSS>>20)
			case c.KDF && !strings.Contains(stderr, "--max-kdf-"):
				t.Fatalf("KDF refusal does not name the flag that raises the limit: %s", stderr)
			}
			maxRSS = max(maxRSS, r.maxRSS)

			ri := runLimited(t, "info", c.Path)
			out := string(ri.stdout)
			switch c.Info {
			case hostile.InfoFails:
				if ri.code == 0 || !strings.Contains(string(ri.stderr), c.Want) {
					t.Fatalf("info: exit %d, want an error naming %q: %s%s", ri.code, c.Want, out, ri.stderr)
				}
			case hostile.InfoUnsafe:
				if ri.code != 0 || !strings.Contains(out, "UNSAFE") || !strings.Contains(out, c.Want) {
					t.Fatalf("info: exit %d, want verdict UNSAFE naming %q: %s%s", ri.code, c.Want, out, ri.stderr)
				}
			case hostile.InfoShows:
				if ri.code != 0 || !strings.Contains(out, c.InfoWant) {
					t.Fatalf("info: exit %d, want it to show %q: %s%s", ri.code, c.InfoWant, out, ri.stderr)
				}
			}
			if ri.maxRSS > hostileMaxRSS {
				t.Fatalf("info peak RSS %d MiB > %d MiB", ri.maxRSS>>20, hostileMaxRSS>>20)
			}
			maxRSS = max(maxRSS, ri.maxRSS)

			pass := ""
			if c.Key {
				pass = hostile.Pass
			}
			alloc, err := apiLimited(t, c.Path, pass)
			switch {
			case err == nil:
				t.Fatal("Go API accepted the image")
			case !strings.Contains(err.Error(), c.Want):
				t.Fatalf("Go API error does not name the problem %q: %v", c.Want, err)
			case alloc > hostileMaxAlloc:
				t.Fatalf("Go API allocated %d MiB > %d MiB", alloc>>20, hostileMaxAlloc>>20)
			}
			maxAlloc = max(maxAlloc, alloc)
			refused++
			t.Logf("refused: cat/info peak RSS %d/%d MiB, Go API allocated %.1f MiB: %s",
				r.maxRSS>>20, ri.maxRSS>>20, float64(alloc)/(1<<20), firstLine(stderr))
		})
	}
	t.Logf("FIGURE hostile images: %d generated, %d refused by cat, info and the Go API; max peak RSS %d MiB; max Go API allocation %.1f MiB",
		len(cases), refused, maxRSS>>20, float64(maxAlloc)/(1<<20))
	if refused != len(cases) {
		t.Fatalf("%d of %d malicious images refused", refused, len(cases))
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// TestHostileBaseImagesOpen proves that the unpatched images the malicious
// ones derive from open fine: every refusal above is caused by the patch.
func TestHostileBaseImagesOpen(t *testing.T) {
	testimg.Need(t, "qemu-img", "qemu-io", "cryptsetup")
	dir := t.TempDir()
	pf := passFile(t, dir, hostile.Pass)
	qb, _ := testimg.MakeQcow2(t, dir, "base.qcow2", testimg.QcowImage{Size: 4 << 20, Options: "cluster_size=4096",
		Passes: [][]testimg.QcowWrite{{{Off: 0, Len: 8192, Seed: 1}, {Off: 2 << 20, Len: 4096, Seed: 2}}}})
	bomb, plain := testimg.MakeQcow2(t, dir, "bomb-base.qcow2", testimg.QcowImage{Size: 8 << 20, Options: "cluster_size=2097152",
		Passes: [][]testimg.QcowWrite{{{Off: 0, Len: 2 << 20, Compressed: true, Seed: 3}}}})
	ql, qlPlain := testimg.MakeQcow2(t, dir, "base-luks.qcow2", testimg.QcowImage{Size: 4 << 20, Passphrase: hostile.Pass,
		Passes: [][]testimg.QcowWrite{{{Off: 0, Len: 64 << 10, Seed: 4}}}})
	for _, c := range []struct {
		path string
		key  bool
	}{
		{qb, false}, {bomb, false}, {ql, true},
		{hostile.LUKS1Base(t, dir), true},
		{hostile.LUKS2Base(t, dir, "base.luks2", 4<<20), true},
		{hostile.LUKS2Base(t, dir, "base-4m.luks2", 12<<20, "--luks2-metadata-size", "4m", "--offset", "20480"), true},
	} {
		args := []string{"cat"}
		if c.key {
			args = append(args, "--passphrase-file", pf)
		}
		r := runLimited(t, append(args, c.path)...)
		if r.code != 0 {
			t.Fatalf("base image %s: exit %d: %s", filepath.Base(c.path), r.code, r.stderr)
		}
		if c.path == bomb && !bytes.Equal(r.stdout, plain) {
			t.Fatal("bomb base: cat differs from the plaintext written")
		}
		if c.path == ql && !bytes.Equal(r.stdout, qlPlain) {
			t.Fatal("qcow2+LUKS base: cat differs from the plaintext written")
		}
		pass := ""
		if c.key {
			pass = hostile.Pass
		}
		if _, err := apiLimited(t, c.path, pass); err != nil {
			t.Fatalf("base image %s: Go API: %v", filepath.Base(c.path), err)
		}
	}
}

// TestZipBombIsReal proves that the bomb's deflate stream really inflates
// to gigabytes (so refusing it after one cluster is what bounds memory).
func TestZipBombIsReal(t *testing.T) {
	if testing.Short() {
		t.Skip("inflates 4000 MiB")
	}
	b := hostile.DeflateBomb(t, hostile.BombInflatedSize)
	if len(b) > 4<<20 {
		t.Fatalf("bomb is %d bytes, more than a compressed cluster can hold", len(b))
	}
	n, err := io.Copy(io.Discard, flate.NewReader(bytes.NewReader(b)))
	if err != nil || n != hostile.BombInflatedSize {
		t.Fatalf("bomb inflates to %d bytes (%v), want %d", n, err, int64(hostile.BombInflatedSize))
	}
	t.Logf("FIGURE zip bomb: %d compressed bytes inflate to %d MiB", len(b), n>>20)
}

// TestKDFLimitFlags proves that --max-kdf-iterations, --max-kdf-memory and
// --max-kdf-time reach luksio.UnlockOptions: a limit just below a real
// keyslot's cost refuses it naming the limit, the default opens it. The
// iterations limit is a budget for the whole unlock: the keyslot's 1000
// PBKDF2 iterations plus the digest's 1000.
func TestKDFLimitFlags(t *testing.T) {
	testimg.Need(t, "cryptsetup")
	dir := t.TempDir()
	pf := passFile(t, dir, hostile.Pass)
	l1 := hostile.LUKS1Base(t, dir)                      // PBKDF2, 1000 iterations
	l2 := hostile.LUKS2Base(t, dir, "base.luks2", 4<<20) // argon2id, 32 KiB, 4 passes
	for _, c := range []struct {
		path, flag, value, want string
	}{
		{l1, "--max-kdf-iterations", "999", "1000 PBKDF2 iterations (limit 999)"},
		// The limit bounds the whole unlock: keyslot and digest together.
		{l1, "--max-kdf-iterations", "1999", "2000 PBKDF2 iterations (keyslot and digest) exceed what is left of the unlock's budget of 1999 iterations"},
		{l2, "--max-kdf-memory", "16K", "memory 32 KiB (limit 16)"},
		{l2, "--max-kdf-time", "3", "time 4 (limit 3)"},
	} {
		r := runImgfs(t, nil, "cat", "--passphrase-file", pf, c.flag, c.value, c.path)
		if r.code == 0 || !strings.Contains(string(r.stderr), c.want) || !strings.Contains(string(r.stderr), c.flag) {
			t.Errorf("%s %s: exit %d, want an error with %q naming %s: %s", c.flag, c.value, r.code, c.want, c.flag, r.stderr)
		}
	}
	for _, c := range []struct{ path, flag, value string }{
		{l1, "--max-kdf-iterations", "2000"}, // 1000 for the keyslot, 1000 for the digest
		{l2, "--max-kdf-memory", "32K"},
		{l2, "--max-kdf-time", "4"},
	} {
		if r := runImgfs(t, nil, "cat", "--passphrase-file", pf, c.flag, c.value, c.path); r.code != 0 {
			t.Errorf("%s %s: exit %d: %s", c.flag, c.value, r.code, r.stderr)
		}
	}
	if r := runImgfs(t, nil, "cat", "--passphrase-file", pf, "--max-kdf-memory", "4T", l2); r.code != exitUsage {
		t.Errorf("--max-kdf-memory 4T (does not fit the format's 32-bit KiB): exit %d, want usage error %d: %s", r.code, exitUsage, r.stderr)
	}
}

const exitUsage = 2 // cmd/imgfs exit code for a bad command line

// runLimitedFor is runLimited with another deadline.
func runLimitedFor(t *testing.T, d time.Duration, args ...string) limitedResult {
	t.Helper()
	old := hostileDeadline
	hostileDeadline = d
	defer func() { hostileDeadline = old }()
	return runLimited(t, args...)
}

// sparseMaxRSS bounds the peak RSS of the 1 TiB read.
const sparseMaxRSS = 200 << 20

// TestSparse1TiBQcow2LUKS reads a 1 TiB qcow2+LUKS disk (qemu-img create
// 1T and three 1 MiB writes by qemu-io) end to end with `imgfs cat -o
// FILE`: the holes are skipped through the data map, so nothing near 1 TiB
// is read or decrypted; the peak RSS stays below sparseMaxRSS and the
// written regions read back as written. Run with -short, it reads the same
// layout from a 64 GiB disk.
func TestSparse1TiBQcow2LUKS(t *testing.T) {
	size := int64(1) << 40
	if testing.Short() {
		size = 64 << 30
	}
	dir := t.TempDir()
	pf := passFile(t, dir, hostile.Pass)
	writes := []testimg.QcowWrite{
		{Off: 0, Len: 1 << 20, Seed: 41},
		{Off: size / 2, Len: 1 << 20, Seed: 42},
		{Off: size - 1<<20, Len: 1 << 20, Seed: 43},
	}
	img, _ := testimg.MakeQcow2(t, dir, "sparse.qcow2", testimg.QcowImage{Size: size, Passphrase: hostile.Pass,
		Passes: [][]testimg.QcowWrite{writes}})
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "disk.out")
	r := runLimitedFor(t, 2*time.Minute, "cat", "--stats", "--passphrase-file", pf, "-o", out, img)
	if r.code != 0 {
		t.Fatalf("cat: exit %d: %s", r.code, r.stderr)
	}
	if r.maxRSS > sparseMaxRSS {
		t.Fatalf("peak RSS %d MiB > %d MiB", r.maxRSS>>20, sparseMaxRSS>>20)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ost, _ := f.Stat()
	if ost.Size() != size {
		t.Fatalf("output is %d bytes, want %d", ost.Size(), size)
	}
	for _, w := range writes {
		got := make([]byte, w.Len)
		if _, err := f.ReadAt(got, w.Off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, testimg.RandomBytes(int(w.Len), w.Seed)) {
			t.Fatalf("bytes at %d differ from what qemu-io wrote", w.Off)
		}
	}
	// A few holes between the writes read as zeros.
	for _, off := range []int64{1 << 20, size / 4, size/2 + 1<<20, size - 2<<20} {
		got := make([]byte, 4096)
		if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, make([]byte, 4096)) {
			t.Fatalf("hole at %d does not read as zeros (%v)", off, err)
		}
	}
	t.Logf("FIGURE sparse read: %d GiB virtual qcow2+LUKS (%d KiB file): cat peak RSS %d MiB; %s",
		size>>30, st.Size()>>10, r.maxRSS>>20, strings.TrimSpace(lastLine(string(r.stderr))))

	// export --to qcow2 skips the holes too (it took minutes when the qcow2
	// writer asked the data map once per chunk of a hole), and qemu-img
	// finds the copy identical.
	exported := filepath.Join(dir, "export.qcow2")
	start := time.Now()
	r = runLimitedFor(t, 2*time.Minute, "export", "--to", "qcow2", "--passphrase-file", pf, "-o", exported, img)
	if r.code != 0 {
		t.Fatalf("export: exit %d: %s", r.code, r.stderr)
	}
	if r.maxRSS > sparseMaxRSS {
		t.Fatalf("export peak RSS %d MiB > %d MiB", r.maxRSS>>20, sparseMaxRSS>>20)
	}
	took := time.Since(start)
	testimg.Run(t, "qemu-img", "compare", "--object", "secret,id=s0,data="+hostile.Pass,
		"--image-opts", "driver=qcow2,encrypt.key-secret=s0,file.filename="+img,
		"--image-opts", "driver=qcow2,encrypt.key-secret=s0,file.filename="+exported)
	t.Logf("FIGURE sparse export: %d GiB virtual qcow2+LUKS to qcow2+LUKS in %s, peak RSS %d MiB, identical to qemu-img",
		size>>30, took.Round(time.Millisecond), r.maxRSS>>20)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// settled waits (up to 10 s) for goroutines that are ending to end, and
// returns the goroutine count: until at most want are left, or, for want
// 0 (a baseline), until the count has not changed for 300 ms.
func settled(want int) int {
	n := runtime.NumGoroutine()
	stable := time.Now()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if want > 0 && n <= want || want == 0 && time.Since(stable) >= 300*time.Millisecond {
			break
		}
		time.Sleep(20 * time.Millisecond)
		if m := runtime.NumGoroutine(); m != n {
			n, stable = m, time.Now()
		}
	}
	return n
}

// TestLeakOpenReadClose opens, reads and closes qcow2+LUKS and LUKS1 images
// through the Go API, from a file, over HTTP range requests through the
// block cache, and from a server that ignores Range (sequential mode, which
// keeps an unlinked temporary file), 10 times each, some of them read
// through a FUSE mount that is then unmounted: afterwards this process has
// exactly the file descriptors and goroutines it had before, and the cache
// directory holds no file.
func TestLeakOpenReadClose(t *testing.T) {
	testimg.Need(t, "fusermount3")
	dir := t.TempDir()
	qimg, _ := testimg.MakeQcow2(t, dir, "leak.qcow2", testimg.QcowImage{Size: 8 << 20, Passphrase: hostile.Pass,
		Passes: [][]testimg.QcowWrite{{{Off: 0, Len: 3 << 20, Seed: 51}}}})
	limg := hostile.LUKS1Base(t, dir)
	files := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(files)
	defer srv.Close()
	noRange := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del("Range")
		files.ServeHTTP(w, r)
	}))
	defer noRange.Close()
	cacheDir := t.TempDir()

	type how struct{ overHTTP, sequential, mount bool }
	cycle := func(t *testing.T, path string, c how) {
		var dev blockdev.Device
		if c.overHTTP {
			base := srv.URL
			if c.sequential {
				base = noRange.URL
			}
			h, err := remote.OpenHTTP(context.Background(), base+"/"+filepath.Base(path), remote.HTTPOptions{CacheDir: cacheDir})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			c, err := remote.NewCache(h, remote.CacheOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			dev = c
		} else {
			f, err := blockdev.OpenFile(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			dev = f
		}
		var disk blockdev.Device
		if path == qimg {
			img, err := qcowio.Open(dev, qcowio.Policy{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if err := img.Unlock([]byte(hostile.Pass), luksio.UnlockOptions{Slot: luksio.AnySlot}); err != nil {
				t.Fatal(err)
			}
			disk = img
		} else {
			vol, err := luksio.Open(dev, []byte(hostile.Pass), luksio.UnlockOptions{Slot: luksio.AnySlot})
			if err != nil {
				t.Fatal(err)
			}
			defer vol.Close()
			disk = vol
		}
		if !c.mount {
			if _, err := io.Copy(io.Discard, io.NewSectionReader(disk, 0, disk.Size())); err != nil {
				t.Fatal(err)
			}
			return
		}
		mnt := t.TempDir()
		s, err := fusefs.Mount(mnt, fusefs.Options{Disk: disk, ImageJSON: []byte("{}")})
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(mnt, fusefs.DiskName))
		if err != nil || int64(len(got)) != disk.Size() {
			t.Fatalf("read through the mount: %d bytes, %v", len(got), err)
		}
		if err := s.Unmount(); err != nil {
			t.Fatal(err)
		}
		s.Wait()
	}
	for _, c := range []struct {
		name string
		path string
		how  how
	}{
		{"qcow2+LUKS file", qimg, how{}}, {"LUKS1 file", limg, how{}},
		{"qcow2+LUKS HTTP", qimg, how{overHTTP: true}}, {"LUKS1 HTTP", limg, how{overHTTP: true}},
		{"LUKS1 HTTP sequential", limg, how{overHTTP: true, sequential: true}},
		{"qcow2+LUKS file mount", qimg, how{mount: true}},
		{"LUKS1 HTTP mount", limg, how{overHTTP: true, mount: true}},
		{"qcow2+LUKS HTTP sequential mount", qimg, how{overHTTP: true, sequential: true, mount: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cycle(t, c.path, c.how) // warm-up: lazily started runtime goroutines
			fds, gs := openFDs(t), settled(0)
			for range 10 {
				cycle(t, c.path, c.how)
			}
			if ents, err := os.ReadDir(cacheDir); err != nil || len(ents) != 0 {
				t.Fatalf("cache directory after 10 cycles: %d files (%v)", len(ents), err)
			}
			if g := settled(gs); g > gs {
				buf := make([]byte, 1<<16)
				t.Fatalf("goroutines: %d before 10 open/read/close cycles, %d after\n%s", gs, g, buf[:runtime.Stack(buf, true)])
			}
			if n := openFDs(t); n > fds {
				t.Fatalf("file descriptors: %d before 10 open/read/close cycles, %d after", fds, n)
			}
			t.Logf("FIGURE leak check %s: 10 cycles, fds %d -> %d, goroutines %d -> %d", c.name, fds, openFDs(t), gs, runtime.NumGoroutine())
		})
	}
}

// procOwner returns the owner uid of /proc/<pid>/status and the real uid
// the process runs as (the Uid: line).
func procOwner(t *testing.T, pid int) (owner, uid uint32) {
	t.Helper()
	p := fmt.Sprintf("/proc/%d/status", pid)
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Uid:" {
			n, _ := strconv.ParseUint(f[1], 10, 32)
			uid = uint32(n)
		}
	}
	return st.Sys().(*syscall.Stat_t).Uid, uid
}

// TestCatWhileHoldingKeyIsNotDumpable runs `imgfs cat` of a LUKS1 image as
// an unprivileged user (nobody) with its stdout a pipe nobody reads, so it
// blocks mid-disk with the key unlocked. The kernel then owns its /proc
// files by root instead of by nobody, which happens only for a
// non-dumpable process (proc(5)), and /proc/<pid>/limits shows a core size
// limit of 0. A control process (sleep) run the same way is owned by nobody.
func TestCatWhileHoldingKeyIsNotDumpable(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the binary as another user")
	}
	testimg.Need(t, "cryptsetup", "sleep")
	const nobody = 65534
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "imgfs")
	testimg.CopyFile(t, imgfsBin, bin)
	img := hostile.LUKS1Base(t, dir)
	pf := passFile(t, dir, hostile.Pass)
	for _, p := range []string{bin, img, pf} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	asNobody := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}

	control := exec.Command("sleep", "30")
	control.SysProcAttr = asNobody
	if err := control.Start(); err != nil {
		t.Fatal(err)
	}
	defer control.Wait()
	defer control.Process.Kill()
	if owner, uid := procOwner(t, control.Process.Pid); owner != nobody || uid != nobody {
		t.Fatalf("control: /proc/<pid>/status owned by %d, process uid %d; want both %d", owner, uid, nobody)
	}

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	cmd := exec.Command(bin, "cat", "--passphrase-file", pf, img)
	cmd.SysProcAttr = asNobody
	cmd.Stdout = pw
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	defer cmd.Wait()
	defer cmd.Process.Kill()
	// Wait until cat has filled the pipe: it has unlocked the key and is
	// blocked writing plaintext.
	deadline := time.Now().Add(hostileDeadline)
	for {
		n, err := unix.IoctlGetInt(int(pr.Fd()), unix.TIOCINQ) // FIONREAD
		if err != nil {
			t.Fatal(err)
		}
		if n >= 64<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cat wrote only %d bytes within %v: %s", n, hostileDeadline, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	pid := cmd.Process.Pid
	owner, uid := procOwner(t, pid)
	if uid != nobody {
		t.Fatalf("cat runs as uid %d, want %d", uid, nobody)
	}
	if owner != 0 {
		t.Fatalf("/proc/%d/status of a cat holding the key is owned by %d: the process is dumpable", pid, owner)
	}
	limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	ok := false
	for _, line := range strings.Split(string(limits), "\n") {
		if strings.HasPrefix(line, "Max core file size") {
			f := strings.Fields(line)
			ok = len(f) >= 6 && f[4] == "0" && f[5] == "0"
		}
	}
	if !ok {
		t.Fatalf("core file size limit is not 0/0:\n%s", limits)
	}
	t.Logf("cat (pid %d, uid %d) holding the key: /proc files owned by root (non-dumpable), core limit 0/0", pid, uid)
}

// TestKeyMaterialNeverPrinted runs imgfs on LUKS1, LUKS2 and qcow2+LUKS
// images with the right passphrase, a wrong one, a binary key file and a KDF
// limit that refuses the slot, through cat, info, info --json, cat --stats
// and a mount's image.json, and checks that neither the passphrase (or the
// key file's hex), nor the volume key (raw or hex) appears in any output.
func TestKeyMaterialNeverPrinted(t *testing.T) {
	testimg.Need(t, "cryptsetup", "qemu-img", "qemu-io")
	dir := t.TempDir()
	wrong := "wrong-passphrase-5d2e"
	pf, wf := passFile(t, dir, hostile.Pass), passFile(t, t.TempDir(), wrong)
	l1 := hostile.LUKS1Base(t, dir)
	l2 := hostile.LUKS2Base(t, dir, "base.luks2", 4<<20)
	q, _ := testimg.MakeQcow2(t, dir, "k.qcow2", testimg.QcowImage{Size: 4 << 20, Passphrase: hostile.Pass,
		Passes: [][]testimg.QcowWrite{{{Off: 0, Len: 1 << 20, Seed: 61}}}})
	// A LUKS1 image whose passphrase is the hex of a binary key file.
	binKey := testimg.RandomBytes(32, 62)
	kf := testimg.WriteFile(t, dir, "key.bin", binKey)
	kimg := filepath.Join(dir, "keyfile.luks")
	testimg.CryptsetupFormat(t, kimg, 4<<20, hex.EncodeToString(binKey), "--type", "luks1", "--pbkdf-force-iterations", "1000")

	secrets := map[string][]byte{
		"passphrase":        []byte(hostile.Pass),
		"wrong passphrase":  []byte(wrong),
		"key file hex":      []byte(hex.EncodeToString(binKey)),
		"key file hex (UC)": []byte(strings.ToUpper(hex.EncodeToString(binKey))),
	}
	for name, p := range map[string]string{"LUKS1": l1, "LUKS2": l2, "key-file LUKS1": kimg} {
		pass := hostile.Pass
		if p == kimg {
			pass = hex.EncodeToString(binKey)
		}
		vk, _ := testimg.CryptsetupVolumeKey(t, p, pass)
		secrets[name+" volume key"] = vk
		secrets[name+" volume key hex"] = []byte(hex.EncodeToString(vk))
	}
	check := func(what string, out []byte) {
		t.Helper()
		for name, s := range secrets {
			if bytes.Contains(out, s) {
				t.Errorf("%s contains the %s", what, name)
			}
		}
	}
	outFile := filepath.Join(dir, "out.raw")
	runs := 0
	for _, img := range []string{l1, l2, q} {
		for _, args := range [][]string{
			{"cat", "--passphrase-file", pf, img},
			{"cat", "--stats", "--passphrase-file", pf, "-o", outFile, img},
			{"cat", "--passphrase-file", wf, img},
			{"cat", "--passphrase-file", pf, "--max-kdf-iterations", "1", "--max-kdf-time", "1", img},
			{"cat", "--key-file", kf, img},
			{"info", img},
			{"info", "--json", img},
		} {
			r := runImgfs(t, nil, args...)
			wantOK := args[1] != "--passphrase-file" || args[2] == pf && args[3] != "--max-kdf-iterations"
			if args[0] == "cat" && args[1] == "--stats" {
				wantOK = true
			}
			if args[1] == "--key-file" {
				wantOK = false
			}
			if (r.code == 0) != wantOK {
				t.Errorf("imgfs %v: exit %d: %s", args, r.code, r.stderr)
			}
			check(fmt.Sprintf("stdout of imgfs %v", args), r.stdout)
			check(fmt.Sprintf("stderr of imgfs %v", args), r.stderr)
			runs++
		}
	}
	for _, args := range [][]string{
		{"cat", "--key-file", kf, kimg},
		{"cat", "--key-file", pf, kimg},
	} {
		r := runImgfs(t, nil, args...)
		if (r.code == 0) != (args[2] == kf) {
			t.Errorf("imgfs %v: exit %d: %s", args, r.code, r.stderr)
		}
		check(fmt.Sprintf("stdout of imgfs %v", args), r.stdout)
		check(fmt.Sprintf("stderr of imgfs %v", args), r.stderr)
		runs++
	}
	if _, err := exec.LookPath("fusermount3"); err == nil {
		for _, img := range []string{l1, q} {
			mnt, pid := mountDaemon(t, "--passphrase-file", pf, img)
			js, err := os.ReadFile(filepath.Join(mnt, "image.json"))
			if err != nil {
				t.Fatal(err)
			}
			check("image.json of "+filepath.Base(img), js)
			unmountAndCheck(t, mnt, pid)
			runs++
		}
	} else if testimg.InCI() {
		t.Fatal("fusermount3 missing")
	}
	t.Logf("FIGURE key hygiene: %d runs (success, wrong passphrase, key file, KDF refusal, info, mount image.json): no passphrase or volume key in any output", runs)
}

// A qcow2 image whose L2 tables total more than 8 MiB has each table
// checked when a read first reaches it (opening a 1 TiB image must not
// fetch 128 MiB of tables). The 5 GiB disk here, with 4 KiB clusters, has
// 2560 L2 tables (10 MiB). A bad table is refused with the reason `imgfs
// info` gives when a read reaches it: `cat` writes the bytes before it,
// exactly, then stops (never pads); a bad first table means no byte at all.
func TestHostileLargeImageDeferredChecks(t *testing.T) {
	dir := t.TempDir()
	const size = 5 << 30
	var zero []testimg.QcowWrite
	for off := int64(0); off < size; off += 1 << 30 { // qemu-io writes at most 2 GiB at once
		zero = append(zero, testimg.QcowWrite{Off: off, Len: 1 << 30, Zero: true})
	}
	base, _ := testimg.MakeQcow2(t, dir, "big.qcow2", testimg.QcowImage{Size: size, Options: "cluster_size=4096",
		Passes: [][]testimg.QcowWrite{zero}})
	raw, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	l1Off := int64(be.Uint64(raw[40:]))
	if be.Uint32(raw[20:]) != 12 || be.Uint32(raw[36:]) != 2560 {
		t.Fatalf("unexpected layout: cluster_bits %d, l1_size %d", be.Uint32(raw[20:]), be.Uint32(raw[36:]))
	}
	l2Of := func(i int64) int64 { return int64(be.Uint64(raw[l1Off+8*i:]) & 0x00fffffffffffe00) }
	// Bad tables: L1 entries 0 and 1024 (disk offsets 0 and 2 GiB) map
	// their first cluster onto the L1 table.
	patched := func(name string, l1i int64) string {
		b := append([]byte(nil), raw...)
		be.PutUint64(b[l2Of(l1i):], uint64(l1Off)|1<<63)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	first, middle := patched("first.qcow2", 0), patched("middle.qcow2", 1024)
	const want = "overlaps the L1 table"

	// the unpatched image reads: zeros around 2 GiB
	got := mustImgfs(t, nil, "cat", "--offset", "2044M", "--length", "8M", base)
	if len(got) != 8<<20 || !allZero(got) {
		t.Fatalf("unpatched image: %d bytes, zero %v", len(got), allZero(got))
	}
	r := runImgfs(t, nil, "cat", "--offset", "2044M", "--length", "8M", middle)
	if r.code == 0 || !strings.Contains(string(r.stderr), want) || !strings.Contains(string(r.stderr), "cluster 524288") {
		t.Fatalf("bad table at 2 GiB: exit %d, stderr %s", r.code, r.stderr)
	}
	if len(r.stdout) != 4<<20 || !allZero(r.stdout) {
		t.Fatalf("bad table at 2 GiB: %d bytes written before the error (want the 4 MiB before it, all zero)", len(r.stdout))
	}
	r = runImgfs(t, nil, "cat", "--length", "8M", first)
	mustFail(t, r, want)
	if len(r.stdout) != 0 {
		t.Fatalf("bad first table: %d bytes written", len(r.stdout))
	}
	for _, p := range []string{first, middle} {
		out := string(mustImgfs(t, nil, "info", p))
		if !strings.Contains(out, "UNSAFE") || !strings.Contains(out, want) {
			t.Fatalf("info walks every table and says UNSAFE %q:\n%s", want, out)
		}
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Bounds of TestHostileMaxL1Table: opening (cat, the Go API) must stay
// fast; info walks all 4Mi tables and may take longer, in bounded memory.
const (
	maxL1OpenDeadline = 5 * time.Second
	maxL1InfoDeadline = 60 * time.Second
)

// TestHostileMaxL1Table opens a qcow2 image whose L1 table has 4Mi entries
// (the 32 MiB cap), 512-byte clusters, each entry with its own zeroed L2
// table (hostile.MaxL1Table: 2 GiB apparent, 32 MiB on disk). `imgfs cat
// --length 512` and the Go API (qcowio.Open and a 512-byte read) must finish
// within 5 s and 200 MiB; `imgfs info`, which walks every table, within
// 200 MiB. Before the open used compact structures they took 34-46 s and
// ~590 MB: a map and slices over every L1 entry, and a data-map query that
// loaded all 4Mi tables to find that the first 512 bytes are a hole.
func TestHostileMaxL1Table(t *testing.T) {
	dir := t.TempDir()
	p := hostile.MaxL1Table(t, dir)

	start := time.Now()
	r := runLimitedFor(t, maxL1OpenDeadline, "cat", "--length", "512", p)
	took := time.Since(start)
	if r.code != 0 || len(r.stdout) != 512 || !allZero(r.stdout) {
		t.Fatalf("cat --length 512: exit %d, %d bytes (zero %v): %s", r.code, len(r.stdout), allZero(r.stdout), r.stderr)
	}
	if r.maxRSS > hostileMaxRSS {
		t.Fatalf("cat peak RSS %d MiB > %d MiB", r.maxRSS>>20, hostileMaxRSS>>20)
	}

	istart := time.Now()
	ri := runLimitedFor(t, maxL1InfoDeadline, "info", p)
	itook := time.Since(istart)
	if ri.code != 0 || !strings.Contains(string(ri.stdout), "safe") {
		t.Fatalf("info: exit %d: %s%s", ri.code, ri.stdout, ri.stderr)
	}
	if ri.maxRSS > hostileMaxRSS {
		t.Fatalf("info peak RSS %d MiB > %d MiB", ri.maxRSS>>20, hostileMaxRSS>>20)
	}

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	astart := time.Now()
	err := func() error {
		dev, err := blockdev.OpenFile(p)
		if err != nil {
			return err
		}
		defer dev.Close()
		img, err := qcowio.Open(dev, qcowio.Policy{})
		if err != nil {
			return err
		}
		defer img.Close()
		if !img.Info().DeferredL2Checks {
			return errors.New("4Mi L2 tables were walked at open (want deferred checks)")
		}
		b := make([]byte, 512)
		if _, err := img.ReadAt(b, 0); err != nil {
			return err
		}
		if !allZero(b) {
			return errors.New("the first 512 bytes are not zeros")
		}
		_, err = img.NextData(0)
		return err
	}()
	atook := time.Since(astart)
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	switch {
	case err != nil:
		t.Fatalf("Go API: %v", err)
	case atook > maxL1OpenDeadline:
		t.Fatalf("Go API open, read and NextData took %v > %v", atook, maxL1OpenDeadline)
	case alloc > hostileMaxAlloc:
		t.Fatalf("Go API allocated %d MiB > %d MiB", alloc>>20, hostileMaxAlloc>>20)
	}
	t.Logf("FIGURE max L1 table (4Mi entries, 4Mi L2 tables): cat --length 512 %v, peak RSS %d MiB; info %v, peak RSS %d MiB; Go API open+read %v, allocated %d MiB",
		took.Round(time.Millisecond), r.maxRSS>>20, itook.Round(time.Millisecond), ri.maxRSS>>20, atook.Round(time.Millisecond), alloc>>20)
}
