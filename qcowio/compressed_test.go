package qcowio

import (
	"bytes"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

// compressWith compresses data with a real tool: python3's zlib (raw
// deflate, window bits -12, as qemu) or the zstd command.
func compressWith(t *testing.T, kind string, data []byte) []byte {
	t.Helper()
	var cmd *exec.Cmd
	switch kind {
	case "zlib":
		testimg.Need(t, "/usr/bin/python3")
		cmd = exec.Command("/usr/bin/python3", "-c",
			"import sys,zlib; c=zlib.compressobj(9, zlib.DEFLATED, -12); sys.stdout.buffer.write(c.compress(sys.stdin.buffer.read())+c.flush())")
	case "zstd":
		testimg.Need(t, "zstd")
		cmd = exec.Command("zstd", "-q", "-c")
	}
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s compress: %v", kind, err)
	}
	return out
}

// TestCorruptCompressedClusterFailsAtRead replaces the compressed data of a
// real image's cluster 1 with streams that inflate to more or less than a
// cluster, or with garbage: the image opens (its tables are sound), reading
// that cluster fails with ErrCorrupt and zeroes the buffer, and the other
// clusters still read correctly.
func TestCorruptCompressedClusterFailsAtRead(t *testing.T) {
	const cs = 65536
	cases := []struct {
		name, compression string
		payload           func(t *testing.T) []byte
		reason            string
	}{
		{"zlib inflating past a cluster", "zlib", func(t *testing.T) []byte { return compressWith(t, "zlib", bytes.Repeat([]byte{'A'}, cs+1)) }, "inflates past a cluster"},
		{"zlib inflating to less than a cluster", "zlib", func(t *testing.T) []byte { return compressWith(t, "zlib", bytes.Repeat([]byte{'A'}, cs-1)) }, "less than a cluster"},
		{"zlib garbage", "zlib", func(t *testing.T) []byte { return testimg.RandomBytes(2000, 110) }, "zlib"},
		{"zstd inflating past a cluster", "zstd", func(t *testing.T) []byte { return compressWith(t, "zstd", bytes.Repeat([]byte{'A'}, cs+1)) }, "inflates past a cluster"},
		{"zstd inflating to less than a cluster", "zstd", func(t *testing.T) []byte { return compressWith(t, "zstd", bytes.Repeat([]byte{'A'}, cs-1)) }, "less than a cluster"},
		{"zstd garbage", "zstd", func(t *testing.T) []byte { return testimg.RandomBytes(2000, 111) }, "zstd"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path, plain := testimg.MakeQcow2(t, t.TempDir(), "img.qcow2", testimg.QcowImage{Size: 1 << 20,
				Options: "compression_type=" + tc.compression,
				Passes:  [][]W{{{Off: 0, Len: 3 * cs, Compressed: true, Seed: 112}}}})
			// Compressed descriptor with 64k clusters: offset in bits 0..53,
			// additional 512-byte sectors in bits 54..61.
			desc := fileU64(t, path, l2EntryOffset(t, path, 1))
			if desc&(1<<62) == 0 {
				t.Fatalf("cluster 1 is not compressed (descriptor %#x)", desc)
			}
			coff := int64(desc & (1<<54 - 1))
			room := (int64(desc>>54&0xff)+1)*512 - coff&511
			payload := tc.payload(t)
			if int64(len(payload)) > room {
				t.Fatalf("payload of %d bytes does not fit the %d bytes of the cluster", len(payload), room)
			}
			patch(t, path, coff, payload)

			img := openImage(t, path)
			buf := bytes.Repeat([]byte{0xee}, cs)
			n, err := img.ReadAt(buf, cs+10)
			if n != 0 || !errors.Is(err, blockdev.ErrCorrupt) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("ReadAt of the damaged cluster = %d, %v; want ErrCorrupt mentioning %q", n, err, tc.reason)
			}
			if !bytes.Equal(buf, make([]byte, cs)) {
				t.Fatal("buffer not zeroed after a failed read")
			}
			for _, off := range []int64{0, 2 * cs} {
				if _, err := img.ReadAt(buf, off); err != nil {
					t.Fatalf("ReadAt(%d): %v", off, err)
				}
				mustEqual(t, "undamaged cluster", buf, plain[off:off+cs])
			}
		})
	}
}
