package qcowio

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/tests/testimg"
)

// fuzzSeeds are small real images: 4k clusters keep them a few clusters long.
var fuzzSeeds = []testimg.QcowImage{
	{Size: 1 << 20, Options: "cluster_size=4096", Passes: [][]W{{{Off: 8192, Len: 4096, Seed: 1}, {Off: 512 << 10, Len: 100, Seed: 2}}, {{Off: 4096, Len: 4096, Zero: true}}}},
	{Size: 1 << 20, Options: "cluster_size=4096,compat=0.10", Passes: [][]W{{{Off: 0, Len: 4096, Seed: 3}}}},
	{Size: 1 << 20, Options: "cluster_size=4096,compression_type=zstd", Passes: [][]W{{{Off: 0, Len: 8192, Compressed: true, Seed: 4}}}},
	{Size: 1 << 20, Options: "cluster_size=4096", Passes: [][]W{{{Off: 4096, Len: 8192, Compressed: true, Seed: 5}}}},
	{Size: 1 << 20, Options: "cluster_size=16384,extended_l2=on", Passes: [][]W{{{Off: 1024, Len: 2048, Seed: 6}}}},
	{Size: 4 << 20, Options: "cluster_size=4096", Passes: [][]W{{{Off: 0, Len: 4096, Seed: 7}, {Off: 2<<20 + 4096, Len: 4096, Seed: 8}}}},
}

// FuzzQcow2 feeds arbitrary bytes through Inspect, Open, reads and the data
// map: nothing may panic, Inspect's verdict must agree with Open, and reads
// of an encrypted image without a key must fail with luksio.ErrKeyRequired. Each
// input is also opened with every L2 check deferred (checkDeferred): it
// must never serve what the eager checks refuse.
func FuzzQcow2(f *testing.F) {
	// testdata/fuzz/FuzzQcow2 holds images made by qemu-img; more are made
	// here for plain test runs (fuzz workers re-run this function, and
	// running qemu-img in each of them stalls the fuzzer).
	if fl := flag.Lookup("test.fuzz"); fl == nil || fl.Value.String() == "" {
		dir := f.TempDir()
		for _, spec := range fuzzSeeds {
			path, _ := testimg.MakeQcow2(f, dir, "seed.qcow2", spec)
			b, err := os.ReadFile(path)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(fuzzQcow2)
}

// fuzzQcow2 is the body of FuzzQcow2.
func fuzzQcow2(t *testing.T, data []byte) {
	{
		dev := bytes.NewReader(data)
		pol := Policy{AllowDirty: true}
		info, err := Inspect(dev, pol)
		if err != nil {
			if _, err2 := Open(dev, pol); err2 == nil {
				t.Fatalf("Inspect failed (%v) but Open succeeded", err)
			}
			if _, err2 := open(dev, pol, 0); err2 == nil {
				t.Fatalf("Inspect failed (%v) but Open with deferred L2 checks succeeded", err)
			}
			return
		}
		img, err := Open(dev, pol)
		if (err == nil) != info.Safe {
			t.Fatalf("Inspect Safe=%v (%q) but Open error %v", info.Safe, info.Reasons, err)
		}
		checkDeferred(t, dev, info, img)
		if err != nil {
			return
		}
		defer img.Close()
		buf := make([]byte, 64<<10)
		for off := int64(0); off < min(img.Size(), 1<<20); off += int64(len(buf)) - 1000 {
			_, err := img.ReadAt(buf, off)
			if img.Encrypted() && !errors.Is(err, luksio.ErrKeyRequired) {
				t.Fatalf("read of an encrypted image without a key: %v", err)
			}
		}
		off := int64(0)
		for range 1000 {
			d, err := img.NextData(off)
			if err != nil || d >= img.Size() {
				if err != nil && !errors.Is(err, io.EOF) && d != 0 {
					t.Fatalf("NextData error %v with offset %d", err, d)
				}
				break
			}
			if d < off {
				t.Fatalf("NextData(%d) = %d went backwards", off, d)
			}
			h, err := img.NextHole(d)
			if err != nil {
				break
			}
			if h <= d {
				t.Fatalf("NextHole(%d) = %d, want > %d", d, h, d)
			}
			off = h
		}
	}
}

// errSkip marks a query checkDeferred cannot make.
var errSkip = errors.New("skipped")

// perTableReason matches a reason of checkL2 and captures the cluster.
var perTableReason = regexp.MustCompile(`^cluster (\d+) \(L2 table 0x[0-9a-f]+ entry \d+\): `)

// checkDeferred opens dev with every L2 check deferred and proves it never
// serves what eager mode refuses: info is Inspect's verdict and eager the
// image Open returned (nil if it refused).
//   - Deferred Open refuses only what the header and L1 show: its reasons
//     are the first reasons of the eager verdict, and every eager reason it
//     does not give is a per-table reason.
//   - Each table an eager reason names fails, in deferred mode, every map
//     query (and, without encryption, every read) that touches it, with an
//     error wrapping ErrUnsafe that gives that reason.
//   - An image eager Open accepts reads and maps the same in both modes.
func checkDeferred(t *testing.T, dev *bytes.Reader, info *Info, eager *Image) {
	t.Helper()
	pol := Policy{AllowDirty: true}
	lazy, v, err := inspect(dev, pol, 0)
	if err != nil {
		t.Fatalf("Inspect succeeded but the deferred inspection failed: %v", err)
	}
	lazyReasons := v.messages()
	if len(lazyReasons) > len(info.Reasons) || !slices.Equal(lazyReasons, info.Reasons[:len(lazyReasons)]) {
		t.Fatalf("deferred Open reasons %q are not the first eager reasons %q", lazyReasons, info.Reasons)
	}
	if len(lazyReasons) > 0 {
		if eager != nil {
			t.Fatalf("deferred Open refuses (%q) what eager Open accepts", lazyReasons)
		}
		return
	}
	lazy.checkFetches = true // as open does once the verdict is clean
	defer lazy.Close()
	for _, r := range info.Reasons {
		if r == "more problems not listed" {
			continue
		}
		m := perTableReason.FindStringSubmatch(r)
		if m == nil {
			t.Fatalf("deferred Open accepted an image eager Open refuses for %q, not an L2 table problem", r)
		}
		ci, _ := strconv.ParseUint(m[1], 10, 64)
		off := int64(ci) << lazy.clusterBits
		for _, q := range []func() error{
			func() error { _, err := lazy.NextData(off); return err },
			func() error { _, err := lazy.NextHole(off); return err },
			func() error {
				if lazy.Encrypted() {
					return errSkip // reads fail for want of a key
				}
				b := []byte{0xee}
				n, err := lazy.ReadAt(b, off)
				if n != 0 || b[0] != 0 {
					t.Fatalf("deferred read of a refused table returned %d bytes (%#x)", n, b[0])
				}
				return err
			},
		} {
			if err := q(); err != errSkip && (!errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), r)) {
				t.Fatalf("deferred mode at %d (cluster %d) = %v, want the eager reason %q", off, ci, err, r)
			}
		}
	}
	if eager == nil {
		return
	}
	for off := int64(0); off < min(lazy.Size(), 1<<20); off += 7000 {
		a, b := make([]byte, 9000), make([]byte, 9000)
		na, erra := eager.ReadAt(a, off)
		nb, errb := lazy.ReadAt(b, off)
		if na != nb || (erra == nil) != (errb == nil) || !bytes.Equal(a, b) {
			t.Fatalf("read at %d: eager %d bytes, %v; deferred %d bytes, %v (same bytes: %v)", off, na, erra, nb, errb, bytes.Equal(a, b))
		}
	}
	for off := int64(0); off < min(lazy.Size(), 1<<20); off += 3000 {
		for _, data := range []bool{true, false} {
			a, erra := eager.next(off, data)
			b, errb := lazy.next(off, data)
			if a != b || (erra == nil) != (errb == nil) {
				t.Fatalf("next(%d, data %v): eager %d, %v; deferred %d, %v", off, data, a, erra, b, errb)
			}
		}
	}
}
