package qcowio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

// recordingDevice records every read of the device below.
type recordingDevice struct {
	blockdev.Device
	mu    sync.Mutex
	reads [][2]int64 // offset, length
}

func (r *recordingDevice) ReadAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	r.reads = append(r.reads, [2]int64{off, int64(len(p))})
	r.mu.Unlock()
	return r.Device.ReadAt(p, off)
}

// take returns the reads recorded since the last take and forgets them.
func (r *recordingDevice) take() [][2]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reads
	r.reads = nil
	return out
}

// total returns the bytes and the number of reads.
func total(reads [][2]int64) (bytes, n int64) {
	for _, rd := range reads {
		bytes += rd[1]
	}
	return bytes, int64(len(reads))
}

// qcowTables parses, independently of the package, the cluster size, the L1
// table (offset and entries covering the disk) and the refcount table
// offset of a qcow2 image written by qemu.
type qcowTables struct {
	cs       int64
	l1Off    int64
	l1       []int64 // L2 table offset of each L1 entry (0: none)
	rtOff    int64
	luksOff  int64 // 0: unencrypted
	luksSize int64
}

func parseTables(t *testing.T, path string) qcowTables {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	q := qcowTables{cs: 1 << be.Uint32(b[20:]), l1Off: int64(be.Uint64(b[40:])), rtOff: int64(be.Uint64(b[48:]))}
	size := int64(be.Uint64(b[24:]))
	per := q.cs * (q.cs / 8)
	for i := range (size + per - 1) / per {
		q.l1 = append(q.l1, int64(be.Uint64(b[q.l1Off+8*i:])&0x00fffffffffffe00))
	}
	if be.Uint32(b[32:]) == cryptLUKS {
		ext := cryptoExtOffset(t, path)
		q.luksOff, q.luksSize = int64(be.Uint64(b[ext:])), int64(be.Uint64(b[ext+8:]))
	}
	return q
}

// tables returns the allocated L2 table offsets.
func (q qcowTables) tables() []int64 {
	var out []int64
	for _, off := range q.l1 {
		if off != 0 {
			out = append(out, off)
		}
	}
	return out
}

// isL2 reports whether a read touches an L2 table.
func (q qcowTables) touchesL2(rd [2]int64) (int64, bool) {
	for _, off := range q.l1 {
		if off != 0 && rd[0] < off+q.cs && off < rd[0]+rd[1] {
			return off, true
		}
	}
	return 0, false
}

// metadataOnly fails unless every read lies inside the header cluster, the
// L1 table or the LUKS header area.
func (q qcowTables) metadataOnly(t *testing.T, what string, reads [][2]int64) {
	t.Helper()
	allowed := [][2]int64{{0, q.cs}, {q.l1Off, 8 * int64(len(q.l1))}, {q.luksOff, q.luksSize}}
next:
	for _, rd := range reads {
		for _, a := range allowed {
			if a[1] > 0 && rd[0] >= a[0] && rd[0]+rd[1] <= a[0]+a[1] {
				continue next
			}
		}
		t.Fatalf("%s read %d bytes at %#x, outside the header cluster, the L1 table %#x (+%d) and the LUKS area %#x (+%d)",
			what, rd[1], rd[0], q.l1Off, 8*len(q.l1), q.luksOff, q.luksSize)
	}
}

// openDeferred opens dev with no walk budget: every L2 check is deferred.
func openDeferred(t *testing.T, dev blockdev.Device) *Image {
	t.Helper()
	img, err := open(dev, Policy{}, 0)
	if err != nil {
		t.Fatalf("Open with deferred L2 checks: %v", err)
	}
	t.Cleanup(func() { img.Close() })
	if info := img.Info(); !info.DeferredL2Checks || info.AllocatedBytes != -1 || !info.Safe {
		t.Fatalf("deferred Open: DeferredL2Checks %v AllocatedBytes %d Safe %v, want true -1 true",
			info.DeferredL2Checks, info.AllocatedBytes, info.Safe)
	}
	return img
}

// TestDeferredOpenReadsOnlyHeaderAndL1 proves that an image whose L2 tables
// exceed the walk budget is opened by reading only its header cluster, L1
// table and LUKS header; that a read of the first MiB then fetches only the
// L2 table it needs, each table is fetched once, and the image reads and
// maps exactly as in eager mode, as the plaintext and as qemu-img.
func TestDeferredOpenReadsOnlyHeaderAndL1(t *testing.T) {
	cases := []struct {
		name string
		spec testimg.QcowImage
	}{
		{"4k clusters with 21 L2 tables and zero and compressed clusters", testimg.QcowImage{Size: 48 << 20, Options: "cluster_size=4096", Passes: [][]W{
			{{Off: 0, Len: 40 << 20, Seed: 300}},
			{{Off: 5 << 20, Len: 64 << 10, Zero: true}, {Off: 44 << 20, Len: 64 << 10, Compressed: true, Seed: 301}},
		}}},
		{"qcow2+LUKS 4k clusters with 10 L2 tables", testimg.QcowImage{Size: 24 << 20, Options: "cluster_size=4096", Passphrase: testPass, Passes: [][]W{
			{{Off: 0, Len: 17 << 20, Seed: 302}, {Off: 22 << 20, Len: 4096, Seed: 303}},
		}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path, plain := testimg.MakeQcow2(t, t.TempDir(), "img.qcow2", tc.spec)
			q := parseTables(t, path)
			tables := q.tables()
			if len(tables) < 10 {
				t.Fatalf("vector has %d L2 tables, want many", len(tables))
			}

			// Eager: the walk fetches every table.
			eagerDev := &recordingDevice{Device: openFile(t, path)}
			eager, err := open(eagerDev, Policy{}, walkAll)
			if err != nil {
				t.Fatal(err)
			}
			defer eager.Close()
			eagerBytes, eagerReads := total(eagerDev.take())
			if eager.Info().DeferredL2Checks || eager.Info().AllocatedBytes <= 0 {
				t.Fatalf("eager Open: %+v", eager.Info())
			}

			dev := &recordingDevice{Device: openFile(t, path)}
			img := openDeferred(t, dev)
			openRec := dev.take()
			q.metadataOnly(t, "deferred Open", openRec)
			openBytes, openReads := total(openRec)
			if want := eagerBytes - int64(len(tables))*q.cs; openBytes != want {
				t.Fatalf("deferred Open read %d bytes, want %d (eager %d minus %d L2 tables)", openBytes, want, eagerBytes, len(tables))
			}
			t.Logf("Open: eager %d bytes in %d reads, deferred %d bytes in %d reads (%d L2 tables of %d bytes)",
				eagerBytes, eagerReads, openBytes, openReads, len(tables), q.cs)
			if tc.spec.Passphrase != "" {
				if err := img.Unlock([]byte(testPass), anySlot); err != nil {
					t.Fatal(err)
				}
				if err := eager.Unlock([]byte(testPass), anySlot); err != nil {
					t.Fatal(err)
				}
				q.metadataOnly(t, "Unlock", dev.take())
			}

			got := make([]byte, 1<<20)
			if _, err := img.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			mustEqual(t, "first MiB", got, plain[:1<<20])
			var l2 []int64
			for _, rd := range dev.take() {
				if off, ok := q.touchesL2(rd); ok {
					if rd[0] != off || rd[1] != q.cs {
						t.Fatalf("read %d bytes at %#x inside the L2 table at %#x", rd[1], rd[0], off)
					}
					l2 = append(l2, off)
				}
			}
			if !slices.Equal(l2, []int64{q.l1[0]}) {
				t.Fatalf("first MiB fetched the L2 tables %#x, want only L1[0]'s %#x", l2, q.l1[0])
			}

			checkAllReads(t, img, plain)
			mustEqual(t, "qemu-img convert -O raw vs plaintext", testimg.QemuRaw(t, path, tc.spec.Passphrase), plain)
			gotMap, eagerMap := dataRanges(t, img), dataRanges(t, eager)
			qemuMap := qemuDataRanges(testimg.QemuMapLUKS(t, path, tc.spec.Passphrase))
			if fmt.Sprint(gotMap) != fmt.Sprint(eagerMap) || fmt.Sprint(gotMap) != fmt.Sprint(qemuMap) {
				t.Fatalf("data ranges\ndeferred %v\n   eager %v\nqemu-img %v", gotMap, eagerMap, qemuMap)
			}
			// The cache kept every table: each was fetched (and checked) once.
			fetched := map[int64]int{q.l1[0]: 1}
			for _, rd := range dev.take() {
				if off, ok := q.touchesL2(rd); ok {
					fetched[off]++
				}
			}
			for _, off := range tables {
				if fetched[off] != 1 {
					t.Fatalf("L2 table at %#x fetched %d times, want once", off, fetched[off])
				}
			}

			// Inspect still walks every table.
			info, err := Inspect(dev, Policy{})
			if err != nil {
				t.Fatal(err)
			}
			inspectBytes, _ := total(dev.take())
			if inspectBytes != eagerBytes || info.DeferredL2Checks || !info.Safe || info.AllocatedBytes != eager.Info().AllocatedBytes {
				t.Fatalf("Inspect read %d bytes (eager Open %d), Info %+v, want AllocatedBytes %d", inspectBytes, eagerBytes, info, eager.Info().AllocatedBytes)
			}
		})
	}
}

// TestOpenWalkBudget proves the default Open walks a small image up front
// (as before deferred checks existed) and that the budget counts L2 table
// bytes: at the exact size of the tables Open walks, one byte less defers.
func TestOpenWalkBudget(t *testing.T) {
	t.Parallel()
	path, _ := testimg.MakeQcow2(t, t.TempDir(), "img.qcow2", testimg.QcowImage{Size: 40 << 20, Options: "cluster_size=4096", Passes: [][]W{everyL2(20)}})
	n := int64(len(parseTables(t, path).tables())) * 4096
	for _, tc := range []struct {
		budget   int64
		deferred bool
	}{{eagerWalkBytes, false}, {n, false}, {n - 1, true}} {
		img, err := open(openFile(t, path), Policy{}, tc.budget)
		if err != nil {
			t.Fatal(err)
		}
		if img.Info().DeferredL2Checks != tc.deferred || (img.Info().AllocatedBytes == -1) != tc.deferred {
			t.Fatalf("budget %d for %d bytes of L2 tables: DeferredL2Checks %v AllocatedBytes %d, want deferred %v",
				tc.budget, n, img.Info().DeferredL2Checks, img.Info().AllocatedBytes, tc.deferred)
		}
	}
	if img := openImage(t, path); img.Info().DeferredL2Checks {
		t.Fatal("Open deferred the checks of 80 KiB of L2 tables")
	}
}

// badTableBase makes a 6 MiB image with 4 KiB clusters and one data cluster
// in each of its three L2 tables (each maps 2 MiB).
func badTableBase(t *testing.T, dir, pass string) (string, []byte) {
	t.Helper()
	return testimg.MakeQcow2(t, dir, "base.qcow2", testimg.QcowImage{Size: 6 << 20, Options: "cluster_size=4096", Passphrase: pass,
		Passes: [][]W{{{Off: 0, Len: 8192, Seed: 310}, {Off: 2 << 20, Len: 4096, Seed: 311}, {Off: 4<<20 + 4096, Len: 4096, Seed: 312}}}})
}

// TestDeferredChecksRefuseBadTables patches one L2 table of a real image in
// each way that Open refuses, and proves that in deferred mode Open succeeds,
// every read and map query touching that table fails with exactly the error
// eager Open gives (and returns no byte), the table is fetched only once,
// and the other tables read and map correctly. Problems visible in the L1
// table are still refused by Open in deferred mode, with the same error.
func TestDeferredChecksRefuseBadTables(t *testing.T) {
	plainPath, plain := badTableBase(t, t.TempDir(), "")
	luksPath, luksPlain := badTableBase(t, t.TempDir(), testPass)

	const copied = uint64(1) << 63
	const compressed = uint64(1) << 62
	type layout = qcowTables
	// entry patches L2 entry 0 of the first table (guest cluster 0).
	entry := func(v func(q layout) uint64) func(t *testing.T, p string, q layout) {
		return func(t *testing.T, p string, q layout) { patch(t, p, q.l1[0], be64(v(q))) }
	}
	l1e := func(i int, v func(q layout) uint64) func(t *testing.T, p string, q layout) {
		return func(t *testing.T, p string, q layout) { patch(t, p, q.l1Off+8*int64(i), be64(v(q))) }
	}
	firstData := func(t *testing.T, p string) uint64 {
		return fileU64(t, p, parseTables(t, p).l1[0]) & l2OffsetMask
	}
	cases := []struct {
		name   string
		luks   bool
		l1     bool // an L1-level problem: deferred Open refuses it too
		patch  func(t *testing.T, p string, q layout)
		kind   error
		reason string
	}{
		{"data cluster is the L1 table", false, false, entry(func(q layout) uint64 { return uint64(q.l1Off) | copied }), blockdev.ErrCorrupt, "overlaps the L1 table"},
		{"data cluster is its own L2 table", false, false, entry(func(q layout) uint64 { return uint64(q.l1[0]) | copied }), blockdev.ErrCorrupt, "overlaps the L2 table"},
		{"data cluster is another L2 table", false, false, entry(func(q layout) uint64 { return uint64(q.l1[2]) | copied }), blockdev.ErrCorrupt, "overlaps the L2 table at"}, // the offset of L1[2]'s table, set below
		{"data cluster is the refcount table", false, false, entry(func(q layout) uint64 { return uint64(q.rtOff) | copied }), blockdev.ErrCorrupt, "overlaps the refcount table"},
		{"data cluster past EOF", false, false, entry(func(layout) uint64 { return 1<<40 | copied }), blockdev.ErrTruncated, "data cluster at 0x10000000000 past the end of the file"},
		{"compressed cluster inside the header", false, false, entry(func(layout) uint64 { return compressed | 512 }), blockdev.ErrCorrupt, "inside the header cluster"},
		{"compressed cluster past EOF", false, false, entry(func(layout) uint64 { return compressed | 1<<40 }), blockdev.ErrTruncated, "compressed cluster at 0x10000000000 past the end of the file"},
		{"compressed data on the L1 table", false, false, entry(func(q layout) uint64 { return compressed | uint64(q.l1Off) }), blockdev.ErrCorrupt, "compressed data at"},
		{"reserved descriptor bits", false, false, nil, blockdev.ErrCorrupt, "reserved bits set"},
		{"unaligned data cluster", false, false, nil, blockdev.ErrCorrupt, "not cluster aligned"},
		{"data cluster is the LUKS header", true, false, entry(func(q layout) uint64 { return uint64(q.luksOff) | copied }), blockdev.ErrCorrupt, "overlaps the LUKS header"},
		{"compressed cluster in an encrypted image", true, false, entry(func(layout) uint64 { return compressed | 1<<20 }), blockdev.ErrCorrupt, "compressed cluster in an encrypted image"},

		{"two L1 entries share one L2 table", false, true, l1e(1, func(q layout) uint64 { return uint64(q.l1[0]) | copied }), blockdev.ErrCorrupt, "used twice"},
		{"L2 table past EOF", false, true, l1e(0, func(layout) uint64 { return 1<<45 | copied }), blockdev.ErrTruncated, "outside the file"},
		{"L2 table is the L1 table", false, true, l1e(0, func(q layout) uint64 { return uint64(q.l1Off) | copied }), blockdev.ErrCorrupt, "L2 table at"},
		{"L2 table is the refcount table", false, true, l1e(0, func(q layout) uint64 { return uint64(q.rtOff) | copied }), blockdev.ErrCorrupt, "overlaps the refcount table"},
		{"L2 table not cluster aligned", false, true, l1e(1, func(q layout) uint64 { return uint64(q.l1[1]+512) | copied }), blockdev.ErrCorrupt, "not cluster aligned"},
		{"L2 table is the LUKS header", true, true, l1e(0, func(q layout) uint64 { return uint64(q.luksOff) | copied }), blockdev.ErrCorrupt, "overlaps the LUKS header"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			src, want := plainPath, plain
			if tc.luks {
				src, want = luksPath, luksPlain
			}
			p := filepath.Join(t.TempDir(), "bad.qcow2")
			testimg.CopyFile(t, src, p)
			q := parseTables(t, p)
			switch {
			case tc.patch != nil:
				tc.patch(t, p, q)
			case tc.name == "reserved descriptor bits":
				patch(t, p, q.l1[0], be64(firstData(t, p)|copied|1<<1))
			case tc.name == "unaligned data cluster":
				patch(t, p, q.l1[0], be64(firstData(t, p)+512|copied))
			}
			reason := tc.reason
			if tc.name == "data cluster is another L2 table" {
				reason = fmt.Sprintf("overlaps the L2 table at %#x", q.l1[2])
			}

			_, eagerErr := open(openFile(t, p), Policy{}, walkAll)
			if !errors.Is(eagerErr, ErrUnsafe) || !errors.Is(eagerErr, tc.kind) || !strings.Contains(eagerErr.Error(), reason) {
				t.Fatalf("eager Open error = %v\nwant ErrUnsafe and %v mentioning %q", eagerErr, tc.kind, reason)
			}
			if _, err := Open(openFile(t, p), Policy{}); err == nil || err.Error() != eagerErr.Error() {
				t.Fatalf("Open of a small image = %v, want the eager error", err)
			}
			if info, err := Inspect(openFile(t, p), Policy{}); err != nil || info.Safe || !strings.Contains(strings.Join(info.Reasons, "\n"), reason) {
				t.Fatalf("Inspect = %+v, %v; want a reason mentioning %q", info, err, reason)
			}

			dev := &countingDevice{Device: openFile(t, p), at: q.l1[0]}
			if tc.l1 {
				_, err := open(dev, Policy{}, 0)
				if err == nil || err.Error() != eagerErr.Error() {
					t.Fatalf("deferred Open error = %v\nwant the eager error %v", err, eagerErr)
				}
				return
			}
			img := openDeferred(t, dev)
			if tc.luks {
				if err := img.Unlock([]byte(testPass), anySlot); err != nil {
					t.Fatal(err)
				}
			}
			fails := func(what string, err error) {
				t.Helper()
				if err == nil || err.Error() != eagerErr.Error() || !errors.Is(err, ErrUnsafe) || !errors.Is(err, tc.kind) {
					t.Fatalf("%s: error %v\nwant the eager Open error %v", what, err, eagerErr)
				}
			}
			for _, r := range [][2]int64{{0, 4096}, {1<<20 + 7, 100}, {2<<20 - 100, 200}, {0, 6 << 20}} {
				buf := make([]byte, r[1])
				for j := range buf {
					buf[j] = 0xee
				}
				n, err := img.ReadAt(buf, r[0])
				fails(fmt.Sprintf("ReadAt(%d at %d)", r[1], r[0]), err)
				if n != 0 || slices.ContainsFunc(buf, func(b byte) bool { return b != 0 }) {
					t.Fatalf("failed ReadAt(%d at %d) returned %d bytes and left data in the buffer", r[1], r[0], n)
				}
			}
			_, err := img.NextData(0)
			fails("NextData(0)", err)
			_, err = img.NextHole(4096)
			fails("NextHole(4096)", err)
			if n := dev.readsAt.Load(); n != 1 {
				t.Fatalf("bad L2 table fetched %d times, want once (its verdict cached)", n)
			}
			// The other tables are good: their ranges read and map exactly.
			got := make([]byte, 4<<20)
			if _, err := img.ReadAt(got, 2<<20); err != nil {
				t.Fatalf("read of the good tables' range: %v", err)
			}
			mustEqual(t, "good tables", got, want[2<<20:])
			if d, err := img.NextData(2 << 20); err != nil || d != 2<<20 {
				t.Fatalf("NextData(2 MiB) = %d, %v", d, err)
			}
			if d, err := img.NextData(3 << 20); err != nil || d != 4<<20+4096 {
				t.Fatalf("NextData(3 MiB) = %d, %v", d, err)
			}
		})
	}
}

// TestDeferredRecheckAfterEviction proves that a table evicted from the
// cache is checked again when re-fetched, in both modes, so a source that
// serves other bytes the second time cannot slip a bad table past the
// checks.
func TestDeferredRecheckAfterEviction(t *testing.T) {
	t.Parallel()
	base, plain := badTableBase(t, t.TempDir(), "")
	for _, budget := range []int64{0, walkAll} {
		path := filepath.Join(t.TempDir(), "img.qcow2")
		testimg.CopyFile(t, base, path)
		q := parseTables(t, path)
		img, err := open(openFile(t, path), Policy{}, budget)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		got := make([]byte, 8192)
		if _, err := img.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		mustEqual(t, "first clusters", got, plain[:8192])
		img.l2cache = newLRU[l2Table](0, 1, 1)
		if _, err := img.ReadAt(got[:1], 2<<20); err != nil { // evicts table 0
			t.Fatal(err)
		}
		patch(t, path, q.l1[0], be64(uint64(q.l1Off)|1<<63))
		_, err = img.ReadAt(got, 0)
		if !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "overlaps the L1 table") {
			t.Fatalf("budget %d: read through a table changed after Open: %v, want the L1 overlap refused", budget, err)
		}
	}
}

// slowDevice adds a fixed latency to every read, as a remote source would.
type slowDevice struct {
	blockdev.Device
	latency time.Duration
}

func (s slowDevice) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(s.latency)
	return s.Device.ReadAt(p, off)
}

// TestDeferredOpenFigure measures what Open reads from an image whose L1
// table references many L2 tables, eager (every table walked) against
// deferred, and what the first reads then cost. The L2 tables are fully
// populated by zero writes over the whole disk (`qemu-io write -z`: each
// entry is a zero cluster, so the file holds little but the tables), with
// data written at the start and in the middle.
func TestDeferredOpenFigure(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		size    int64
		options string
	}{
		{"1 GiB disk with 4 KiB clusters", 1 << 30, "cluster_size=4096"},
		{"256 GiB disk with 64 KiB clusters", 256 << 30, "cluster_size=65536"},
	}
	const latency = time.Millisecond
	for _, tc := range cases {
		path := filepath.Join(t.TempDir(), "img.qcow2")
		testimg.QemuImg(t, "create", "-q", "-f", "qcow2", "-o", tc.options, path, fmt.Sprint(tc.size))
		io := []string{"-f", "qcow2", path}
		for off := int64(0); off < tc.size; off += 1 << 30 {
			io = append(io, "-c", fmt.Sprintf("write -q -z %d %d", off, int64(1<<30)))
		}
		mid := tc.size/2 + 12345
		io = append(io, "-c", "write -q -P 165 0 1M", "-c", fmt.Sprintf("write -q -P 90 %d 5000", mid))
		testimg.QemuIO(t, io...)
		q := parseTables(t, path)
		tables := int64(len(q.tables()))
		if tables != int64(len(q.l1)) {
			t.Fatalf("%d of %d L1 entries have an L2 table, want all", tables, len(q.l1))
		}

		measure := func(budget int64) (*Image, int64, int64, time.Duration) {
			dev := &recordingDevice{Device: slowDevice{openFile(t, path), latency}}
			start := time.Now()
			img, err := open(dev, Policy{}, budget)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { img.Close() })
			took := time.Since(start)
			b, n := total(dev.take())
			return img, b, n, took
		}
		eager, eagerBytes, eagerReads, eagerTook := measure(walkAll)
		def, defBytes, defReads, defTook := measure(eagerWalkBytes)
		lazy, lazyBytes, lazyReads, lazyTook := measure(0)
		if eager.Info().DeferredL2Checks || !lazy.Info().DeferredL2Checks {
			t.Fatal("modes not as asked")
		}
		if lazyBytes != eagerBytes-tables*q.cs || lazyBytes > q.cs+qcow2HeaderReadSize+8*int64(len(q.l1)) {
			t.Fatalf("deferred Open read %d bytes, eager %d, %d tables of %d", lazyBytes, eagerBytes, tables, q.cs)
		}

		dev := &recordingDevice{Device: openFile(t, path)}
		img := openDeferred(t, dev)
		dev.take()
		got := make([]byte, 1<<20)
		if _, err := img.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(got, func(b byte) bool { return b != 165 }) {
			t.Fatal("first MiB is not the pattern written")
		}
		firstBytes, firstReads := total(dev.take())
		if _, err := img.ReadAt(got[:5000], mid); err != nil || slices.ContainsFunc(got[:5000], func(b byte) bool { return b != 90 }) {
			t.Fatalf("read in the middle: %v", err)
		}
		midBytes, midReads := total(dev.take())
		if d, err := img.NextData(1 << 20); err != nil || d != mid&^(q.cs-1) {
			t.Fatalf("NextData(1 MiB) = %d, %v; want %d", d, err, mid&^(q.cs-1))
		}
		t.Logf("FIGURE deferred L2 checks, %s, %d L2 tables of %d bytes (%d bytes of L2 tables), %v per read: "+
			"Open eager %d bytes in %d reads (%v); Open default budget (%d bytes: deferred=%v) %d bytes in %d reads (%v); "+
			"Open deferred %d bytes in %d reads (%v); then first MiB %d bytes in %d reads, 5000 bytes mid-disk %d bytes in %d reads",
			tc.name, tables, q.cs, tables*q.cs, latency,
			eagerBytes, eagerReads, eagerTook.Round(time.Millisecond), eagerWalkBytes, def.Info().DeferredL2Checks, defBytes, defReads, defTook.Round(time.Millisecond),
			lazyBytes, lazyReads, lazyTook.Round(time.Millisecond), firstBytes, firstReads, midBytes, midReads)
	}
}

// TestDeferredConcurrentReads reads random ranges of a deferred image with
// one bad L2 table from many goroutines, with a one-table cache that
// churns: every range touching the bad table fails, every other range is
// exact, and the bad table is fetched once.
func TestDeferredConcurrentReads(t *testing.T) {
	t.Parallel()
	base, plain := badTableBase(t, t.TempDir(), "")
	path := filepath.Join(t.TempDir(), "bad.qcow2")
	testimg.CopyFile(t, base, path)
	q := parseTables(t, path)
	patch(t, path, q.l1[0], be64(uint64(q.l1Off)|1<<63))
	dev := &countingDevice{Device: openFile(t, path), at: q.l1[0]}
	img := openDeferred(t, dev)
	img.l2cache = newLRU[l2Table](0, 1, 1)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 2))
			buf := make([]byte, 300<<10)
			for range 100 {
				n := 1 + r.IntN(len(buf))
				off := r.IntN(6<<20 - n)
				_, err := img.ReadAt(buf[:n], int64(off))
				if off < 2<<20 {
					if !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "overlaps the L1 table") {
						errs <- fmt.Errorf("read of %d at %d touching the bad table: %v", n, off, err)
						return
					}
					continue
				}
				if err != nil || string(buf[:n]) != string(plain[off:off+n]) {
					errs <- fmt.Errorf("read of %d at %d: %v or wrong bytes", n, off, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := dev.readsAt.Load(); n != 1 {
		t.Fatalf("bad L2 table fetched %d times, want once", n)
	}
}
