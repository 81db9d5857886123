package qcowio

import (
	"bytes"
	"compress/flate"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/imgfs/imgfs/blockdev"
)

// zstdMaxMemory bounds the memory a zstd frame may ask the decoder for; a
// cluster is at most 2 MiB, so a legitimate frame needs far less.
const zstdMaxMemory = 16 << 20

var (
	flatePool = sync.Pool{New: func() any { return flate.NewReader(bytes.NewReader(nil)) }}
	zstdPool  = sync.Pool{New: func() any {
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(zstdMaxMemory))
		if err != nil {
			panic(err) // only invalid options fail
		}
		return d
	}}
	// inputPool holds buffers for compressed input (at most two clusters).
	inputPool = sync.Pool{New: func() any { return new([]byte) }}
)

// decompressed is a cached decompressed cluster.
type decompressed struct {
	cSize int64
	data  []byte
}

// readCompressed copies the part of a compressed cluster that e maps into dst.
func (img *Image) readCompressed(dst []byte, e extent) error {
	if d, ok := img.zcache.get(e.cOffset); ok && d.cSize == e.cSize {
		copy(dst, d.data[e.inCluster:])
		return nil
	}
	data, err := img.decompress(e.cOffset, e.cSize)
	if err != nil {
		return err
	}
	img.zcache.put(e.cOffset, decompressed{e.cSize, data})
	copy(dst, data[e.inCluster:])
	return nil
}

// decompress reads the compressed cluster at host offset off (size bytes,
// clipped at the end of the file: qemu rounds the size up to whole sectors)
// and inflates it to exactly one cluster.
func (img *Image) decompress(off, size int64) ([]byte, error) {
	if off <= 0 || off >= img.fileSize {
		return nil, fmt.Errorf("compressed cluster at %#x past the end of the file: %w", off, blockdev.ErrTruncated)
	}
	size = min(size, img.fileSize-off)
	bp := inputPool.Get().(*[]byte)
	defer inputPool.Put(bp)
	if int64(cap(*bp)) < size {
		*bp = make([]byte, size) // size <= 2 clusters by the descriptor format
	}
	in := (*bp)[:size]
	if err := blockdev.ReadFull(img.dev, in, off); err != nil {
		return nil, fmt.Errorf("compressed cluster at %#x: %w", off, err)
	}
	out := make([]byte, img.clusterSize)
	var err error
	switch img.compression {
	case compressionZlib:
		err = inflateZlib(out, in)
	case compressionZstd:
		err = inflateZstd(out, in)
	default:
		err = fmt.Errorf("compression type %d: %w", img.compression, blockdev.ErrUnsupported)
	}
	if err != nil {
		return nil, fmt.Errorf("compressed cluster at %#x (%d bytes): %w", off, size, err)
	}
	return out, nil
}

// inflateZlib inflates a raw deflate stream (qemu: window bits -12) into out.
func inflateZlib(out, in []byte) error {
	r := flatePool.Get().(io.ReadCloser)
	defer flatePool.Put(r)
	if err := r.(flate.Resetter).Reset(bytes.NewReader(in), nil); err != nil {
		return fmt.Errorf("zlib: %v: %w", err, blockdev.ErrCorrupt)
	}
	return fillCluster("zlib", r, out)
}

// inflateZstd decodes a zstd frame into out.
func inflateZstd(out, in []byte) error {
	d := zstdPool.Get().(*zstd.Decoder)
	defer func() {
		_ = d.Reset(nil)
		zstdPool.Put(d)
	}()
	n, err := zstdFrameLen(in)
	if err != nil {
		return err
	}
	if err := d.Reset(bytes.NewReader(in[:n])); err != nil {
		return fmt.Errorf("zstd: %v: %w", err, blockdev.ErrCorrupt)
	}
	return fillCluster("zstd", d, out)
}

// maxEmptyReads bounds reads that return neither data nor an error.
const maxEmptyReads = 16

// fillCluster reads exactly len(out) bytes from r and checks that the
// stream holds no more: a cluster that inflates to more or less than a
// cluster is corrupt. Trailing input after the stream (sector padding) is
// allowed, as in qemu.
func fillCluster(name string, r io.Reader, out []byte) error {
	if n, err := io.ReadFull(r, out); err != nil {
		return fmt.Errorf("%s: inflates to %d bytes, less than a cluster (%d): %v: %w", name, n, len(out), err, blockdev.ErrCorrupt)
	}
	var extra [1]byte
	for range maxEmptyReads {
		n, err := r.Read(extra[:])
		if n > 0 {
			return fmt.Errorf("%s: inflates past a cluster (%d bytes): %w", name, len(out), blockdev.ErrCorrupt)
		}
		if err != nil {
			// The cluster is complete; io.EOF or an error about bytes after
			// the stream (sector padding) both end it, as in qemu.
			return nil
		}
	}
	return nil
}

// zstd block types (RFC 8878 3.1.1.2).
const (
	zstdBlockRLE      = 1
	zstdBlockReserved = 3
)

// zstdFrameLen returns the length of the zstd frame at the start of in.
// qemu packs compressed clusters back to back, so the input read for one
// cluster (whole sectors) usually continues into the next cluster's frame.
func zstdFrameLen(in []byte) (int, error) {
	var h zstd.Header
	if err := h.Decode(in); err != nil {
		return 0, fmt.Errorf("zstd: frame header: %v: %w", err, blockdev.ErrCorrupt)
	}
	if h.Skippable {
		return 0, fmt.Errorf("zstd: skippable frame instead of data: %w", blockdev.ErrCorrupt)
	}
	pos := h.HeaderSize
	for {
		// Each block consumes at least its 3-byte header: the loop ends.
		if len(in)-pos < 3 {
			return 0, fmt.Errorf("zstd: frame truncated at block header %d: %w", pos, blockdev.ErrCorrupt)
		}
		bh := uint32(in[pos]) | uint32(in[pos+1])<<8 | uint32(in[pos+2])<<16
		pos += 3
		last, typ, size := bh&1 != 0, (bh>>1)&3, int(bh>>3)
		switch typ {
		case zstdBlockRLE:
			size = 1
		case zstdBlockReserved:
			return 0, fmt.Errorf("zstd: reserved block type: %w", blockdev.ErrCorrupt)
		}
		if size > len(in)-pos {
			return 0, fmt.Errorf("zstd: block of %d bytes past the end of the compressed data: %w", size, blockdev.ErrCorrupt)
		}
		pos += size
		if last {
			break
		}
	}
	if h.HasCheckSum {
		pos += 4
		if pos > len(in) {
			return 0, fmt.Errorf("zstd: frame checksum truncated: %w", blockdev.ErrCorrupt)
		}
	}
	return pos, nil
}
