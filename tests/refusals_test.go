package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// Flags that cannot apply are refused, never silently ignored, and a
// failed write of the output is a non-zero exit.
func TestFlagsThatCannotApplyAreRefused(t *testing.T) {
	dir := t.TempDir()
	img := testimg.WriteFile(t, dir, "disk.raw", testimg.RandomBytes(1<<20, 3))
	pf := passFile(t, dir, testPassphrase)
	out := filepath.Join(dir, "out.raw")
	mustFail(t, runImgfs(t, nil, "export", img, "--to", "raw", "--target-is-zero", "-o", out), "--target-is-zero", "not a block device")
	if _, err := os.Stat(out); err == nil {
		t.Fatal("a refused export wrote its output")
	}
	mustFail(t, runImgfs(t, nil, "mount", "--catalog", t.TempDir(), "--partition-passphrase-file", "1="+pf), "--partition-passphrase-file")
	if _, err := os.Stat("/dev/full"); err == nil {
		f, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd := exec.Command(imgfsBin, "map", "--json", img)
		cmd.Stdout = f
		if err := cmd.Run(); err == nil {
			t.Fatal("imgfs map > /dev/full exited 0")
		}
	}
}
