// Package fusefs exposes an opened image as a small read-only FUSE
// directory:
//
//	disk        the plaintext virtual disk (size = virtual size)
//	encrypted   the ciphertext as stored (encrypted images only)
//	disk.luks   the disk as a raw LUKS volume the same key opens (encrypted images only)
//	image.json  what `imgfs info --json` says about the image (never keys)
//	stats       a remote source's live counters as JSON (remote images only)
//
// and the Extra files the caller adds (imgfs adds disk.p1, disk.p2, ... and
// partitions.json for a partitioned disk).
//
// Files are mode 0400 and owned by the mounting user, the mount is "ro" with
// default_permissions, and only the mounting user sees it unless AllowOther
// is set (a non-root user then needs `user_allow_other` in /etc/fuse.conf).
// Reads go straight to the Device below, up to 1 MiB per request, in
// parallel; the kernel keeps its page cache across opens (the image is
// immutable); SEEK_DATA/SEEK_HOLE come from the device's blockdev.Mapper.
package fusefs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/imgfs/imgfs/blockdev"
)

// Names of the files in the mounted directory.
const (
	DiskName      = "disk"
	EncryptedName = "encrypted"
	// RawLUKSName is the disk as a raw LUKS volume the same key opens.
	RawLUKSName   = "disk.luks"
	ImageJSONName = "image.json"
)

const (
	// maxRequest is the largest read the kernel may send (FUSE max_pages:
	// 256 pages on Linux >= 4.20). go-fuse caps it at what the kernel allows.
	maxRequest = 1 << 20
	// maxBackground is how many asynchronous (readahead) reads the kernel
	// may have in flight at once; they are served in parallel.
	maxBackground = 64
	// cacheTimeout is how long the kernel trusts names and attributes: the
	// image cannot change under the mount.
	cacheTimeout = time.Hour
	// preferredBlockSize is st_blksize: tools that size their buffers by it
	// (cp, cat) then issue 1 MiB reads.
	preferredBlockSize = maxRequest
	// readahead is the kernel's sequential readahead window for the mount:
	// up to four maxRequest reads in flight at once, so that a sequential
	// reader keeps decryption on every core and several fetches busy (as
	// `imgfs cat` does with its 4 MiB chunks). On the shared 2-core test VM
	// the wall-clock difference against a 1 MiB window was within noise.
	readahead = 4 << 20
)

// devFuse is the FUSE device and fusermountFallbackDir where fusermount3 is
// looked for outside PATH; variables so tests can pretend FUSE is missing.
var (
	devFuse               = "/dev/fuse"
	fusermountFallbackDir = "/bin"
	fuseConf              = "/etc/fuse.conf"
)

// ErrFuseMissing means FUSE cannot be used on this machine.
var ErrFuseMissing = errors.New("FUSE is not available")

// Options say what to mount and how.
type Options struct {
	// Disk is the plaintext virtual disk. Required.
	Disk blockdev.Device
	// DiskAllocated is how many bytes of Disk hold data, for st_blocks;
	// 0 means unknown (the file then looks fully allocated). A value below
	// the size tells cp --sparse to ask for holes with SEEK_HOLE.
	DiskAllocated int64
	// Encrypted is the ciphertext as stored; nil if the image is not
	// encrypted (then there is no "encrypted" file).
	Encrypted blockdev.Device
	// RawLUKS is the disk as a raw LUKS volume (disk.luks) for streaming into
	// an encrypted volume; nil if the image is not encrypted.
	RawLUKS blockdev.Device
	// Stats, when set, makes the file "stats": its result at each open,
	// typically the source's counters as JSON. Never key material.
	Stats func() []byte
	// ImageJSON is the content of image.json. It must hold no key material.
	ImageJSON []byte
	// Extra are more read-only files beside disk (partitions, for
	// instance), in order; their names must not clash with the others.
	Extra []File
	// AllowOther lets other users see the mount (allow_other) and makes the
	// files and the directory readable by all (0444/0555).
	AllowOther bool
	// Debug logs every FUSE request to stderr.
	Debug bool
	// FsName is the "source" column of /proc/mounts (default "imgfs").
	FsName string
	// Logger receives device errors (the first one of the mount); default
	// is stderr. Key material is never logged.
	Logger *log.Logger
}

// File is a read-only file of the mount: its name and its bytes.
type File struct {
	Name string
	Dev  blockdev.Device
}

// Server is a live mount. Wait blocks until it is unmounted; Unmount
// detaches it.
type Server struct {
	dir    string
	server *fuse.Server
	errs   *errorLog
	// catalog is the state of a catalog mount (nil for one image).
	catalog *catalog
}

// Mount mounts the image at dir and starts serving it. It returns once the
// kernel has accepted the mount.
func Mount(dir string, opts Options) (*Server, error) {
	specs, err := imageFiles(opts)
	if err != nil {
		return nil, err
	}
	abs, logger, err := prepareMount(dir, opts.AllowOther, opts.Logger)
	if err != nil {
		return nil, err
	}
	errs := &errorLog{logger: logger}
	fileMode, dirMode := uint32(0o400), uint32(0o500)
	if opts.AllowOther {
		fileMode, dirMode = 0o444, 0o555
	}
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	now := time.Now()
	root := &rootNode{mode: dirMode, uid: uid, gid: gid, mtime: now}
	for _, f := range specs {
		if f.live != nil {
			root.files = append(root.files, namedFile{f.name, &liveNode{content: f.live, mode: fileMode, uid: uid, gid: gid, mtime: now}})
			continue
		}
		n := &fileNode{name: f.name, dev: f.dev, mode: fileMode, uid: uid, gid: gid, mtime: now, errs: errs, blocks: f.blocks}
		n.mapper, _ = f.dev.(blockdev.Mapper)
		root.files = append(root.files, namedFile{f.name, n})
	}
	server, err := fs.Mount(abs, root, fsOptions(opts.FsName, opts.AllowOther, opts.Debug, cacheTimeout))
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", abs, explainMountError(err, opts.AllowOther))
	}
	raiseReadahead(abs)
	return &Server{dir: abs, server: server, errs: errs}, nil
}

// prepareMount checks the mountpoint, FUSE and allow_other, and returns
// the absolute mountpoint and the logger for device errors.
func prepareMount(dir string, allowOther bool, logger *log.Logger) (string, *log.Logger, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", nil, err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", nil, fmt.Errorf("mountpoint: %w", err)
	}
	if !st.IsDir() {
		return "", nil, fmt.Errorf("mountpoint %s is not a directory", abs)
	}
	if err := CheckFuse(); err != nil {
		return "", nil, err
	}
	if allowOther && os.Geteuid() != 0 && !fuseConfAllowsOther(fuseConf) {
		return "", nil, fmt.Errorf("allow_other: only root may use it unless %s has a `user_allow_other` line (or mount without --allow-other)", fuseConf)
	}
	if logger == nil {
		logger = log.New(os.Stderr, "", 0)
	}
	return abs, logger, nil
}

// fileSpec is one file of an image's directory: a device, or (live set) a
// file made anew at each open.
type fileSpec struct {
	name   string
	dev    blockdev.Device
	blocks uint64 // st_blocks
	live   func() []byte
}

// imageFiles lists the files a mount of opts shows, in order.
func imageFiles(opts Options) ([]fileSpec, error) {
	if opts.Disk == nil {
		return nil, errors.New("fusefs: no disk to mount")
	}
	dev := func(name string, d blockdev.Device, allocated int64) fileSpec {
		f := fileSpec{name: name, dev: d, blocks: uint64(d.Size()+511) / 512}
		if allocated > 0 && allocated < d.Size() {
			f.blocks = uint64(allocated+511) / 512
		}
		return f
	}
	files := []fileSpec{dev(DiskName, opts.Disk, opts.DiskAllocated)}
	if opts.Encrypted != nil {
		files = append(files, dev(EncryptedName, opts.Encrypted, 0))
	}
	if opts.RawLUKS != nil {
		files = append(files, dev(RawLUKSName, opts.RawLUKS, 0))
	}
	if opts.Stats != nil {
		files = append(files, fileSpec{name: StatsName, live: opts.Stats})
	}
	files = append(files, dev(ImageJSONName, bytes.NewReader(opts.ImageJSON), 0))
	for _, f := range opts.Extra {
		for _, have := range files {
			if have.name == f.Name {
				return nil, fmt.Errorf("fusefs: two files named %q", f.Name)
			}
		}
		if f.Dev == nil {
			return nil, fmt.Errorf("fusefs: file %q has no device", f.Name)
		}
		files = append(files, dev(f.Name, f.Dev, 0))
	}
	return files, nil
}

// fsOptions are go-fuse's options for a read-only imgfs mount whose names
// and attributes the kernel may trust for timeout.
func fsOptions(name string, allowOther, debug bool, timeout time.Duration) *fs.Options {
	if name == "" {
		name = "imgfs"
	}
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	return &fs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		UID:             uid,
		GID:             gid,
		MountOptions: fuse.MountOptions{
			FsName:        name,
			Name:          "imgfs",
			AllowOther:    allowOther,
			Options:       []string{"ro", "default_permissions", "nodev", "nosuid", "noexec"},
			MaxWrite:      maxRequest,
			MaxReadAhead:  maxRequest,
			MaxBackground: maxBackground,
			DisableXAttrs: true,
			// Replies are built from memory; splicing them costs a pipe per
			// request and fails for 1 MiB replies (header + data > pipe size).
			DisableSplice: true,
			Debug:         debug,
			Logger:        log.New(os.Stderr, "imgfs-fuse: ", 0),
		},
	}
}

// raiseReadahead lifts the mount's readahead from the kernel's default
// (128 KiB, which also caps FUSE_INIT's max_readahead) to readahead by
// writing the backing device's read_ahead_kb in sysfs, as root can. For
// other users the default stays and sequential readers see 128 KiB requests.
func raiseReadahead(dir string) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	_ = os.WriteFile(p, []byte(fmt.Sprint(readahead>>10)), 0)
}

// Dir returns the absolute mountpoint.
func (s *Server) Dir() string { return s.dir }

// Wait blocks until the file system is unmounted (by Unmount, fusermount3 -u
// or umount) and the serve loops have ended.
// A catalog mount then closes every image it opened.
func (s *Server) Wait() {
	s.server.Wait()
	if s.catalog != nil {
		s.catalog.closeAll()
	}
}

// CatalogCounters returns a catalog mount's counters (zero for a mount of
// one image).
func (s *Server) CatalogCounters() CatalogCounters {
	if s.catalog == nil {
		return CatalogCounters{}
	}
	return s.catalog.counters()
}

// Unmount detaches the mount. It fails (EBUSY) while a process still has a
// file open or its working directory inside the mount.
func (s *Server) Unmount() error {
	if err := s.server.Unmount(); err != nil {
		return fmt.Errorf("unmount %s: %w", s.dir, err)
	}
	return nil
}

// ReadErrors returns how many reads or seeks were answered with EIO because
// the device failed.
func (s *Server) ReadErrors() int64 { return s.errs.Errors() }

// CheckFuse reports ErrFuseMissing, with the missing piece named, when
// /dev/fuse or fusermount3 is absent.
func CheckFuse() error {
	if _, err := os.Stat(devFuse); err != nil {
		return fmt.Errorf("%w: %v (install fuse3 with `apt-get install fuse3` and load the module with `modprobe fuse`; in a container, pass --device /dev/fuse)",
			ErrFuseMissing, err)
	}
	if _, err := FusermountPath(); err != nil {
		return fmt.Errorf("%w: fusermount3 is not in PATH (install it with `apt-get install fuse3`)", ErrFuseMissing)
	}
	return nil
}

// FusermountPath finds fusermount3 (or the older fusermount) as go-fuse
// does: in PATH, then in /bin.
func FusermountPath() (string, error) {
	for _, name := range []string{"fusermount3", "fusermount"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		if p := filepath.Join(fusermountFallbackDir, name); isExecutable(p) {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}

// fuseConfAllowsOther reports whether the fuse.conf at path lets ordinary
// users mount with allow_other, as fusermount3 reads it.
func fuseConfAllowsOther(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "user_allow_other" {
			return true
		}
	}
	return false
}

// explainMountError adds the usual fix to the errors fusermount3 gives.
func explainMountError(err error, allowOther bool) error {
	msg := err.Error()
	switch {
	case allowOther && strings.Contains(msg, "user_allow_other"):
		return fmt.Errorf("%w (add `user_allow_other` to /etc/fuse.conf, or mount without --allow-other)", err)
	case strings.Contains(msg, "not connected"):
		return fmt.Errorf("%w (a stale imgfs mount is there: run `imgfs umount` on it first)", err)
	}
	return err
}

// rootNode is the read-only directory holding the files.
type rootNode struct {
	fs.Inode
	files         []namedFile
	mode          uint32
	uid, gid      uint32
	mtime         time.Time
	childrenAdded bool
}

type namedFile struct {
	name string
	node fs.InodeEmbedder
}

var (
	_ = (fs.NodeOnAdder)((*rootNode)(nil))
	_ = (fs.NodeGetattrer)((*rootNode)(nil))
	_ = (fs.NodeSetattrer)((*rootNode)(nil))
	_ = (fs.NodeStatfser)((*rootNode)(nil))
)

// OnAdd creates the files once, when the root is attached to the mount.
func (r *rootNode) OnAdd(ctx context.Context) {
	if r.childrenAdded {
		return
	}
	r.childrenAdded = true
	for i, f := range r.files {
		ch := r.NewPersistentInode(ctx, f.node, fs.StableAttr{Mode: syscall.S_IFREG, Ino: uint64(i + 2)})
		r.AddChild(f.name, ch, false)
	}
}

// Getattr reports the directory's mode and owner.
func (r *rootNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | r.mode
	out.Nlink = 2
	out.Uid, out.Gid = r.uid, r.gid
	out.SetTimes(&r.mtime, &r.mtime, &r.mtime)
	return 0
}

// Setattr refuses changes to the directory.
func (r *rootNode) Setattr(context.Context, fs.FileHandle, *fuse.SetAttrIn, *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

// Statfs reports a full, read-only file system holding the files' bytes,
// so df shows the mount with its size.
func (r *rootNode) Statfs(_ context.Context, out *fuse.StatfsOut) syscall.Errno {
	var total uint64
	for _, f := range r.files {
		if fn, ok := f.node.(*fileNode); ok {
			total += fn.blocks
		}
	}
	out.Bsize = 512
	out.Frsize = 512
	out.Blocks = total
	out.Files = uint64(len(r.files) + 1)
	out.NameLen = 255
	return 0
}
