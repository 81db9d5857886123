package tests

import (
	"bytes"
	"compress/flate"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/qcowio"
	"github.com/imgfs/imgfs/tests/hostile"
	"github.com/imgfs/imgfs/tests/testimg"
)

// Bounds every hostile image must respect, in the binary and in the Go API.
const (
	hostileDeadline = 10 * time.Second
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

// apiLimited runs apiOpen with a deadline and returns its error and the
// bytes it allocated (runtime.MemStats.TotalAlloc: an upper bound of the
// heap it could have used).
func apiLimited(t *testing.T, path, pass string) (error, uint64) {
	t.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	done := make(chan error, 1)
	go func() { done <- apiOpen(path, pass) }()
	select {
	case err := <-done:
		runtime.ReadMemStats(&after)
		return err, after.TotalAlloc - before.TotalAlloc
	case <-time.After(hostileDeadline):
		t.Fatalf("Go API open of %s did not finish within %v", path, hostileDeadline)
		return nil, 0
	}
}

// hostileCases builds every malicious image (shared by the tests below).
func hostileCases(t *testing.T, dir string) []hostile.Case {
	testimg.Need(t, "qemu-img", "qemu-io", "cryptsetup", testimg.Python)
	return append(hostile.Qcow2Cases(t, dir), hostile.LUKSCases(t, dir)...)
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
			err, alloc := apiLimited(t, c.Path, pass)
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
	for _, c := range []struct {
		path string
		key  bool
	}{
		{qb, false}, {bomb, false},
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
		pass := ""
		if c.key {
			pass = hostile.Pass
		}
		if err, _ := apiLimited(t, c.path, pass); err != nil {
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
// keyslot's cost refuses it naming the limit, the default opens it.
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
		{l2, "--max-kdf-memory", "16K", "memory 32 KiB (limit 16)"},
		{l2, "--max-kdf-time", "3", "time 4 (limit 3)"},
	} {
		r := runImgfs(t, nil, "cat", "--passphrase-file", pf, c.flag, c.value, c.path)
		if r.code == 0 || !strings.Contains(string(r.stderr), c.want) || !strings.Contains(string(r.stderr), c.flag) {
			t.Errorf("%s %s: exit %d, want an error with %q naming %s: %s", c.flag, c.value, r.code, c.want, c.flag, r.stderr)
		}
	}
	for _, c := range []struct{ path, flag, value string }{
		{l1, "--max-kdf-iterations", "1000"},
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
