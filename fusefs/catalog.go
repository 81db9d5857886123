package fusefs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/imgfs/imgfs/blockdev"
)

// Names in a catalog mount.
const (
	// CatalogJSONName is the catalog's live counters (catalog.json).
	CatalogJSONName = "catalog.json"
	// ByNameDir holds one symlink per image name, to ../<image-id>.
	ByNameDir = "by-name"
	// ErrorName is the file an image that cannot be opened shows instead
	// of its disk: the reason.
	ErrorName = "error.txt"
)

// Defaults of CatalogOptions.
const (
	DefaultCatalogTTL = time.Minute
	DefaultMaxOpen    = 16
	DefaultBusyWait   = 5 * time.Second
	// MaxMaxOpen bounds CatalogOptions.MaxOpen.
	MaxMaxOpen = 1024
)

// maxNameBytes is the longest by-name entry before the id suffix (names
// are at most 255 bytes on Linux).
const maxNameBytes = 200

// CatalogEntry is one image of a catalog listing.
type CatalogEntry struct {
	// ID names the image's directory; it must be a valid file name.
	ID string
	// Name is the image's name, escaped for by-name.
	Name string
	// Created orders images of the same name: the oldest keeps the plain
	// name in by-name, the others get name~<short id>.
	Created time.Time
	// Meta is image.json of an image that cannot be opened (the listing's
	// metadata); nil for none. It must hold no key material.
	Meta []byte
}

// CatalogImage is an opened image of a catalog.
type CatalogImage struct {
	// Files are the image's files, as Mount shows them for one image
	// (Disk is required; mount-wide fields are ignored).
	Files Options
	// Close releases the image (and zeroes its keys). It is called once,
	// when no file of the image is open.
	Close func() error
	// Fetched, if set, says how many bytes the image's source has fetched.
	Fetched func() int64
}

// CatalogOptions say what a catalog mount shows and how.
type CatalogOptions struct {
	// List lists the images (no image data: metadata only) and says how
	// many calls to the image service that took. Required.
	List func(ctx context.Context) (entries []CatalogEntry, calls int, err error)
	// Open opens an image the first time its directory is looked into, or
	// again after it was closed. An error is shown as the image's
	// error.txt. Required.
	Open func(ctx context.Context, id string) (*CatalogImage, error)
	// TTL is how long a listing is used before List is called again, and
	// how long the kernel trusts names (0 = DefaultCatalogTTL).
	TTL time.Duration
	// MaxOpen is how many images may be open at once (0 =
	// DefaultMaxOpen); to open one more, the least recently used image with
	// no open file is closed. When every open image has open files, the
	// open waits up to BusyWait (0 = DefaultBusyWait) for one to be
	// closed, then fails with EBUSY.
	MaxOpen  int
	BusyWait time.Duration
	// IdleTimeout, if positive, closes an image that has had no open file
	// and no lookup for that long (its keys then leave memory).
	IdleTimeout time.Duration
	// Info adds fields to catalog.json (the cloud, the filters...).
	Info map[string]any
	// AllowOther, Debug, FsName and Logger are as in Options.
	AllowOther bool
	Debug      bool
	FsName     string
	Logger     *log.Logger
}

// CatalogCounters are a catalog mount's counters, as catalog.json shows
// them.
type CatalogCounters struct {
	// Listings is how many times the catalog was listed, ListCalls how
	// many image service calls that took.
	Listings  int64 `json:"listings"`
	ListCalls int64 `json:"list_calls"`
	Images    int   `json:"images"`
	// OpenNow counts images open or being opened or closed; MaxOpenSeen
	// is its highest value.
	OpenNow     int   `json:"open_now"`
	MaxOpenSeen int   `json:"max_open_seen"`
	Opens       int64 `json:"opens"`
	OpenErrors  int64 `json:"open_errors"`
	Closes      int64 `json:"closes"`
	Evictions   int64 `json:"evictions"`
	IdleCloses  int64 `json:"idle_closes"`
	Busy        int64 `json:"busy"`
	// BytesFetched is what every image's source fetched, also of images
	// since closed; Fetched gives it per image id.
	BytesFetched int64            `json:"bytes_fetched"`
	Fetched      map[string]int64 `json:"fetched,omitempty"`
}

// catalog is the state of a catalog mount.
type catalog struct {
	opts     CatalogOptions
	ctx      context.Context
	cancel   context.CancelFunc
	idleDone chan struct{}
	errs     *errorLog
	logger   *log.Logger
	uid, gid uint32
	fileMode uint32
	dirMode  uint32
	mtime    time.Time

	listMu sync.Mutex // one listing at a time

	mu      sync.Mutex
	listed  time.Time
	ids     []string          // listed image ids, sorted
	names   map[string]string // by-name entry -> id
	images  map[string]*catImage
	open    map[*catImage]struct{} // images with an opened image
	nextIno uint64
	closed  bool
	// wake is closed (and replaced) when a slot or an open image may have
	// become free.
	wake chan struct{}
	cnt  CatalogCounters
}

// MountCatalog mounts a catalog of images at dir: a directory per image id
// (its files as Mount shows them, opened when first looked into), by-name
// symlinks and catalog.json.
func MountCatalog(dir string, opts CatalogOptions) (*Server, error) {
	if opts.List == nil || opts.Open == nil {
		return nil, errors.New("fusefs: a catalog needs List and Open")
	}
	if opts.TTL <= 0 {
		opts.TTL = DefaultCatalogTTL
	}
	if opts.MaxOpen == 0 {
		opts.MaxOpen = DefaultMaxOpen
	}
	if opts.BusyWait <= 0 {
		opts.BusyWait = DefaultBusyWait
	}
	if opts.MaxOpen < 1 || opts.MaxOpen > MaxMaxOpen {
		return nil, fmt.Errorf("fusefs: at most %d images open at once is not within 1..%d", opts.MaxOpen, MaxMaxOpen)
	}
	abs, logger, err := prepareMount(dir, opts.AllowOther, opts.Logger)
	if err != nil {
		return nil, err
	}
	c := &catalog{opts: opts, logger: logger, errs: &errorLog{logger: logger},
		uid: uint32(os.Getuid()), gid: uint32(os.Getgid()), fileMode: 0o400, dirMode: 0o500, mtime: time.Now(),
		images: map[string]*catImage{}, open: map[*catImage]struct{}{}, names: map[string]string{},
		nextIno: catFirstIno, idleDone: make(chan struct{}), wake: make(chan struct{})}
	c.cnt.Fetched = map[string]int64{}
	if opts.AllowOther {
		c.fileMode, c.dirMode = 0o444, 0o555
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	// The first listing is made now, so that bad credentials or a filter
	// the image service refuses fail the mount, not a later ls.
	if err := c.refresh(); err != nil {
		c.cancel()
		return nil, err
	}
	root := &catRoot{c: c}
	server, err := fs.Mount(abs, root, fsOptions(opts.FsName, opts.AllowOther, opts.Debug, opts.TTL))
	if err != nil {
		c.cancel()
		return nil, fmt.Errorf("mount %s: %w", abs, explainMountError(err, opts.AllowOther))
	}
	raiseReadahead(abs)
	if opts.IdleTimeout > 0 {
		go c.closeIdle()
	} else {
		close(c.idleDone)
	}
	return &Server{dir: abs, server: server, errs: c.errs, catalog: c}, nil
}

// Inode numbers: 1 is the root; images, their by-name links and their
// files get numbers from catFirstIno on.
const (
	catJSONIno  = 2
	catByIno    = 3
	catFirstIno = 16
)

// ino returns a new inode number; c.mu is held.
func (c *catalog) ino() uint64 {
	c.nextIno++
	return c.nextIno
}

// counters returns a copy of the counters.
func (c *catalog) counters() CatalogCounters {
	c.mu.Lock()
	defer c.mu.Unlock()
	cnt := c.cnt
	cnt.Fetched = make(map[string]int64, len(c.cnt.Fetched))
	for id, n := range c.cnt.Fetched {
		cnt.Fetched[id] = n
	}
	for img := range c.open {
		if op := img.opened; op != nil && op.img.Fetched != nil {
			n := op.img.Fetched()
			cnt.Fetched[img.id] += n
			cnt.BytesFetched += n
		}
	}
	return cnt
}

// statsJSON is catalog.json: the counters, the options, and the process's
// goroutines and file descriptors (to watch for leaks).
func (c *catalog) statsJSON() []byte {
	v := map[string]any{}
	for k, x := range c.opts.Info {
		v[k] = x
	}
	cnt := c.counters()
	b, _ := json.Marshal(cnt)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	for k, x := range m {
		v[k] = x
	}
	v["ttl"] = c.opts.TTL.String()
	v["max_open"] = c.opts.MaxOpen
	if c.opts.IdleTimeout > 0 {
		v["idle_timeout"] = c.opts.IdleTimeout.String()
	}
	fds := -1
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		fds = len(ents)
	}
	v["process"] = map[string]int{"goroutines": runtime.NumGoroutine(), "fds": fds}
	out, _ := json.MarshalIndent(v, "", "  ")
	return append(out, '\n')
}

// refresh lists the catalog again when the listing is older than the TTL.
// A failed listing keeps the last one (and is logged); with none, it is an
// error.
func (c *catalog) refresh() error {
	c.listMu.Lock()
	defer c.listMu.Unlock()
	c.mu.Lock()
	fresh := !c.listed.IsZero() && time.Since(c.listed) < c.opts.TTL
	c.mu.Unlock()
	if fresh {
		return nil
	}
	entries, calls, err := c.opts.List(c.ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cnt.Listings++
	c.cnt.ListCalls += int64(calls)
	if err != nil {
		if c.listed.IsZero() {
			return err
		}
		c.listed = time.Now() // retry after the TTL, not at every lookup
		c.logger.Printf("imgfs: catalog: %v (showing the previous listing)", err)
		return nil
	}
	c.listed = time.Now()
	sort.Slice(entries, func(i, j int) bool {
		a, b := entries[i], entries[j]
		if !a.Created.Equal(b.Created) {
			return a.Created.Before(b.Created)
		}
		return a.ID < b.ID
	})
	listed := make(map[string]bool, len(entries))
	c.ids = c.ids[:0]
	c.names = make(map[string]string, len(entries))
	for _, e := range entries {
		if !validID(e.ID) || listed[e.ID] {
			c.logger.Printf("imgfs: catalog: image id %q is not a usable directory name (or listed twice): skipped", e.ID)
			continue
		}
		listed[e.ID] = true
		c.ids = append(c.ids, e.ID)
		img := c.images[e.ID]
		if img == nil {
			img = &catImage{c: c, id: e.ID, ino: c.ino(), linkIno: c.ino()}
			c.images[e.ID] = img
		}
		img.entry = e
		n := EscapeName(e.Name)
		if _, dup := c.names[n]; dup {
			n = uniqueName(n, e.ID, c.names)
		}
		c.names[n] = e.ID
	}
	sort.Strings(c.ids)
	for id, img := range c.images {
		if !listed[id] && img.opened == nil {
			delete(c.images, id) // gone from the listing; an open one goes when closed
		}
	}
	for id := range c.cnt.Fetched {
		if c.images[id] == nil {
			delete(c.cnt.Fetched, id) // bounded by the images known
		}
	}
	c.cnt.Images = len(c.ids)
	return nil
}

// validID reports whether id can be a directory name beside by-name and
// catalog.json.
func validID(id string) bool {
	return id != "" && len(id) <= 255 && EscapeName(id) == id && id != ByNameDir && id != CatalogJSONName
}

// uniqueName tells a duplicate name apart: name~<first 8 characters of the
// id>, else name~<id>.
func uniqueName(name, id string, taken map[string]string) string {
	short := id
	if len(short) > 8 {
		short = short[:8]
	}
	if n := name + "~" + short; taken[n] == "" {
		return n
	}
	return name + "~" + id
}

// EscapeName makes an image name a safe file name: '%', '/', control
// characters, bytes that are not UTF-8 and a leading '.' become %XX (so
// nothing is hidden, and ".." cannot occur); the empty name is "%unnamed".
// A long name is cut to 200 bytes, then marked with "%...".
func EscapeName(name string) string {
	if name == "" {
		return "%unnamed"
	}
	var b strings.Builder
	for i := 0; i < len(name); {
		r, size := utf8.DecodeRuneInString(name[i:])
		ch := name[i]
		switch {
		case r == utf8.RuneError && size <= 1,
			ch == '%', ch == '/', ch < 0x20, ch == 0x7f,
			ch == '.' && i == 0:
			fmt.Fprintf(&b, "%%%02X", ch)
			i++
			continue
		case r >= 0x80 && r < 0xa0: // C1 controls
			for _, x := range []byte(name[i : i+size]) {
				fmt.Fprintf(&b, "%%%02X", x)
			}
		default:
			b.WriteString(name[i : i+size])
		}
		i += size
		if b.Len() > maxNameBytes {
			b.WriteString("%...")
			break
		}
	}
	return b.String()
}

// wakeAll tells waiting opens that a slot or an image may be free; c.mu
// is held.
func (c *catalog) wakeAll() {
	close(c.wake)
	c.wake = make(chan struct{})
}

// reserve takes a slot for one more open image, closing the least recently
// used idle images while every slot is taken, and waiting up to BusyWait
// while every open image has open files.
func (c *catalog) reserve() error {
	var deadline <-chan time.Time
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return errors.New("the catalog is being unmounted")
		}
		if c.cnt.OpenNow < c.opts.MaxOpen {
			c.cnt.OpenNow++
			c.cnt.MaxOpenSeen = max(c.cnt.MaxOpenSeen, c.cnt.OpenNow)
			c.mu.Unlock()
			return nil
		}
		var victim *catImage
		for img := range c.open {
			if img.pins == 0 && (victim == nil || img.lastUsed.Before(victim.lastUsed)) {
				victim = img
			}
		}
		if victim == nil {
			if deadline == nil {
				t := time.NewTimer(c.opts.BusyWait)
				defer t.Stop()
				deadline = t.C
			}
			wake := c.wake
			c.mu.Unlock()
			select {
			case <-wake:
				continue
			case <-c.ctx.Done():
			case <-deadline:
			}
			c.mu.Lock()
			c.cnt.Busy++
			c.mu.Unlock()
			return errBusy
		}
		op := c.detach(victim)
		c.cnt.Evictions++
		c.mu.Unlock()
		c.release(victim.id, op)
	}
}

// errBusy means every open image has open files.
var errBusy = errors.New("every open image has open files")

// detach takes the opened image away from img; c.mu is held. The slot stays
// taken until release.
func (c *catalog) detach(img *catImage) *openImage {
	op := img.opened
	img.opened = nil
	delete(c.open, img)
	if !img.listed() {
		delete(c.images, img.id)
	}
	return op
}

// release closes a detached image and frees its slot.
func (c *catalog) release(id string, op *openImage) {
	var fetched int64
	if op.img.Fetched != nil {
		fetched = op.img.Fetched()
	}
	if err := op.img.Close(); err != nil {
		c.logger.Printf("imgfs: catalog: image %s: close: %v", id, err)
	}
	c.mu.Lock()
	c.cnt.OpenNow--
	c.wakeAll()
	c.cnt.Closes++
	c.cnt.Fetched[id] += fetched
	c.cnt.BytesFetched += fetched
	c.mu.Unlock()
}

// closeIdle closes images idle for longer than IdleTimeout, until unmount.
func (c *catalog) closeIdle() {
	defer close(c.idleDone)
	tick := time.NewTicker(max(c.opts.IdleTimeout/4, 50*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-tick.C:
		}
		type victim struct {
			id string
			op *openImage
		}
		var idle []victim
		c.mu.Lock()
		for img := range c.open {
			if img.pins == 0 && time.Since(img.lastUsed) > c.opts.IdleTimeout {
				idle = append(idle, victim{img.id, c.detach(img)})
				c.cnt.IdleCloses++
			}
		}
		c.mu.Unlock()
		for _, v := range idle {
			c.release(v.id, v.op)
		}
	}
}

// closeAll closes every image, once the mount is gone.
func (c *catalog) closeAll() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	<-c.idleDone
	for {
		c.mu.Lock()
		var img *catImage
		for i := range c.open {
			img = i
			break
		}
		if img == nil {
			c.mu.Unlock()
			return
		}
		op := c.detach(img)
		c.mu.Unlock()
		c.release(img.id, op)
	}
}

// openImage is an opened image with its files by name.
type openImage struct {
	img   *CatalogImage
	files map[string]fileSpec
}

// catImage is an image's directory.
type catImage struct {
	fs.Inode
	c       *catalog
	id      string
	ino     uint64
	linkIno uint64
	// openMu serializes opening the image.
	openMu sync.Mutex

	// Under c.mu:
	entry CatalogEntry
	// files is what the directory shows, known after the first open (or
	// the failure, then errAt is set); kept while the image is closed.
	files    []catFile
	errAt    time.Time
	opened   *openImage
	pins     int // open file handles
	lastUsed time.Time
}

// listed reports whether the image is in the current listing; c.mu is held.
func (img *catImage) listed() bool {
	i := sort.SearchStrings(img.c.ids, img.id)
	return i < len(img.c.ids) && img.c.ids[i] == img.id
}

// catFile describes one file of an image directory.
type catFile struct {
	name   string
	ino    uint64
	size   int64
	blocks uint64
	live   bool
	static []byte // error.txt, image.json of an image that cannot be opened
}

// ensureFiles returns the directory's files, opening the image the first
// time (and again after a failure older than the TTL).
func (img *catImage) ensureFiles() ([]catFile, syscall.Errno) {
	c := img.c
	img.openMu.Lock()
	defer img.openMu.Unlock()
	c.mu.Lock()
	if img.files != nil && (img.errAt.IsZero() || time.Since(img.errAt) < c.opts.TTL) {
		files := img.files
		img.lastUsed = time.Now()
		c.mu.Unlock()
		return files, 0
	}
	c.mu.Unlock()
	if _, errno := img.openLocked(); errno != 0 {
		return nil, errno
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return img.files, 0
}

// openLocked opens the image (img.openMu is held) and records its files, or
// the reason it cannot be opened. It returns nil and no error for an image
// that cannot be opened, and an errno when no slot is free.
func (img *catImage) openLocked() (*openImage, syscall.Errno) {
	c := img.c
	if err := c.reserve(); err != nil {
		c.logger.Printf("imgfs: catalog: image %s: not opened: %v (at most %d open at once)", img.id, err, c.opts.MaxOpen)
		return nil, syscall.EBUSY
	}
	ci, err := c.opts.Open(c.ctx, img.id)
	if err == nil && (ci == nil || ci.Close == nil) {
		err = errors.New("fusefs: Open returned no image or no Close")
	}
	var op *openImage
	var specs []fileSpec
	if err == nil {
		if specs, err = imageFiles(ci.Files); err == nil {
			op = &openImage{img: ci, files: make(map[string]fileSpec, len(specs))}
			for _, f := range specs {
				op.files[f.name] = f
			}
		} else {
			ci.Close()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.cnt.OpenNow--
		c.wakeAll()
		c.cnt.OpenErrors++
		img.errAt = time.Now()
		msg := []byte(fmt.Sprintf("image %s (%q) cannot be opened: %v\n", img.id, img.entry.Name, err))
		img.files = []catFile{{name: ErrorName, ino: img.fileIno(ErrorName), static: msg, size: int64(len(msg))}}
		if img.entry.Meta != nil {
			img.files = append(img.files, catFile{name: ImageJSONName, ino: img.fileIno(ImageJSONName), static: img.entry.Meta, size: int64(len(img.entry.Meta))})
		}
		c.logger.Printf("imgfs: catalog: %s", bytes.TrimSpace(msg))
		return nil, 0
	}
	c.cnt.Opens++
	img.opened, img.lastUsed = op, time.Now()
	c.open[img] = struct{}{}
	if img.files == nil || !img.errAt.IsZero() {
		img.errAt = time.Time{}
		img.files = make([]catFile, 0, len(specs))
		for _, f := range specs {
			cf := catFile{name: f.name, ino: img.fileIno(f.name), blocks: f.blocks, live: f.live != nil}
			if f.dev != nil {
				cf.size = f.dev.Size()
			}
			img.files = append(img.files, cf)
		}
	}
	return op, 0
}

// fileIno returns the inode number of the image's file name, the same
// after the image was closed and opened again; c.mu is held.
func (img *catImage) fileIno(name string) uint64 {
	for _, f := range img.files {
		if f.name == name {
			return f.ino
		}
	}
	return img.c.ino()
}

// acquire returns the opened image with a pin that keeps it open until
// unpin, opening it again if it was closed.
func (img *catImage) acquire() (*openImage, syscall.Errno) {
	c := img.c
	img.openMu.Lock()
	defer img.openMu.Unlock()
	c.mu.Lock()
	if op := img.opened; op != nil {
		img.pins++
		img.lastUsed = time.Now()
		c.mu.Unlock()
		return op, 0
	}
	c.mu.Unlock()
	op, errno := img.openLocked()
	if errno != 0 {
		return nil, errno
	}
	if op == nil {
		return nil, syscall.EIO // it failed this time: error.txt says why
	}
	c.mu.Lock()
	img.pins++
	c.mu.Unlock()
	return op, 0
}

// unpin ends a pin of acquire.
func (img *catImage) unpin() {
	img.c.mu.Lock()
	img.pins--
	img.lastUsed = time.Now()
	if img.pins == 0 {
		img.c.wakeAll()
	}
	img.c.mu.Unlock()
}

var (
	_ = (fs.NodeGetattrer)((*catImage)(nil))
	_ = (fs.NodeLookuper)((*catImage)(nil))
	_ = (fs.NodeReaddirer)((*catImage)(nil))
)

// Getattr reports a read-only directory; it does not open the image.
func (img *catImage) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	img.c.dirAttr(&out.Attr)
	return 0
}

// Lookup finds a file of the image, opening the image the first time.
func (img *catImage) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	files, errno := img.ensureFiles()
	if errno != 0 {
		return nil, errno
	}
	for _, f := range files {
		if f.name == name {
			n := &catFileNode{img: img, f: f}
			n.attr(&out.Attr)
			return img.NewInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: f.ino}), 0
		}
	}
	return nil, syscall.ENOENT
}

// Readdir lists the image's files, opening the image the first time.
func (img *catImage) Readdir(context.Context) (fs.DirStream, syscall.Errno) {
	files, errno := img.ensureFiles()
	if errno != 0 {
		return nil, errno
	}
	ents := make([]fuse.DirEntry, 0, len(files))
	for _, f := range files {
		ents = append(ents, fuse.DirEntry{Name: f.name, Mode: syscall.S_IFREG, Ino: f.ino})
	}
	return fs.NewListDirStream(ents), 0
}

// catFileNode is a file of an image directory. It holds no device: each
// open pins the opened image (opening it again if it was closed).
type catFileNode struct {
	fs.Inode
	img *catImage
	f   catFile
}

var (
	_ = (fs.NodeGetattrer)((*catFileNode)(nil))
	_ = (fs.NodeOpener)((*catFileNode)(nil))
	_ = (fs.NodeSetattrer)((*catFileNode)(nil))
)

func (n *catFileNode) attr(a *fuse.Attr) {
	c := n.img.c
	a.Mode = syscall.S_IFREG | c.fileMode
	a.Size = uint64(n.f.size)
	a.Blocks = n.f.blocks
	if n.f.static != nil {
		a.Blocks = (a.Size + 511) / 512
	}
	a.Blksize = preferredBlockSize
	a.Nlink = 1
	a.Owner = fuse.Owner{Uid: c.uid, Gid: c.gid}
	a.SetTimes(&c.mtime, &c.mtime, &c.mtime)
}

// Getattr reports the file's size from when the image was first opened;
// it does not open the image.
func (n *catFileNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.attr(&out.Attr)
	return 0
}

// Setattr refuses every change.
func (n *catFileNode) Setattr(context.Context, fs.FileHandle, *fuse.SetAttrIn, *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

// Open pins the opened image for the handle's life; a live file (stats)
// takes its snapshot and unpins at once.
func (n *catFileNode) Open(_ context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	if n.f.static != nil {
		return &catHandle{name: n.f.name, dev: bytes.NewReader(n.f.static), errs: n.img.c.errs}, fuse.FOPEN_KEEP_CACHE, 0
	}
	op, errno := n.img.acquire()
	if errno != 0 {
		return nil, 0, errno
	}
	spec, ok := op.files[n.f.name]
	if !ok {
		n.img.unpin()
		return nil, 0, syscall.ENOENT
	}
	if spec.live != nil {
		data := spec.live()
		n.img.unpin()
		return &catHandle{name: n.f.name, dev: bytes.NewReader(data), errs: n.img.c.errs}, fuse.FOPEN_DIRECT_IO, 0
	}
	h := &catHandle{img: n.img, name: n.f.name, dev: spec.dev, errs: n.img.c.errs}
	h.mapper, _ = spec.dev.(blockdev.Mapper)
	return h, fuse.FOPEN_KEEP_CACHE, 0
}

// catHandle is an open file of an image directory.
type catHandle struct {
	img    *catImage // nil: not pinned
	name   string
	dev    blockdev.Device
	mapper blockdev.Mapper
	errs   *errorLog
	once   sync.Once
}

var (
	_ = (fs.FileReader)((*catHandle)(nil))
	_ = (fs.FileLseeker)((*catHandle)(nil))
	_ = (fs.FileReleaser)((*catHandle)(nil))
)

// Read serves a read from the pinned image.
func (h *catHandle) Read(_ context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return readDevice(h.dev, h.name, h.errs, dest, off)
}

// Lseek answers SEEK_DATA and SEEK_HOLE.
func (h *catHandle) Lseek(_ context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	return seekDevice(h.dev, h.mapper, h.name, h.errs, off, whence)
}

// Release unpins the image: with no open file left it may be closed.
func (h *catHandle) Release(context.Context) syscall.Errno {
	h.once.Do(func() {
		if h.img != nil {
			h.img.unpin()
		}
	})
	return 0
}

func (c *catalog) dirAttr(a *fuse.Attr) {
	a.Mode = syscall.S_IFDIR | c.dirMode
	a.Nlink = 2
	a.Owner = fuse.Owner{Uid: c.uid, Gid: c.gid}
	a.SetTimes(&c.mtime, &c.mtime, &c.mtime)
}

// catRoot is the catalog's root: catalog.json, by-name and one directory
// per image id.
type catRoot struct {
	fs.Inode
	c *catalog
}

var (
	_ = (fs.NodeGetattrer)((*catRoot)(nil))
	_ = (fs.NodeLookuper)((*catRoot)(nil))
	_ = (fs.NodeReaddirer)((*catRoot)(nil))
	_ = (fs.NodeStatfser)((*catRoot)(nil))
)

// Getattr reports a read-only directory.
func (r *catRoot) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	r.c.dirAttr(&out.Attr)
	return 0
}

// Statfs reports a read-only file system with no free space.
func (r *catRoot) Statfs(_ context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize, out.Frsize, out.NameLen = 512, 512, 255
	return 0
}

// Lookup finds catalog.json, by-name or an image's directory (without
// opening the image).
func (r *catRoot) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	c := r.c
	switch name {
	case CatalogJSONName:
		n := &liveNode{content: c.statsJSON, mode: c.fileMode, uid: c.uid, gid: c.gid, mtime: c.mtime}
		var a fuse.AttrOut
		n.Getattr(ctx, nil, &a)
		out.Attr = a.Attr
		return r.NewInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: catJSONIno}), 0
	case ByNameDir:
		c.dirAttr(&out.Attr)
		return r.NewInode(ctx, &byNameDir{c: c}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: catByIno}), 0
	}
	if err := c.refresh(); err != nil {
		return nil, syscall.EIO
	}
	c.mu.Lock()
	img := c.images[name]
	ok := img != nil && img.listed()
	c.mu.Unlock()
	if !ok {
		return nil, syscall.ENOENT
	}
	c.dirAttr(&out.Attr)
	return r.NewInode(ctx, img, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: img.ino}), 0
}

// Readdir lists the root: one list call at most per TTL, no image opened.
func (r *catRoot) Readdir(context.Context) (fs.DirStream, syscall.Errno) {
	c := r.c
	if err := c.refresh(); err != nil {
		return nil, syscall.EIO
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ents := make([]fuse.DirEntry, 0, len(c.ids)+2)
	ents = append(ents, fuse.DirEntry{Name: CatalogJSONName, Mode: syscall.S_IFREG, Ino: catJSONIno},
		fuse.DirEntry{Name: ByNameDir, Mode: syscall.S_IFDIR, Ino: catByIno})
	for _, id := range c.ids {
		ents = append(ents, fuse.DirEntry{Name: id, Mode: syscall.S_IFDIR, Ino: c.images[id].ino})
	}
	return fs.NewListDirStream(ents), 0
}

// byNameDir holds a symlink per image name.
type byNameDir struct {
	fs.Inode
	c *catalog
}

var (
	_ = (fs.NodeGetattrer)((*byNameDir)(nil))
	_ = (fs.NodeLookuper)((*byNameDir)(nil))
	_ = (fs.NodeReaddirer)((*byNameDir)(nil))
)

// Getattr reports a read-only directory.
func (d *byNameDir) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.c.dirAttr(&out.Attr)
	return 0
}

// Lookup returns the symlink of an image name.
func (d *byNameDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	c := d.c
	if err := c.refresh(); err != nil {
		return nil, syscall.EIO
	}
	c.mu.Lock()
	id, ok := c.names[name]
	var img *catImage
	if ok {
		img = c.images[id]
	}
	c.mu.Unlock()
	if img == nil {
		return nil, syscall.ENOENT
	}
	l := &linkNode{c: c, target: "../" + id}
	l.attr(&out.Attr)
	return d.NewInode(ctx, l, fs.StableAttr{Mode: syscall.S_IFLNK, Ino: img.linkIno}), 0
}

// Readdir lists the names.
func (d *byNameDir) Readdir(context.Context) (fs.DirStream, syscall.Errno) {
	c := d.c
	if err := c.refresh(); err != nil {
		return nil, syscall.EIO
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	names := make([]string, 0, len(c.names))
	for n := range c.names {
		names = append(names, n)
	}
	sort.Strings(names)
	ents := make([]fuse.DirEntry, 0, len(names))
	for _, n := range names {
		ents = append(ents, fuse.DirEntry{Name: n, Mode: syscall.S_IFLNK, Ino: c.images[c.names[n]].linkIno})
	}
	return fs.NewListDirStream(ents), 0
}

// linkNode is a by-name symlink.
type linkNode struct {
	fs.Inode
	c      *catalog
	target string
}

var (
	_ = (fs.NodeReadlinker)((*linkNode)(nil))
	_ = (fs.NodeGetattrer)((*linkNode)(nil))
)

func (l *linkNode) attr(a *fuse.Attr) {
	a.Mode = syscall.S_IFLNK | 0o777
	a.Size = uint64(len(l.target))
	a.Nlink = 1
	a.Owner = fuse.Owner{Uid: l.c.uid, Gid: l.c.gid}
	a.SetTimes(&l.c.mtime, &l.c.mtime, &l.c.mtime)
}

// Readlink returns ../<image-id>.
func (l *linkNode) Readlink(context.Context) ([]byte, syscall.Errno) { return []byte(l.target), 0 }

// Getattr reports the symlink.
func (l *linkNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	l.attr(&out.Attr)
	return 0
}
