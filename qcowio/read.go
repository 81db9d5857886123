package qcowio

import (
	"fmt"
	"sync"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/luksio"
)

// sectorSize is the unit of qcow2 LUKS encryption and of compressed
// cluster descriptors.
const sectorSize = 512

var sectorPool = sync.Pool{New: func() any { return new([sectorSize]byte) }}

// ReadAt reads plaintext of the virtual disk, with io.ReaderAt semantics.
// Contiguous host clusters are read from the device below in one request and
// decrypted in place. Reads of an encrypted image before Unlock fail with
// luksio.ErrKeyRequired.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	img.mu.RLock()
	defer img.mu.RUnlock()
	c, err := img.readStateLocked()
	if err != nil {
		return 0, err
	}
	n, eof := blockdev.Clip(p, off, img.size)
	if n == 0 {
		return 0, eof
	}
	p = p[:n]
	if err := img.fill(c, p, off); err != nil {
		clear(p) // never hand out ciphertext or partial data
		return 0, err
	}
	return n, eof
}

// fill reads the virtual range [off, off+len(p)), which lies inside the disk.
func (img *Image) fill(c *luksio.SectorCipher, p []byte, off int64) error {
	n := len(p)
	r := runReader{img: img, c: c, p: p}
	for pos := 0; pos < n; {
		e, err := img.lookup(off + int64(pos))
		if err != nil {
			return err
		}
		l := int(min(e.length, int64(n-pos)))
		switch e.kind {
		case kindData:
			if err := r.add(pos, e.host, l); err != nil {
				return err
			}
		case kindCompressed:
			if err := r.flush(); err != nil {
				return err
			}
			if err := img.readCompressed(p[pos:pos+l], e); err != nil {
				return fmt.Errorf("qcow2: read at %d: %w", off+int64(pos), err)
			}
		default:
			if err := r.flush(); err != nil {
				return err
			}
			clear(p[pos : pos+l])
		}
		pos += l
	}
	return r.flush()
}

// runReader coalesces data extents that are contiguous on the host into one
// read of the device below.
type runReader struct {
	img   *Image
	c     *luksio.SectorCipher
	p     []byte
	start int   // index in p of the pending run
	host  int64 // host offset of the pending run
	n     int   // length of the pending run (0: none)
}

func (r *runReader) add(pos int, host int64, l int) error {
	if r.n > 0 && r.host+int64(r.n) == host && r.start+r.n == pos {
		r.n += l
		return nil
	}
	if err := r.flush(); err != nil {
		return err
	}
	r.start, r.host, r.n = pos, host, l
	return nil
}

func (r *runReader) flush() error {
	if r.n == 0 {
		return nil
	}
	dst, host := r.p[r.start:r.start+r.n], r.host
	r.n = 0
	if r.c == nil {
		if err := blockdev.ReadFull(r.img.dev, dst, host); err != nil {
			return fmt.Errorf("qcow2: data at host offset %#x: %w", host, err)
		}
		return nil
	}
	return r.img.readEncrypted(r.c, dst, host)
}

// readEncrypted reads and decrypts len(dst) bytes at host offset host. The
// IV sector is the host offset / 512 (qemu qcow2 LUKS uses physical
// offsets). Whole sectors are decrypted in place; a partial sector at either
// end goes through a pooled sector buffer.
func (img *Image) readEncrypted(c *luksio.SectorCipher, dst []byte, host int64) error {
	for len(dst) > 0 {
		if host%sectorSize != 0 || len(dst) < sectorSize {
			sec := host &^ (sectorSize - 1)
			buf := sectorPool.Get().(*[sectorSize]byte)
			err := blockdev.ReadFull(img.dev, buf[:], sec)
			if err == nil {
				err = c.DecryptSectors(buf[:], buf[:], uint64(sec/sectorSize))
			}
			k := copy(dst, buf[host-sec:])
			clear(buf[:])
			sectorPool.Put(buf)
			if err != nil {
				return fmt.Errorf("qcow2: encrypted sector at host offset %#x: %w", sec, err)
			}
			dst, host = dst[k:], host+int64(k)
			continue
		}
		m := len(dst) &^ (sectorSize - 1)
		if err := blockdev.ReadFull(img.dev, dst[:m], host); err != nil {
			return fmt.Errorf("qcow2: encrypted data at host offset %#x: %w", host, err)
		}
		if err := c.DecryptSectors(dst[:m], dst[:m], uint64(host/sectorSize)); err != nil {
			clear(dst[:m])
			return fmt.Errorf("qcow2: decrypt at host offset %#x: %w", host, err)
		}
		dst, host = dst[m:], host+int64(m)
	}
	return nil
}
