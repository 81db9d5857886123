package qcowio

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/luksio"
)

// Writer defaults and limits.
const (
	// DefaultWriteClusterSize is qemu-img's default cluster size.
	DefaultWriteClusterSize = 64 << 10
	// writeChunk is the unit in which Write reads the plaintext ahead.
	writeChunk = 4 << 20
	// writeRefcountOrder gives 16-bit refcounts, as qemu writes them.
	writeRefcountOrder = 4
)

// WriteOptions controls Write.
type WriteOptions struct {
	// ClusterSize is a power of two from 4 KiB to 2 MiB (default 64 KiB).
	ClusterSize int64
	// LUKSArea and Cipher, both set, make a qcow2+LUKS image: LUKSArea is
	// the LUKS1 header area the full disk encryption header extension points
	// to (luksio.NewLUKS1, or the area of another image) and Cipher the
	// sector cipher of its volume key. Data clusters are encrypted with
	// IV = host offset / 512, as qemu does.
	LUKSArea []byte
	Cipher   *luksio.SectorCipher
	// Progress, if set, is called with the number of guest bytes processed.
	Progress func(n int64)
}

// Write writes plain as a qcow2 version 3 image to w, streaming: data
// clusters are appended in guest order (all-zero clusters stay
// unallocated), each L2 table follows its data, then come the L1 table, the
// refcount table and blocks, and last the header. Every cluster of the file
// is referenced exactly once, so `qemu-img check` finds neither leaks nor
// errors. A virtual size that is not a multiple of 512 is rounded up. It
// returns the file size. w must be empty (a fresh file): unwritten ranges
// are expected to read as zeros.
func Write(ctx context.Context, w io.WriterAt, plain blockdev.Device, opts WriteOptions) (int64, error) {
	cs := opts.ClusterSize
	if cs == 0 {
		cs = DefaultWriteClusterSize
	}
	if cs < 4096 || cs > 1<<maxClusterBits || cs&(cs-1) != 0 {
		return 0, fmt.Errorf("qcow2 write: cluster size %d is not a power of two from 4 KiB to 2 MiB", cs)
	}
	if (opts.LUKSArea == nil) != (opts.Cipher == nil) {
		return 0, errors.New("qcow2 write: an encrypted image needs both the LUKS area and the cipher")
	}
	if opts.Cipher != nil && opts.Cipher.SectorSize() != sectorSize {
		return 0, fmt.Errorf("qcow2 write: qcow2 encrypts 512-byte sectors, not %d", opts.Cipher.SectorSize())
	}
	size := (plain.Size() + sectorSize - 1) &^ (sectorSize - 1)
	if size > maxVirtualSize {
		return 0, fmt.Errorf("qcow2 write: virtual size %d exceeds %d: %w", size, int64(maxVirtualSize), blockdev.ErrUnsupported)
	}
	qw := &qwriter{w: w, cs: cs, l2Entries: cs / 8, c: opts.Cipher, cur: -1}
	clusters := (size + cs - 1) / cs
	l1Size := max(1, (clusters+qw.l2Entries-1)/qw.l2Entries)
	if l1Size*8 > maxL1TableBytes {
		return 0, fmt.Errorf("qcow2 write: L1 table of %d entries is too large; use larger clusters: %w", l1Size, blockdev.ErrUnsupported)
	}
	qw.l1 = make([]uint64, l1Size)
	qw.l2 = make([]uint64, qw.l2Entries)
	qw.next = cs // cluster 0 is the header
	var areaOff int64
	if opts.LUKSArea != nil {
		areaOff = qw.next
		if _, err := w.WriteAt(opts.LUKSArea, areaOff); err != nil {
			return 0, fmt.Errorf("qcow2 write: LUKS header area: %w", err)
		}
		qw.next += roundUpCluster(int64(len(opts.LUKSArea)), cs)
	}

	chunk := max(int64(writeChunk), cs)
	err := blockdev.ReadOrdered(ctx, plain, blockdev.OrderedOptions{ChunkSize: chunk}, func(off int64, n int, data []byte) error {
		// A hole allocates nothing: the clusters stay unallocated, and the
		// next data chunk moves to its own L2 table.
		if data != nil {
			if err := qw.consume(off, data); err != nil {
				return err
			}
		}
		if opts.Progress != nil {
			opts.Progress(int64(n))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if opts.Progress != nil && size > plain.Size() {
		opts.Progress(size - plain.Size()) // the rounding to 512, zeros
	}
	if err := qw.flushL2(); err != nil {
		return 0, err
	}
	l1Off, err := qw.writeL1()
	if err != nil {
		return 0, err
	}
	rtOff, rtClusters, end, err := qw.writeRefcounts()
	if err != nil {
		return 0, err
	}

	hdr := make([]byte, qcow2HeaderReadSize, cs)
	be := binary.BigEndian
	be.PutUint32(hdr[0:], qcow2Magic)
	be.PutUint32(hdr[4:], 3)
	be.PutUint32(hdr[20:], uint32(log2(cs)))
	be.PutUint64(hdr[24:], uint64(size))
	if opts.Cipher != nil {
		be.PutUint32(hdr[32:], cryptLUKS)
	}
	be.PutUint32(hdr[36:], uint32(l1Size))
	be.PutUint64(hdr[40:], uint64(l1Off))
	be.PutUint64(hdr[48:], uint64(rtOff))
	be.PutUint32(hdr[56:], uint32(rtClusters))
	be.PutUint32(hdr[96:], writeRefcountOrder)
	be.PutUint32(hdr[100:], qcow2HeaderReadSize)
	if opts.LUKSArea != nil {
		var ext [24]byte
		be.PutUint32(ext[0:], extCrypto)
		be.PutUint32(ext[4:], 16)
		be.PutUint64(ext[8:], uint64(areaOff))
		be.PutUint64(ext[16:], uint64(len(opts.LUKSArea)))
		hdr = append(hdr, ext[:]...)
	}
	hdr = append(hdr, make([]byte, 8)...) // end of extensions
	if _, err := w.WriteAt(hdr, 0); err != nil {
		return 0, fmt.Errorf("qcow2 write: header: %w", err)
	}
	return end, nil
}

// qwriter is the state of one Write.
type qwriter struct {
	w         io.WriterAt
	cs        int64
	l2Entries int64
	c         *luksio.SectorCipher
	next      int64 // next free host offset (cluster aligned)
	l1        []uint64
	l2        []uint64 // the L2 table of L1 entry cur
	cur       int64
	dirty     bool // l2 has an allocated entry
}

// consume allocates the non-zero clusters of buf (guest offset off, whole
// clusters but for the disk's last one) and writes them; runs of clusters
// are compacted in buf, encrypted in place and written with one call.
func (qw *qwriter) consume(off int64, buf []byte) error {
	cs := qw.cs
	n := int64(len(buf))
	runStart, runLen := int64(0), int64(0) // run of compacted clusters in buf, in cluster units
	var runHost int64
	flush := func() error {
		if runLen == 0 {
			return nil
		}
		data := buf[runStart*cs : (runStart+runLen)*cs]
		if err := qw.writeData(data, runHost); err != nil {
			return err
		}
		runLen = 0
		return nil
	}
	for k := int64(0); k*cs < n; k++ {
		gc := (off + k*cs) / cs
		if l1i := gc / qw.l2Entries; l1i != qw.cur {
			if err := flush(); err != nil {
				return err
			}
			if err := qw.flushL2(); err != nil {
				return err
			}
			qw.cur = l1i
		}
		cl := buf[k*cs : min((k+1)*cs, n)]
		if blockdev.AllZero(cl) {
			continue
		}
		if runLen == 0 {
			runStart, runHost = k, qw.next
		}
		dst := buf[(runStart+runLen)*cs:]
		if int64(len(cl)) < cs {
			// The disk's last, partial cluster: the buffer has room for a
			// whole cluster; pad it with zeros.
			if int64(cap(buf)) < (runStart+runLen+1)*cs {
				return fmt.Errorf("qcow2 write: internal: no room for the last cluster")
			}
			buf = buf[:(runStart+runLen+1)*cs]
			dst = buf[(runStart+runLen)*cs:]
			copy(dst, cl)
			clear(dst[len(cl):cs])
		} else if runStart+runLen != k {
			copy(dst[:cs], cl)
		}
		qw.l2[gc%qw.l2Entries] = uint64(qw.next) | oflagCopied
		qw.dirty = true
		qw.next += cs
		runLen++
	}
	return flush()
}

// writeData encrypts (if needed) and writes whole clusters at host.
func (qw *qwriter) writeData(data []byte, host int64) error {
	if qw.c != nil {
		if err := qw.c.EncryptSectors(data, data, uint64(host/sectorSize)); err != nil {
			return fmt.Errorf("qcow2 write: encrypt at host offset %#x: %w", host, err)
		}
	}
	if _, err := qw.w.WriteAt(data, host); err != nil {
		return fmt.Errorf("qcow2 write: data at %#x: %w", host, err)
	}
	return nil
}

// flushL2 writes the current L2 table after its data, if it maps anything.
func (qw *qwriter) flushL2() error {
	if qw.cur < 0 || !qw.dirty {
		return nil
	}
	b := make([]byte, qw.cs)
	for i, e := range qw.l2 {
		binary.BigEndian.PutUint64(b[i*8:], e)
	}
	if _, err := qw.w.WriteAt(b, qw.next); err != nil {
		return fmt.Errorf("qcow2 write: L2 table: %w", err)
	}
	qw.l1[qw.cur] = uint64(qw.next) | oflagCopied
	qw.next += qw.cs
	clear(qw.l2)
	qw.dirty = false
	return nil
}

// writeL1 writes the L1 table at the next free cluster.
func (qw *qwriter) writeL1() (int64, error) {
	off := qw.next
	b := make([]byte, roundUpCluster(int64(len(qw.l1))*8, qw.cs))
	for i, e := range qw.l1 {
		binary.BigEndian.PutUint64(b[i*8:], e)
	}
	if _, err := qw.w.WriteAt(b, off); err != nil {
		return 0, fmt.Errorf("qcow2 write: L1 table: %w", err)
	}
	qw.next += int64(len(b))
	return off, nil
}

// writeRefcounts writes the refcount table and blocks after everything
// else: every cluster of the file, including these, has refcount 1. It
// returns the table offset, its size in clusters and the file size.
func (qw *qwriter) writeRefcounts() (tableOff, tableClusters, end int64, err error) {
	cs := qw.cs
	used := qw.next / cs
	perBlock := cs / 2 // 16-bit refcounts
	var blocks int64
	total := used
	for {
		blocks = (total + perBlock - 1) / perBlock
		tableClusters = (blocks*8 + cs - 1) / cs
		if t := used + tableClusters + blocks; t != total {
			total = t
			continue
		}
		break
	}
	if tableClusters*cs > maxRefcountTableBytes {
		return 0, 0, 0, fmt.Errorf("qcow2 write: refcount table too large: %w", blockdev.ErrUnsupported)
	}
	tableOff = used * cs
	table := make([]byte, tableClusters*cs)
	for j := range blocks {
		binary.BigEndian.PutUint64(table[j*8:], uint64((used+tableClusters+j)*cs))
	}
	if _, err := qw.w.WriteAt(table, tableOff); err != nil {
		return 0, 0, 0, fmt.Errorf("qcow2 write: refcount table: %w", err)
	}
	blk := make([]byte, cs)
	for j := range blocks {
		clear(blk)
		for i := range perBlock {
			if j*perBlock+i < total {
				binary.BigEndian.PutUint16(blk[i*2:], 1)
			}
		}
		if _, err := qw.w.WriteAt(blk, (used+tableClusters+j)*cs); err != nil {
			return 0, 0, 0, fmt.Errorf("qcow2 write: refcount block: %w", err)
		}
	}
	return tableOff, tableClusters, total * cs, nil
}

func roundUpCluster(n, cs int64) int64 { return (n + cs - 1) / cs * cs }

func log2(n int64) int {
	b := 0
	for n > 1 {
		n >>= 1
		b++
	}
	return b
}
