//go:build linux && cgo && !noceph

package rbd

/*
#include <stdlib.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"
)

// writePiece is the most one asynchronous write sends; a WriteAt keeps up
// to inFlight of them going.
const writePiece = 1 << 20

// ioctx opens an I/O context on pool (the caller destroys it).
func (c *Cluster) ioctx(pool, what string) (C.rados_ioctx_t, error) {
	var ioctx C.rados_ioctx_t
	cPool := C.CString(pool)
	defer C.free(unsafe.Pointer(cPool))
	if r := C.rados_ioctx_create(c.h, cPool, &ioctx); r < 0 {
		err := errFromRet(int(r))
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("rbd: %s: no pool %q: %w", what, pool, err)
		}
		return nil, fmt.Errorf("rbd: %s: pool %q: %w", what, pool, err)
	}
	return ioctx, nil
}

// CreateImage creates the image pool/image of size bytes with librbd's
// default format and features (rbd_create). An existing image is
// ErrExists.
func (c *Cluster) CreateImage(pool, image string, size int64) error {
	spec := Spec{Pool: pool, Image: image}
	what := "create " + spec.path()
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return fmt.Errorf("rbd: %s: cluster connection %w", what, ErrClosed)
	}
	if size < 0 {
		return fmt.Errorf("rbd: %s: negative size %d", what, size)
	}
	ioctx, err := c.ioctx(pool, what)
	if err != nil {
		return err
	}
	defer C.rados_ioctx_destroy(ioctx)
	cImage := C.CString(image)
	defer C.free(unsafe.Pointer(cImage))
	order := C.int(0) // librbd's default object size
	if r := C.rbd_create(ioctx, cImage, C.uint64_t(size), &order); r < 0 {
		err := errFromRet(int(r))
		if errors.Is(err, errEEXIST) {
			return fmt.Errorf("rbd: %s: %w", what, &existsError{err})
		}
		return fmt.Errorf("rbd: %s (%d bytes): %w", what, size, err)
	}
	return nil
}

// RemoveImage removes the image pool/image (one without snapshots).
func (c *Cluster) RemoveImage(pool, image string) error {
	what := "remove " + Spec{Pool: pool, Image: image}.path()
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return fmt.Errorf("rbd: %s: cluster connection %w", what, ErrClosed)
	}
	ioctx, err := c.ioctx(pool, what)
	if err != nil {
		return err
	}
	defer C.rados_ioctx_destroy(ioctx)
	cImage := C.CString(image)
	defer C.free(unsafe.Pointer(cImage))
	if r := C.rbd_remove(ioctx, cImage); r < 0 {
		return fmt.Errorf("rbd: %s: %w", what, errFromRet(int(r)))
	}
	return nil
}

// OpenImageWritable opens the head of pool/image for reading and writing
// (WriteAt, Zero, Flush). A missing pool or image is ErrNotFound.
func (c *Cluster) OpenImageWritable(pool, image string) (*Image, error) {
	spec := Spec{Pool: pool, Image: image}
	what := "open " + spec.path() + " for writing"
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, fmt.Errorf("rbd: %s: cluster connection %w", what, ErrClosed)
	}
	ioctx, err := c.ioctx(pool, what)
	if err != nil {
		return nil, err
	}
	cImage := C.CString(image)
	defer C.free(unsafe.Pointer(cImage))
	var img C.rbd_image_t
	if r := C.rbd_open(ioctx, cImage, &img, nil); r < 0 {
		C.rados_ioctx_destroy(ioctx)
		err := errFromRet(int(r))
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("rbd: %s: no image %q in pool %q: %w", what, image, pool, err)
		}
		return nil, fmt.Errorf("rbd: %s: %w", what, err)
	}
	var size C.uint64_t
	if r := C.rbd_get_size(img, &size); r < 0 {
		C.rbd_close(img)
		C.rados_ioctx_destroy(ioctx)
		return nil, fmt.Errorf("rbd: %s: size: %w", what, errFromRet(int(r)))
	}
	im := &Image{c: c, spec: spec, ioctx: ioctx, img: img, size: int64(size)}
	c.imgMu.Lock()
	c.images[im] = struct{}{}
	c.imgMu.Unlock()
	return im, nil
}

// WriteAt writes p at off (inside the image) with up to inFlight
// asynchronous writes of at most 1 MiB, librbd reading straight from the
// pinned buffer, and returns once all are done. An image opened read-only
// fails (EROFS).
func (im *Image) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > im.size || int64(len(p)) > im.size-off {
		return 0, fmt.Errorf("%s: write of %d bytes at %d: past the end (%d bytes)", im.spec, len(p), off, im.size)
	}
	if len(p) == 0 {
		return 0, nil
	}
	im.mu.RLock()
	defer im.mu.RUnlock()
	if im.closed {
		return 0, fmt.Errorf("%s: write: image %w", im.spec, ErrClosed)
	}
	var pin runtime.Pinner
	defer pin.Unpin()
	pin.Pin(&p[0])
	type wr struct {
		off, n int
		comp   C.rbd_completion_t
	}
	var queue []wr
	var firstErr error
	wait := func(w wr) {
		C.rbd_aio_wait_for_complete(w.comp)
		ret := int64(C.rbd_aio_get_return_value(w.comp))
		C.rbd_aio_release(w.comp)
		if ret < 0 && firstErr == nil {
			firstErr = fmt.Errorf("%s: write %d bytes at %d: %w", im.spec, w.n, off+int64(w.off), errFromRet(int(ret)))
		}
	}
	for i := 0; i < len(p) && firstErr == nil; {
		if len(queue) == inFlight {
			wait(queue[0])
			queue = queue[1:]
			continue
		}
		w := wr{off: i, n: min(writePiece, len(p)-i)}
		if r := C.rbd_aio_create_completion(nil, nil, &w.comp); r < 0 {
			firstErr = fmt.Errorf("%s: write at %d: completion: %w", im.spec, off+int64(i), errFromRet(int(r)))
			break
		}
		if r := C.rbd_aio_write(im.img, C.uint64_t(off+int64(i)), C.size_t(w.n), (*C.char)(unsafe.Pointer(&p[i])), w.comp); r < 0 {
			C.rbd_aio_release(w.comp)
			firstErr = fmt.Errorf("%s: write %d bytes at %d: %w", im.spec, w.n, off+int64(i), errFromRet(int(r)))
			break
		}
		queue = append(queue, w)
		i += w.n
	}
	for _, w := range queue {
		wait(w)
	}
	if firstErr != nil {
		return 0, firstErr
	}
	im.requests.Add(int64((len(p) + writePiece - 1) / writePiece))
	return len(p), nil
}

// Zero makes [off, off+n) read as zeros (rbd_write_zeroes).
func (im *Image) Zero(off, n int64) error {
	if off < 0 || n < 0 || off > im.size || n > im.size-off {
		return fmt.Errorf("%s: zero %d bytes at %d: past the end (%d bytes)", im.spec, n, off, im.size)
	}
	im.mu.RLock()
	defer im.mu.RUnlock()
	if im.closed {
		return fmt.Errorf("%s: zero: image %w", im.spec, ErrClosed)
	}
	for n > 0 {
		k := min(n, 1<<30)
		if r := C.rbd_write_zeroes(im.img, C.uint64_t(off), C.size_t(k), 0, 0); r < 0 {
			return fmt.Errorf("%s: zero %d bytes at %d: %w", im.spec, k, off, errFromRet(int(r)))
		}
		off, n = off+k, n-k
	}
	return nil
}

// Flush makes every write to the image durable (rbd_flush).
func (im *Image) Flush() error {
	im.mu.RLock()
	defer im.mu.RUnlock()
	if im.closed {
		return fmt.Errorf("%s: flush: image %w", im.spec, ErrClosed)
	}
	if r := C.rbd_flush(im.img); r < 0 {
		return fmt.Errorf("%s: flush: %w", im.spec, errFromRet(int(r)))
	}
	return nil
}
