package qcowio

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/tests/testimg"
)

const writerPass = "qcow2 writer passphrase"

// memDevice is a Device over a byte slice.
type memDevice []byte

func (m memDevice) Size() int64 { return int64(len(m)) }
func (m memDevice) ReadAt(p []byte, off int64) (int, error) {
	n, eof := blockdev.Clip(p, off, int64(len(m)))
	if n == 0 {
		return 0, eof
	}
	copy(p[:n], m[off:])
	return n, eof
}

// writerPlain is a disk with data across cluster and L2-range boundaries,
// long zero runs (unallocated) and an all-zero L2 range.
func writerPlain(size int) []byte {
	p := make([]byte, size)
	copy(p[1000:], testimg.RandomBytes(70000, 1))
	copy(p[3<<20+17:], testimg.RandomBytes(2<<20+5, 2))
	copy(p[size-4096-300:], testimg.RandomBytes(4096, 3))
	p[size/2] = 1
	return p
}

// writeQcow2 runs Write into a new file and returns its path.
func writeQcow2(t *testing.T, plain []byte, opts WriteOptions) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "out.qcow2")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var progress int64
	opts.Progress = func(n int64) { progress += n }
	end, err := Write(context.Background(), f, memDevice(plain), opts)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := f.Stat(); st.Size() != end {
		t.Fatalf("Write says %d bytes, file has %d", end, st.Size())
	}
	if want := (int64(len(plain)) + 511) &^ 511; progress != want {
		t.Fatalf("progress counted %d bytes, want %d", progress, want)
	}
	return path
}

// qemuCheck runs `qemu-img check` (with the key for an encrypted image) and
// fails on any error, leak or corruption it reports.
func qemuCheck(t *testing.T, path, pass string) {
	t.Helper()
	args := []string{"check", "--output=json"}
	if pass != "" {
		args = append(args, "--object", "secret,id=sec0,data="+pass, "--image-opts", "driver=qcow2,encrypt.key-secret=sec0,file.filename="+path)
	} else {
		args = append(args, "-f", "qcow2", path)
	}
	out, err := testimg.RunErr("qemu-img", args...)
	for i := 0; err != nil && strings.Contains(err.Error(), "accurate CPU usage") && i < 40; i++ {
		out, err = testimg.RunErr("qemu-img", args...)
	}
	if err != nil {
		t.Fatalf("qemu-img check: %v\n%s", err, out)
	}
	var res map[string]any
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("qemu-img check output: %v\n%s", err, out)
	}
	for _, k := range []string{"corruptions", "leaks", "check-errors", "corruptions-fixed", "leaks-fixed"} {
		if v, ok := res[k]; ok && v != float64(0) {
			t.Fatalf("qemu-img check reports %s = %v:\n%s", k, v, out)
		}
	}
}

// Plain qcow2 images written by Write pass `qemu-img check` and read back
// in qemu-img and qcowio as the plaintext, with zero clusters unallocated.
func TestWriteQcow2PlainMatchesQemu(t *testing.T) {
	testimg.Need(t, "qemu-img")
	for _, tc := range []struct {
		cs   int64
		size int
	}{{4096, 9<<20 + 512}, {65536, 16 << 20}, {2 << 20, 7<<20 + 1000}} {
		t.Run(fmt.Sprintf("cluster%d", tc.cs), func(t *testing.T) {
			plain := writerPlain(tc.size)
			path := writeQcow2(t, plain, WriteOptions{ClusterSize: tc.cs})
			qemuCheck(t, path, "")
			want := append(bytes.Clone(plain), make([]byte, (len(plain)+511)&^511-len(plain))...)
			mustEqual(t, "qemu-img convert", testimg.QemuRaw(t, path, ""), want)
			img := openImage(t, path)
			checkAllReads(t, img, want)
			// Zero clusters are holes: the allocated data is close to the
			// non-zero bytes, far below the disk size.
			var data int64
			for _, e := range testimg.QemuMap(t, path) {
				if e.Data {
					data += e.Length
				}
			}
			if nonZero := int64(70000 + 2<<20 + 4096 + 1); data < nonZero || data > nonZero+6*tc.cs {
				t.Fatalf("qemu-img map: %d data bytes for %d non-zero bytes", data, nonZero)
			}
		})
	}
}

// qcow2+LUKS images written by Write with a NewLUKS1 header pass `qemu-img
// check` and qemu-img decrypts them to the plaintext with the passphrase.
func TestWriteQcow2LUKSMatchesQemu(t *testing.T) {
	testimg.Need(t, "qemu-img")
	for _, cs := range []int64{4096, 65536} {
		t.Run(fmt.Sprintf("cluster%d", cs), func(t *testing.T) {
			area, key, err := luksio.NewLUKS1([]byte(writerPass), luksio.FormatOptions{Iterations: 1000})
			if err != nil {
				t.Fatal(err)
			}
			c, err := key.Cipher()
			key.Close()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			plain := writerPlain(12<<20 + 512)
			path := writeQcow2(t, plain, WriteOptions{ClusterSize: cs, LUKSArea: area, Cipher: c})
			qemuCheck(t, path, writerPass)
			mustEqual(t, "qemu-img convert", testimg.QemuRaw(t, path, writerPass), plain)
			img := openImage(t, path)
			if err := img.Unlock([]byte(writerPass), luksio.UnlockOptions{Slot: luksio.AnySlot}); err != nil {
				t.Fatal(err)
			}
			checkAllReads(t, img, plain)
			// No plaintext cluster is stored: the first data cluster differs.
			stored, _ := os.ReadFile(path)
			if bytes.Contains(stored, plain[1000:1000+4096]) {
				t.Fatal("plaintext found in the encrypted image")
			}
		})
	}
}

func TestWriteQcow2Refusals(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "x"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, _ := luksio.NewSectorCipher("aes-xts-plain64", make([]byte, 64), 512)
	for name, o := range map[string]WriteOptions{
		"cluster 512":       {ClusterSize: 512},
		"cluster not pow2":  {ClusterSize: 65537},
		"cipher, no area":   {Cipher: c},
		"area, no cipher":   {LUKSArea: make([]byte, 4096)},
		"cluster too large": {ClusterSize: 4 << 20},
	} {
		if _, err := Write(context.Background(), f, memDevice(make([]byte, 4096)), o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A failing plaintext device fails the write.
	short := shortDev{memDevice(make([]byte, 1<<20)), 8 << 20}
	if _, err := Write(context.Background(), f, short, WriteOptions{}); !errors.Is(err, blockdev.ErrTruncated) {
		t.Errorf("short device: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Write(ctx, f, memDevice(make([]byte, 64<<20)), WriteOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
}

type shortDev struct {
	blockdev.Device
	size int64
}

func (d shortDev) Size() int64 { return d.size }

var _ io.ReaderAt = memDevice(nil)
