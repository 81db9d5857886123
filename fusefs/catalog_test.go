package fusefs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/imgfs/imgfs/tests/testimg"
)

func TestEscapeName(t *testing.T) {
	for in, want := range map[string]string{
		"debian-12":         "debian-12",
		"":                  "%unnamed",
		"a/b":               "a%2Fb",
		".hidden":           "%2Ehidden",
		"..":                "%2E.",
		"50%":               "50%25",
		"tab\there":         "tab%09here",
		"nul\x00x":          "nul%00x",
		"del\x7f":           "del%7F",
		"bad\xffutf8":       "bad%FFutf8",
		"c1\u0085":          "c1%C2%85",
		"ünïcode ✓":         "ünïcode ✓",
		"dot.inside.ok":     "dot.inside.ok",
		"trailing.":         "trailing.",
		"new\nline":         "new%0Aline",
		"x~12345678":        "x~12345678",
		"with space 1.qcow": "with space 1.qcow",
	} {
		if got := EscapeName(in); got != want {
			t.Errorf("EscapeName(%q) = %q, want %q", in, got, want)
		}
	}
	long := EscapeName(strings.Repeat("a", 1000))
	if len(long) > 255 || !strings.HasSuffix(long, "%...") {
		t.Errorf("a 1000-byte name escapes to %d bytes: %q", len(long), long)
	}
}

// fakeCatalog is a catalog of in-memory images that counts list calls,
// opens and closes.
type fakeCatalog struct {
	entries       []CatalogEntry
	disks         map[string][]byte
	failing       map[string]error
	lists         atomic.Int64
	opens, closes atomic.Int64
	openNow, peak atomic.Int64
	mu            sync.Mutex
	closedKeys    []string
}

func (f *fakeCatalog) options() CatalogOptions {
	return CatalogOptions{
		List: func(context.Context) ([]CatalogEntry, int, error) {
			f.lists.Add(1)
			return append([]CatalogEntry(nil), f.entries...), 1, nil
		},
		Open: func(_ context.Context, id string) (*CatalogImage, error) {
			if err := f.failing[id]; err != nil {
				return nil, err
			}
			f.opens.Add(1)
			n := f.openNow.Add(1)
			for p := f.peak.Load(); n > p && !f.peak.CompareAndSwap(p, n); p = f.peak.Load() {
			}
			dev := &memDev{data: f.disks[id]}
			return &CatalogImage{
				Files: Options{Disk: dev, ImageJSON: []byte(`{"id":"` + id + `"}`),
					Extra: []File{{Name: "disk.p1", Dev: bytes.NewReader(f.disks[id][:512])}}},
				Close: func() error {
					f.closes.Add(1)
					f.openNow.Add(-1)
					f.mu.Lock()
					f.closedKeys = append(f.closedKeys, id)
					f.mu.Unlock()
					return nil
				},
				Fetched: func() int64 { return dev.reads.Load() },
			}, nil
		},
		TTL:     time.Hour,
		MaxOpen: 3,
	}
}

func newFakeCatalog(n int) *fakeCatalog {
	f := &fakeCatalog{disks: map[string][]byte{}, failing: map[string]error{}}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		id := fmt.Sprintf("%08x-0000-4000-8000-%012x", i+1, i+1)
		name := fmt.Sprintf("img-%d", i)
		switch i {
		case 1, 2: // the same name twice: the older keeps it
			name = "dup"
		case 3:
			name = "../etc/passwd"
		case 4:
			name = ".hidden"
		}
		f.entries = append(f.entries, CatalogEntry{ID: id, Name: name, Created: t0.Add(time.Duration(i) * time.Minute),
			Meta: []byte(`{"glance":"` + id + `"}`)})
		f.disks[id] = testimg.RandomBytes(64<<10, uint64(i+1))
	}
	return f
}

func readCatalogJSON(t *testing.T, dir string) CatalogCounters {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, CatalogJSONName))
	if err != nil {
		t.Fatal(err)
	}
	var c CatalogCounters
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("catalog.json: %v\n%s", err, b)
	}
	return c
}

// A catalog mount of in-memory images through real FUSE: listing opens
// nothing, by-name links tell duplicates apart and escape names, an image
// opens when its directory is looked into, at most MaxOpen are open (the
// least recently used idle one is closed), an open file keeps its image
// open, an image that fails to open shows error.txt, and unmounting
// closes every image and leaves no goroutine or file descriptor behind.
func TestCatalogMountOfFakeImages(t *testing.T) {
	testimg.Need(t, "fusermount3")
	f := newFakeCatalog(10)
	bad := f.entries[9].ID
	f.failing[bad] = errors.New("barbican secret 42: access denied (HTTP 403)")
	var logBuf bytes.Buffer
	var logMu sync.Mutex
	opts := f.options()
	opts.BusyWait = 300 * time.Millisecond
	opts.Logger = log.New(&lockedWriter{w: &logBuf, mu: &logMu}, "", 0)

	mount := func() (string, *Server) {
		dir := t.TempDir()
		s, err := MountCatalog(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		return dir, s
	}
	unmount := func(s *Server) {
		if err := s.Unmount(); err != nil {
			t.Fatal(err)
		}
		s.Wait()
	}
	// warm-up: lazily started runtime and go-fuse goroutines
	dir, s := mount()
	os.ReadFile(filepath.Join(dir, f.entries[0].ID, DiskName))
	unmount(s)
	f.opens.Store(0)
	f.closes.Store(0)
	f.lists.Store(0)
	fds, gs := countFDs(t), settledGoroutines(0)

	dir, s = mount()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 12 || ents[0].Name() != f.entries[0].ID && ents[0].Name() != ByNameDir {
		t.Fatalf("root has %d entries, want 10 images + by-name + catalog.json", len(ents))
	}
	for _, e := range ents { // ls -l: stat every entry
		if _, err := os.Lstat(filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	links, err := os.ReadDir(filepath.Join(dir, ByNameDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Name())
	}
	want := "%2E.%2Fetc%2Fpasswd %2Ehidden dup dup~00000003 img-0 img-5 img-6 img-7 img-8 img-9"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("by-name: %s\nwant     %s", got, want)
	}
	if tgt, err := os.Readlink(filepath.Join(dir, ByNameDir, "dup")); err != nil || tgt != "../"+f.entries[1].ID {
		t.Fatalf("by-name/dup -> %q (%v), want the older image %s", tgt, err, f.entries[1].ID)
	}
	if st := readCatalogJSON(t, dir); st.Opens != 0 || f.opens.Load() != 0 || f.lists.Load() != 1 || st.ListCalls != 1 {
		t.Fatalf("listing opened images or listed more than once: %+v, fake lists %d opens %d", st, f.lists.Load(), f.opens.Load())
	}

	// read every disk through by-name: at most 3 open at once
	for i, e := range f.entries[:9] {
		got, err := os.ReadFile(filepath.Join(dir, e.ID, DiskName))
		if err != nil || !bytes.Equal(got, f.disks[e.ID]) {
			t.Fatalf("image %d: disk: %v or bytes differ", i, err)
		}
	}
	if p := f.peak.Load(); p > 3 {
		t.Fatalf("%d images open at once, want at most 3", p)
	}
	st := readCatalogJSON(t, dir)
	if st.MaxOpenSeen > 3 || st.Opens != 9 || st.Closes != 6 || st.Evictions != 6 || st.OpenNow != 3 {
		t.Fatalf("counters after reading 9 disks with 3 open at most: %+v", st)
	}
	if _, err := os.Stat(filepath.Join(dir, f.entries[0].ID, "disk.p1")); err != nil {
		t.Fatalf("a closed image's files are still listed: %v", err)
	}

	// open files pin their images: with 3 held open, a 4th image is EBUSY
	var held []*os.File
	for _, e := range f.entries[:3] {
		h, err := os.Open(filepath.Join(dir, e.ID, DiskName))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, h)
	}
	if _, err := os.ReadFile(filepath.Join(dir, f.entries[5].ID, DiskName)); err == nil {
		t.Fatal("a 4th image opened while 3 were held open with max 3")
	}
	for i, h := range held {
		buf := make([]byte, 4096)
		if _, err := h.ReadAt(buf, 8192); err != nil || !bytes.Equal(buf, f.disks[f.entries[i].ID][8192:][:4096]) {
			t.Fatalf("held image %d: %v or bytes differ", i, err)
		}
		h.Close()
	}
	if got, err := os.ReadFile(filepath.Join(dir, f.entries[5].ID, DiskName)); err != nil || !bytes.Equal(got, f.disks[f.entries[5].ID]) {
		t.Fatalf("after the handles closed, image 5: %v", err)
	}

	// the image that cannot be opened shows error.txt and its metadata only
	badDir := filepath.Join(dir, bad)
	files, err := os.ReadDir(badDir)
	if err != nil || len(files) != 2 || files[0].Name() != ErrorName || files[1].Name() != ImageJSONName {
		t.Fatalf("failing image's directory: %v %v", files, err)
	}
	msg, _ := os.ReadFile(filepath.Join(badDir, ErrorName))
	if !strings.Contains(string(msg), "403") || !strings.Contains(string(msg), bad) {
		t.Fatalf("error.txt: %q", msg)
	}
	if _, err := os.Stat(filepath.Join(badDir, DiskName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("failing image has a disk: %v", err)
	}

	unmount(s)
	if o, c := f.opens.Load(), f.closes.Load(); o != c || o == 0 {
		t.Fatalf("after unmount: %d opens, %d closes", o, c)
	}
	if g := settledGoroutines(gs); g > gs {
		buf := make([]byte, 1<<16)
		t.Fatalf("goroutines: %d before the mount, %d after unmount\n%s", gs, g, buf[:runtime.Stack(buf, true)])
	}
	if n := countFDs(t); n > fds {
		t.Fatalf("file descriptors: %d before the mount, %d after unmount", fds, n)
	}
}

// With IdleTimeout, an image with no open file is closed after that long.
func TestCatalogIdleImagesClosed(t *testing.T) {
	testimg.Need(t, "fusermount3")
	f := newFakeCatalog(3)
	opts := f.options()
	opts.IdleTimeout = 200 * time.Millisecond
	opts.Logger = log.New(&bytes.Buffer{}, "", 0)
	dir := t.TempDir()
	s, err := MountCatalog(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Unmount(); s.Wait() }()
	h, err := os.Open(filepath.Join(dir, f.entries[0].ID, DiskName))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(filepath.Join(dir, f.entries[1].ID, DiskName)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.closes.Load() < 1 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(400 * time.Millisecond)
	if c := f.closes.Load(); c != 1 {
		t.Fatalf("%d images closed for idleness, want 1 (the one with no open file)", c)
	}
	h.Close()
	for f.closes.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if st := readCatalogJSON(t, dir); st.OpenNow != 0 || st.IdleCloses != 2 {
		t.Fatalf("after the last file closed: %+v", st)
	}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// settledGoroutines waits up to 10 s for the goroutine count to drop to
// want (or, for want 0, to stay the same for 300 ms) and returns it.
func settledGoroutines(want int) int {
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

// Readers of many images at once, more than MaxOpen: an open waits for a
// slot, every read has the right bytes, the fake never has more than
// MaxOpen images open, and unmount closes them all.
func TestCatalogConcurrentReaders(t *testing.T) {
	testimg.Need(t, "fusermount3")
	f := newFakeCatalog(8)
	opts := f.options()
	opts.Logger = log.New(&bytes.Buffer{}, "", 0)
	dir := t.TempDir()
	s, err := MountCatalog(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var served, busy atomic.Int64
	errs := make(chan error, 8)
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 15 {
				e := f.entries[(w*5+i*3)%len(f.entries)]
				got, err := os.ReadFile(filepath.Join(dir, e.ID, DiskName))
				switch {
				case errors.Is(err, syscall.EBUSY):
					busy.Add(1)
				case err != nil:
					errs <- err
					return
				case !bytes.Equal(got, f.disks[e.ID]):
					errs <- fmt.Errorf("image %s: bytes differ", e.ID)
					return
				default:
					served.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if p := f.peak.Load(); p > 3 {
		t.Errorf("%d images open at once, want at most 3", p)
	}
	if err := s.Unmount(); err != nil {
		t.Fatal(err)
	}
	s.Wait()
	if o, c := f.opens.Load(), f.closes.Load(); o != c {
		t.Fatalf("after unmount: %d opens, %d closes", o, c)
	}
	t.Logf("%d reads served, %d refused with EBUSY, %d opens", served.Load(), busy.Load(), f.opens.Load())
	if served.Load() != 90 {
		t.Fatalf("%d of 90 reads served, %d refused with EBUSY: opens did not wait for a slot", served.Load(), busy.Load())
	}
}

// The listing is used for TTL, then listed again: an image added shows up,
// a removed one goes, and within the TTL no list call is made.
func TestCatalogListingTTL(t *testing.T) {
	testimg.Need(t, "fusermount3")
	f := newFakeCatalog(4)
	var mu sync.Mutex
	entries := f.entries[:3]
	opts := f.options()
	opts.List = func(context.Context) ([]CatalogEntry, int, error) {
		f.lists.Add(1)
		mu.Lock()
		defer mu.Unlock()
		return append([]CatalogEntry(nil), entries...), 2, nil
	}
	opts.TTL = 500 * time.Millisecond
	opts.Logger = log.New(&bytes.Buffer{}, "", 0)
	dir := t.TempDir()
	s, err := MountCatalog(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Unmount(); s.Wait() }()
	ids := func() string {
		t.Helper()
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range ents {
			if strings.Contains(e.Name(), "-4000-") {
				out = append(out, e.Name()[:8])
			}
		}
		return strings.Join(out, " ")
	}
	start := time.Now()
	first := ids()
	second := ids()
	if first != "00000001 00000002 00000003" || second != first {
		t.Fatalf("listings: %q then %q", first, second)
	}
	if n := f.lists.Load(); n != 1 && time.Since(start) < opts.TTL {
		t.Fatalf("%d list calls within the TTL, want 1", n)
	}
	mu.Lock()
	entries = append([]CatalogEntry{f.entries[3]}, f.entries[1:3]...)
	mu.Unlock()
	time.Sleep(opts.TTL + 100*time.Millisecond)
	if got := ids(); got != "00000002 00000003 00000004" {
		t.Fatalf("after the TTL: %q, want image 1 gone and image 4 listed", got)
	}
	if _, err := os.Stat(filepath.Join(dir, f.entries[3].ID, DiskName)); err != nil {
		t.Fatalf("the new image: %v", err)
	}
	if st := readCatalogJSON(t, dir); st.Listings < 2 || st.ListCalls != 2*st.Listings {
		t.Fatalf("counters: %+v", st)
	}
}
