package target

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// loop attaches a file of n 0xFF bytes to a loop device (root and losetup
// needed: the test skips loudly without them, and fails with CI=true).
func loop(t *testing.T, n int) string {
	t.Helper()
	skip := func(why string) {
		if os.Getenv("CI") == "true" {
			t.Fatal(why)
		}
		t.Skip("SKIP: " + why)
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		skip("no losetup")
	}
	f, err := os.CreateTemp("", "imgfs-target-loop-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(f.Name()) })
	f.Write(bytes.Repeat([]byte{0xff}, n))
	f.Close()
	out, err := exec.Command("losetup", "-f", "--show", f.Name()).Output()
	if err != nil {
		skip("cannot attach a loop device (needs root): " + err.Error())
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// Zero clears exactly the range asked for, page-unaligned ends included,
// through BLKZEROOUT and through the written-zeros fallback; the device
// is held exclusively while open, and its size comes from BLKGETSIZE64.
func TestBlockDeviceZero(t *testing.T) {
	const size = 1 << 20
	for _, fallback := range []bool{false, true} {
		dev := loop(t, size)
		b, err := OpenBlockDevice(dev)
		if err != nil {
			t.Fatal(err)
		}
		if b.Size() != size {
			t.Fatalf("size %d, want %d", b.Size(), size)
		}
		if _, err := OpenBlockDevice(dev); !errors.Is(err, ErrBusy) {
			t.Fatalf("second exclusive open: %v, want ErrBusy", err)
		}
		b.noZeroIO = fallback
		const off, n = 1000, 5*4096 + 17
		if err := b.Zero(off, n); err != nil {
			t.Fatal(err)
		}
		if !fallback {
			t.Logf("BLKZEROOUT supported by %s: %v", dev, !b.noZeroIO)
		}
		if err := b.Flush(); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, size)
		if _, err := b.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		b.Close()
		want := bytes.Repeat([]byte{0xff}, size)
		clear(want[off : off+n])
		if !bytes.Equal(got, want) {
			t.Fatalf("fallback=%v: the device differs at byte %d", fallback, firstDiffAt(got, want))
		}
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
