//go:build linux && cgo && !noceph

package rbd

/*
#cgo LDFLAGS: -lrbd -lrados
#include <stdlib.h>
#include <malloc.h>
#include <sys/uio.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
*/
import "C"

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/imgfs/imgfs/blockdev"
)

const (
	// pieceBytes is the most one asynchronous read asks for.
	pieceBytes = 4 << 20
	// inFlight is how many asynchronous reads one ReadAt keeps going.
	inFlight = 8
	// maxSegs bounds the buffers one rbd_aio_readv fills (IOV_MAX is 1024).
	maxSegs = 256
)

// Cluster is a connection to a Ceph cluster as one client. It is safe for
// concurrent use. Close it when done: that closes its images too.
type Cluster struct {
	h    C.rados_t
	fsid string

	mu     sync.RWMutex // OpenImage holds it shared; Close exclusively
	closed bool

	imgMu  sync.Mutex // guards images
	images map[*Image]struct{}
}

// connectResult is what the connecting goroutine hands back.
type connectResult struct {
	h    C.rados_t
	fsid string
	err  error
}

// TrimMemory gives the C heap's free memory back to the system
// (malloc_trim): librados receives each read into its own buffer, and
// glibc keeps those freed buffers, so a long read grows the resident size
// by tens of MiB unless trimmed now and then.
func TrimMemory() { C.malloc_trim(0) }

// Supported reports whether this build can reach a Ceph cluster (true:
// built with cgo and librbd).
const Supported = true

// Connect reads the configuration, authenticates and returns a connected
// Cluster. It fails within cfg.Timeout (ErrTimeout) if no mon answers, and
// returns early with ctx's error if ctx ends first.
func Connect(ctx context.Context, cfg Config) (*Cluster, error) {
	id, err := cfg.clientID()
	if err != nil {
		return nil, err
	}
	conf := cfg.confFile()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("rbd: connect as client.%s: %w", id, err)
	}
	// The mount timeout is the smaller of Timeout and ctx's deadline, so
	// that librados gives up (and frees what it holds) about when we do.
	mount := cfg.timeout()
	if dl, ok := ctx.Deadline(); ok {
		mount = min(mount, time.Until(dl))
	}
	done := make(chan connectResult, 1)
	go func() {
		h, fsid, err := connect(conf, id, mountSeconds(mount), mountSeconds(cfg.timeout()))
		done <- connectResult{h, fsid, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, r.err
		}
		return &Cluster{h: r.h, fsid: r.fsid, images: map[*Image]struct{}{}}, nil
	case <-ctx.Done():
		go func() { // librados gives up within the mount timeout: free the handle then
			if r := <-done; r.err == nil {
				C.rados_shutdown(r.h)
			}
		}()
		return nil, fmt.Errorf("rbd: connect as client.%s (%s): %w", id, conf, ctx.Err())
	}
}

// connect does the blocking part of Connect: create, configure, connect.
func connect(conf, id string, mountSecs, opSecs int64) (C.rados_t, string, error) {
	var h C.rados_t
	cName := C.CString("client." + id)
	defer C.free(unsafe.Pointer(cName))
	cCluster := C.CString("ceph")
	defer C.free(unsafe.Pointer(cCluster))
	if r := C.rados_create2(&h, cCluster, cName, 0); r < 0 {
		return nil, "", fmt.Errorf("rbd: create handle for client.%s: %w", id, errFromRet(int(r)))
	}
	fail := func(err error) (C.rados_t, string, error) {
		C.rados_shutdown(h)
		return nil, "", err
	}
	cConf := C.CString(conf)
	defer C.free(unsafe.Pointer(cConf))
	if r := C.rados_conf_read_file(h, cConf); r < 0 {
		// not ErrNotFound: that is for pools, images and snapshots
		return fail(fmt.Errorf("rbd: read config %s: %w", conf, errFromRet(int(r)).(*cephError).errno))
	}
	settings := [][2]string{
		{"client_mount_timeout", strconv.FormatInt(mountSecs, 10)},
		{"rados_mon_op_timeout", strconv.FormatInt(opSecs, 10)},
		{"rados_osd_op_timeout", strconv.FormatInt(opSecs, 10)},
	}
	for _, kv := range settings {
		if err := confSet(h, kv[0], kv[1]); err != nil {
			return fail(err)
		}
	}
	if r := C.rados_connect(h); r < 0 {
		err := errFromRet(int(r))
		if errors.Is(err, syscall.ENOENT) {
			// librados says ENOENT when it finds no mon address, or no
			// keyring (or no key in it) for the client
			if confGet(h, "mon_host") == "" {
				return fail(fmt.Errorf("rbd: connect as client.%s (%s): the config names no mon host: %w", id, conf, err.(*cephError).errno))
			}
			err = &cephError{errno: syscall.ENOENT, kind: ErrPermission}
			return fail(fmt.Errorf("rbd: connect as client.%s (%s): no key for client.%s in keyring %s: %w", id, conf, id, confGet(h, "keyring"), err))
		}
		return fail(fmt.Errorf("rbd: connect as client.%s (%s): %w", id, conf, err))
	}
	buf := make([]byte, 64)
	r := C.rados_cluster_fsid(h, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))
	if r < 0 {
		return fail(fmt.Errorf("rbd: cluster fsid: %w", errFromRet(int(r))))
	}
	return h, string(buf[:r]), nil
}

// confGet returns a configuration value of h ("" if unset or too long).
func confGet(h C.rados_t, k string) string {
	ck := C.CString(k)
	defer C.free(unsafe.Pointer(ck))
	buf := make([]byte, 4096)
	if C.rados_conf_get(h, ck, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf))) < 0 {
		return ""
	}
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		buf = buf[:i]
	}
	return string(buf)
}

func confSet(h C.rados_t, k, v string) error {
	ck, cv := C.CString(k), C.CString(v)
	defer C.free(unsafe.Pointer(ck))
	defer C.free(unsafe.Pointer(cv))
	if r := C.rados_conf_set(h, ck, cv); r < 0 {
		return fmt.Errorf("rbd: set %s = %s: %w", k, v, errFromRet(int(r)))
	}
	return nil
}

// FSID returns the cluster's fsid (as in Glance's rbd:// locations).
func (c *Cluster) FSID() string { return c.fsid }

// OpenImage opens pool/image read-only, at snapshot snap if snap is not
// empty. A missing pool, image or snapshot is ErrNotFound, with a message
// that says which.
func (c *Cluster) OpenImage(pool, image, snap string) (*Image, error) {
	spec := Spec{Pool: pool, Image: image, Snap: snap}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, fmt.Errorf("rbd: open %s: cluster connection %w", spec.path(), ErrClosed)
	}
	var ioctx C.rados_ioctx_t
	cPool := C.CString(pool)
	defer C.free(unsafe.Pointer(cPool))
	if r := C.rados_ioctx_create(c.h, cPool, &ioctx); r < 0 {
		err := errFromRet(int(r))
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("rbd: open %s: no pool %q: %w", spec.path(), pool, err)
		}
		return nil, fmt.Errorf("rbd: open %s: pool %q: %w", spec.path(), pool, err)
	}
	cImage := C.CString(image)
	defer C.free(unsafe.Pointer(cImage))
	var cSnap *C.char
	if snap != "" {
		cSnap = C.CString(snap)
		defer C.free(unsafe.Pointer(cSnap))
	}
	var img C.rbd_image_t
	if r := C.rbd_open_read_only(ioctx, cImage, &img, cSnap); r < 0 {
		err := errFromRet(int(r))
		what := fmt.Sprintf("image %q in pool %q", image, pool)
		if errors.Is(err, ErrNotFound) && snap != "" {
			// which one is missing: the image or its snapshot?
			var head C.rbd_image_t
			if C.rbd_open_read_only(ioctx, cImage, &head, nil) == 0 {
				C.rbd_close(head)
				what = fmt.Sprintf("snapshot %q of image %q in pool %q", snap, image, pool)
			}
		}
		C.rados_ioctx_destroy(ioctx)
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("rbd: open %s: no %s: %w", spec.path(), what, err)
		}
		return nil, fmt.Errorf("rbd: open %s: %w", spec.path(), err)
	}
	var size C.uint64_t
	if r := C.rbd_get_size(img, &size); r < 0 {
		C.rbd_close(img)
		C.rados_ioctx_destroy(ioctx)
		return nil, fmt.Errorf("rbd: open %s: size: %w", spec.path(), errFromRet(int(r)))
	}
	im := &Image{c: c, spec: spec, ioctx: ioctx, img: img, size: int64(size)}
	c.imgMu.Lock()
	c.images[im] = struct{}{}
	c.imgMu.Unlock()
	return im, nil
}

// Close closes the images still open and the connection. Reads in
// progress on those images finish first. Close is idempotent.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true // no OpenImage in progress now, and none can start
	c.mu.Unlock()
	c.imgMu.Lock()
	open := make([]*Image, 0, len(c.images))
	for im := range c.images {
		open = append(open, im)
	}
	c.imgMu.Unlock()
	for _, im := range open {
		im.Close()
	}
	C.rados_shutdown(c.h)
	return nil
}

// Image is an RBD image (or snapshot) opened read-only: a blockdev.Device
// and blockdev.VectorReader whose Stats count the librbd reads it made. It
// is safe for concurrent use.
type Image struct {
	c     *Cluster
	spec  Spec
	ioctx C.rados_ioctx_t
	img   C.rbd_image_t
	size  int64

	mu     sync.RWMutex // readers hold it shared; Close exclusively
	closed bool

	requests, bytes atomic.Int64
}

var (
	_ blockdev.Device        = (*Image)(nil)
	_ blockdev.VectorReader  = (*Image)(nil)
	_ blockdev.StatsReporter = (*Image)(nil)
)

// Size returns the image's size in bytes (at the snapshot, if one was
// given), as it was when the image was opened.
func (im *Image) Size() int64 { return im.size }

// Spec returns the pool, image and snapshot this Image reads.
func (im *Image) Spec() Spec { return im.spec }

// String returns the image as rbd:POOL/IMAGE[@SNAP].
func (im *Image) String() string { return im.spec.String() }

// Stats returns the asynchronous reads sent to librbd (Requests) and the
// bytes they returned (BytesFetched). Other fields are zero.
func (im *Image) Stats() blockdev.Stats {
	return blockdev.Stats{Requests: im.requests.Load(), BytesFetched: im.bytes.Load()}
}

// ReadAt reads len(p) bytes at off, as io.ReaderAt: a read that crosses the
// end returns the bytes up to it and io.EOF; one that starts at or past the
// end returns 0, io.EOF without asking librbd.
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	n, clipErr := blockdev.Clip(p, off, im.size)
	if n == 0 {
		return 0, clipErr
	}
	if err := im.read([][]byte{p[:n]}, off); err != nil {
		return 0, err
	}
	return n, clipErr
}

// ReadVecAt fills bufs from consecutive bytes at off (see
// blockdev.VectorReader). A range that does not lie inside the image is an
// error wrapping io.ErrUnexpectedEOF.
func (im *Image) ReadVecAt(bufs [][]byte, off int64) error {
	var total int64
	for _, b := range bufs {
		total += int64(len(b))
	}
	if off < 0 || off > im.size || total > im.size-off {
		return fmt.Errorf("%s: read of %d bytes at %d: past the end (%d bytes): %w", im.spec, total, off, im.size, io.ErrUnexpectedEOF)
	}
	if total == 0 {
		return nil
	}
	return im.read(bufs, off)
}

// Close closes the image; reads in progress finish first. Idempotent.
func (im *Image) Close() error {
	im.mu.Lock()
	if im.closed {
		im.mu.Unlock()
		return nil
	}
	im.closed = true
	C.rbd_close(im.img)
	C.rados_ioctx_destroy(im.ioctx)
	im.mu.Unlock()
	im.c.imgMu.Lock()
	delete(im.c.images, im)
	im.c.imgMu.Unlock()
	return nil
}

// piece is one asynchronous read: consecutive bytes at off into segs.
type piece struct {
	off  int64
	n    int
	segs [][]byte

	comp C.rbd_completion_t
	iov  *C.struct_iovec // C memory, for rbd_aio_readv; nil for rbd_aio_read
}

// split cuts the read of bufs at off into pieces of at most pieceBytes and
// maxSegs buffers each. Empty buffers are skipped.
func split(bufs [][]byte, off int64) []*piece {
	var ps []*piece
	var cur *piece
	for _, b := range bufs {
		for len(b) > 0 {
			if cur == nil || cur.n == pieceBytes || len(cur.segs) == maxSegs {
				cur = &piece{off: off}
				ps = append(ps, cur)
			}
			k := min(len(b), pieceBytes-cur.n)
			cur.segs = append(cur.segs, b[:k])
			cur.n += k
			off += int64(k)
			b = b[k:]
		}
	}
	return ps
}

// read fills bufs, which lie inside the image, from off: up to inFlight
// asynchronous reads at a time, librbd writing straight into the
// (pinned) Go buffers. It always waits for every read it started.
func (im *Image) read(bufs [][]byte, off int64) error {
	im.mu.RLock()
	defer im.mu.RUnlock()
	if im.closed {
		return fmt.Errorf("%s: read: image %w", im.spec, ErrClosed)
	}
	// librbd keeps the buffer pointers until each read completes: the cgo
	// rules allow that only for pinned Go memory.
	var pin runtime.Pinner
	defer pin.Unpin()
	for _, b := range bufs {
		if len(b) > 0 {
			pin.Pin(&b[0])
		}
	}
	ps := split(bufs, off)
	var firstErr error
	started := 0 // ps[:started] were submitted
	waited := 0  // ps[:waited] were waited for and released
	for waited < len(ps) {
		for firstErr == nil && started < len(ps) && started-waited < inFlight {
			if err := im.submit(ps[started]); err != nil {
				firstErr = err
				break
			}
			started++
		}
		if waited == started {
			break // nothing in flight (a submit failed)
		}
		if err := im.complete(ps[waited]); err != nil && firstErr == nil {
			firstErr = err
		}
		waited++
	}
	return firstErr
}

// submit starts the asynchronous read of one piece.
func (im *Image) submit(p *piece) error {
	if r := C.rbd_aio_create_completion(nil, nil, &p.comp); r < 0 {
		return fmt.Errorf("%s: read %d bytes at %d: completion: %w", im.spec, p.n, p.off, errFromRet(int(r)))
	}
	var r C.int
	if len(p.segs) == 1 {
		r = C.rbd_aio_read(im.img, C.uint64_t(p.off), C.size_t(p.n), (*C.char)(unsafe.Pointer(&p.segs[0][0])), p.comp)
	} else {
		p.iov = (*C.struct_iovec)(C.malloc(C.size_t(len(p.segs)) * C.sizeof_struct_iovec))
		iov := unsafe.Slice(p.iov, len(p.segs))
		for i, s := range p.segs {
			iov[i].iov_base = unsafe.Pointer(&s[0])
			iov[i].iov_len = C.size_t(len(s))
		}
		r = C.rbd_aio_readv(im.img, p.iov, C.int(len(p.segs)), C.uint64_t(p.off), p.comp)
	}
	if r < 0 {
		p.release()
		return fmt.Errorf("%s: read %d bytes at %d: %w", im.spec, p.n, p.off, errFromRet(int(r)))
	}
	im.requests.Add(1)
	return nil
}

// complete waits for one piece, releases it and checks what it returned.
func (im *Image) complete(p *piece) error {
	C.rbd_aio_wait_for_complete(p.comp)
	ret := int64(C.rbd_aio_get_return_value(p.comp))
	p.release()
	if ret < 0 {
		return fmt.Errorf("%s: read %d bytes at %d: %w", im.spec, p.n, p.off, errFromRet(int(ret)))
	}
	im.bytes.Add(ret)
	if ret != int64(p.n) {
		return fmt.Errorf("%s: read %d bytes at %d: got %d (image shrunk?): %w", im.spec, p.n, p.off, ret, io.ErrUnexpectedEOF)
	}
	return nil
}

func (p *piece) release() {
	if p.comp != nil {
		C.rbd_aio_release(p.comp)
		p.comp = nil
	}
	if p.iov != nil {
		C.free(unsafe.Pointer(p.iov))
		p.iov = nil
	}
}
