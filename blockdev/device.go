// Package blockdev is the contract every imgfs layer shares: Device (an
// io.ReaderAt of fixed size) with its optional abilities (VectorReader,
// Mapper), local files, sections of other devices, the ordered parallel
// read behind cat and export, and the counters remote sources keep. It uses
// the standard library only; remote sources live in blockdev/remote and
// blockdev/rbd.
//
// Every layer of imgfs is a Device: an io.ReaderAt of a fixed size. A layer
// takes the Device below it and is itself a Device, so a whole read path is a
// chain of constructors.
package blockdev

import (
	"errors"
	"fmt"
	"io"
)

// Device is a readable byte range of fixed size. ReadAt follows io.ReaderAt:
// a read that ends past Size returns the bytes up to Size and io.EOF.
type Device interface {
	io.ReaderAt
	Size() int64
}

// VectorReader is implemented by devices that fill several buffers from
// consecutive bytes at once: ReadVecAt fills bufs[0] from off, bufs[1]
// from off+len(bufs[0]), and so on, and returns an error unless every
// buffer is full. HTTP does it with one range request, so a Cache fetches a
// run of blocks straight into the blocks' own buffers, without a copy.
type VectorReader interface {
	ReadVecAt(bufs [][]byte, off int64) error
}

// ReadVec fills bufs from consecutive bytes of d at off: with one
// ReadVecAt when d is a VectorReader, else with one ReadFull per buffer.
func ReadVec(d Device, bufs [][]byte, off int64) error {
	if vr, ok := d.(VectorReader); ok {
		return vr.ReadVecAt(bufs, off)
	}
	for _, b := range bufs {
		if err := ReadFull(d, b, off); err != nil {
			return err
		}
		off += int64(len(b))
	}
	return nil
}

// Mapper is implemented by devices that know where their data is. Offsets
// are in the device's own address space. NextData returns the first offset
// >= off that may hold data, NextHole the first offset >= off that is a hole
// (Size() if there is none). Both return io.EOF when off >= Size(). As with
// SEEK_DATA, NextData may stop early and return an offset in a hole (a qcow2
// image bounds the tables one call reads); it never skips data, and callers
// read what it returns.
type Mapper interface {
	NextData(off int64) (int64, error)
	NextHole(off int64) (int64, error)
}

// Error kinds shared by every layer. Callers test them with errors.Is; each
// layer wraps them with its own context.
var (
	// ErrCorrupt means the image contradicts its own format.
	ErrCorrupt = errors.New("corrupt image")
	// ErrTruncated means the image is shorter than its headers say.
	ErrTruncated = errors.New("truncated image")
	// ErrUnsupported means a valid feature that imgfs does not implement.
	ErrUnsupported = errors.New("unsupported")
)

// ReadFull reads exactly len(p) bytes at off from d. A short read is reported
// as ErrTruncated (wrapped with the offset), never padded.
func ReadFull(d io.ReaderAt, p []byte, off int64) error {
	n, err := d.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("read %d bytes at %d: got %d: %w", len(p), off, n, ErrTruncated)
	}
	return fmt.Errorf("read %d bytes at %d: %w", len(p), off, err)
}

// Clip limits a read of len(p) bytes at off to a device of the given size:
// it returns how many bytes lie inside the device, and io.EOF if that is
// fewer than len(p).
func Clip(p []byte, off, size int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	if rem := size - off; int64(len(p)) > rem {
		return int(rem), io.EOF
	}
	return len(p), nil
}
