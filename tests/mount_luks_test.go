package tests

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// disk.luks of a qcow2+LUKS mount is a raw LUKS volume that the same
// passphrase opens: cryptsetup accepts its header and qemu-img reads the
// original plaintext from it, straight through the mount.
func TestMountDiskLUKSOfQcow2LUKSOpensWithQemuImg(t *testing.T) {
	testimg.Need(t, "cryptsetup")
	plain := testimg.RandomBytes(3<<20, 41)
	copy(plain[1<<20:], make([]byte, 512<<10)) // a zero run: unallocated in the qcow2
	img := makeMountImage(t, "qcow2-luks", plain)
	dir, pid := mountDaemon(t, append(img.keyArgs, img.path)...)
	luks := filepath.Join(dir, "disk.luks")
	st, err := os.Stat(luks)
	if err != nil {
		t.Fatalf("no disk.luks in the mount of an encrypted image: %v", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		t.Errorf("disk.luks mode %v: readable by others", st.Mode())
	}
	// cryptsetup wants to open its argument read-write as a device, which a
	// read-only FUSE file is not: it checks a copy of the bytes.
	cp := testimg.WriteFile(t, t.TempDir(), "copy.luks", readFile(t, luks))
	testimg.Run(t, "cryptsetup", "isLuks", cp)
	out := filepath.Join(t.TempDir(), "from-luks.raw")
	testimg.QemuImg(t, "convert", "--object", "secret,id=sec0,data="+testPass,
		"--image-opts", "driver=luks,key-secret=sec0,file.filename="+luks, "-O", "raw", out)
	if got := readFile(t, out); !bytes.Equal(got, plain) {
		t.Fatal("qemu-img reading disk.luks does not give the plaintext")
	}
	unmountAndCheck(t, dir, pid)
}

// For a raw LUKS image disk.luks is the stored ciphertext itself; an
// unencrypted image has no disk.luks.
func TestMountDiskLUKSOfRawLUKSIsTheStoredImage(t *testing.T) {
	plain := testimg.RandomBytes(1<<20, 42)
	img := makeMountImage(t, "luks1", plain)
	dir, pid := mountDaemon(t, append(img.keyArgs, img.path)...)
	if !bytes.Equal(readFile(t, filepath.Join(dir, "disk.luks")), readFile(t, img.path)) {
		t.Fatal("disk.luks differs from the stored raw LUKS image")
	}
	unmountAndCheck(t, dir, pid)

	raw := makeMountImage(t, "qcow2", plain)
	dir, pid = mountDaemon(t, raw.path)
	if _, err := os.Stat(filepath.Join(dir, "disk.luks")); !os.IsNotExist(err) {
		t.Fatalf("an unencrypted image has disk.luks (stat: %v)", err)
	}
	unmountAndCheck(t, dir, pid)
}
