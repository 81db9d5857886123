package qcowio

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/imgfs/imgfs/blockdev"
)

// L1 and L2 entry bits (qcow2.txt "Cluster mapping").
const (
	oflagCopied     = 1 << 63
	oflagCompressed = 1 << 62
	oflagZero       = 1 << 0
	// l1OffsetMask and l2OffsetMask select bits 9-55: a host offset.
	l1OffsetMask = 0x00fffffffffffe00
	l2OffsetMask = 0x00fffffffffffe00
	// l1Reserved are the bits of an L1 entry that must be zero.
	l1Reserved = 0x7f000000000001ff
	// l2Reserved are the bits of a standard cluster descriptor that must be
	// zero (bit 0, the zero flag, is checked separately).
	l2Reserved = 0x3f000000000001fe
	// subclustersPerCluster is fixed by the extended L2 format.
	subclustersPerCluster = 32
)

// l2CacheBytes bounds the memory of cached L2 tables.
const l2CacheBytes = 32 << 20

// extentKind is what a guest range maps to.
type extentKind uint8

const (
	kindUnallocated extentKind = iota // reads as zeros (no backing file)
	kindZero                          // explicitly zero
	kindData                          // host data at extent.host
	kindCompressed                    // a compressed cluster
)

// extent describes the guest range [off, off+length) that maps uniformly.
type extent struct {
	kind   extentKind
	length int64
	// host is the host offset of off: always for kindData, and for
	// kindZero/kindUnallocated in an allocated cluster (preallocated
	// zeros, unallocated subclusters), where qemu-img map shows it; 0
	// otherwise. Reads of those kinds never use it.
	host int64
	// kindCompressed: the descriptor and the offset of off in the cluster.
	cOffset, cSize int64
	inCluster      int64
}

// l2Table is one decoded L2 table: entries, two words per entry with
// extended L2 (descriptor, subcluster bitmap).
type l2Table []uint64

// loadL2 returns the L2 table at host offset off (the table of L1 entry
// l1i), from the cache if present. Concurrent misses on the same table share
// one read of the device below. After Open, a table fetched from the device
// is checked before it is used or cached (checkFetched), and a table that
// failed fails at once.
func (img *Image) loadL2(l1i uint64, off int64) (l2Table, error) {
	if err, ok := img.badL2.Load(off); ok {
		return nil, err.(error)
	}
	if t, ok := img.l2cache.get(off); ok {
		return t, nil
	}
	return img.l2flight.do(off, func() (l2Table, error) {
		if t, ok := img.l2cache.get(off); ok {
			return t, nil
		}
		t, err := img.readL2(off)
		if err != nil {
			return nil, err
		}
		if err := img.checkFetched(l1i, off, t); err != nil {
			return nil, err
		}
		img.l2cache.put(off, t)
		return t, nil
	})
}

// checkFetched applies the checks of Open's walk to the L2 table t just
// fetched for L1 entry l1i (nothing before Open returns: the walk checks
// what it fetches). A failing table's verdict is cached in img.badL2: it is
// the error Open gives for that table (wrapping ErrUnsafe), and every later
// read or map query that needs the table returns it without fetching it.
func (img *Image) checkFetched(l1i uint64, off int64, t l2Table) error {
	if !img.checkFetches {
		return nil
	}
	v := &verdict{}
	img.checkL2(v, l1i, off, t)
	err := v.err()
	if err != nil {
		img.badL2.Store(off, err)
	}
	return err
}

// readL2 reads and decodes the L2 table at host offset off. The bytes are
// read into a pooled cluster buffer: a scan of the data map may load tens
// of thousands of tables, and only the decoded tables need to stay.
func (img *Image) readL2(off int64) (l2Table, error) {
	t := make(l2Table, img.clusterSize/8)
	buf := img.l2bufs.Get().(*[]byte)
	defer img.l2bufs.Put(buf)
	if err := img.readL2Into(t, *buf, off); err != nil {
		return nil, err
	}
	return t, nil
}

// readL2Into reads and decodes the L2 table at host offset off into t,
// using buf (both one cluster long) for the bytes read.
func (img *Image) readL2Into(t l2Table, buf []byte, off int64) error {
	if off%img.clusterSize != 0 {
		return fmt.Errorf("qcow2: L2 table offset %#x not cluster aligned: %w", off, blockdev.ErrCorrupt)
	}
	if !inFile(uint64(off), uint64(img.clusterSize), img.fileSize) {
		return fmt.Errorf("qcow2: L2 table at %#x past the end of the file (%d bytes): %w", off, img.fileSize, blockdev.ErrTruncated)
	}
	if err := blockdev.ReadFull(img.dev, buf, off); err != nil {
		return fmt.Errorf("qcow2: L2 table at %#x: %w", off, err)
	}
	for i := range t {
		t[i] = binary.BigEndian.Uint64(buf[i*8:])
	}
	return nil
}

// l2Offset validates an L1 entry and returns its L2 table offset (0: none).
func (img *Image) l2Offset(l1i uint64) (int64, error) {
	e := img.l1[l1i]
	if e&l1Reserved != 0 {
		return 0, fmt.Errorf("qcow2: L1 entry %d (%#x): reserved bits set: %w", l1i, e, blockdev.ErrCorrupt)
	}
	return int64(e & l1OffsetMask), nil
}

// lookup maps the guest offset off (0 <= off < Size) to an extent.
func (img *Image) lookup(off int64) (extent, error) {
	ci := uint64(off) >> img.clusterBits
	l1i, l2i := ci/img.l2Entries, ci%img.l2Entries
	inCluster := off & (img.clusterSize - 1)
	if l1i >= uint64(len(img.l1)) {
		return extent{}, fmt.Errorf("qcow2: offset %d beyond the L1 table: %w", off, blockdev.ErrCorrupt)
	}
	l2off, err := img.l2Offset(l1i)
	if err != nil {
		return extent{}, err
	}
	if l2off == 0 {
		rest := int64(img.l2Entries-l2i)<<img.clusterBits - inCluster
		return extent{kind: kindUnallocated, length: rest}, nil
	}
	t, err := img.loadL2(l1i, l2off)
	if err != nil {
		if errors.Is(err, ErrUnsafe) {
			return extent{}, err // the table's verdict, worded as Open's
		}
		return extent{}, fmt.Errorf("qcow2: L1 entry %d: %w", l1i, err)
	}
	var desc, bitmap uint64
	if img.extL2 {
		desc, bitmap = t[2*l2i], t[2*l2i+1]
	} else {
		desc = t[l2i]
	}
	e, err := img.classify(desc, bitmap, inCluster)
	if err != nil {
		return extent{}, fmt.Errorf("qcow2: cluster %d (L2 table %#x entry %d): %w", ci, l2off, l2i, err)
	}
	return e, nil
}

// classify decodes one L2 entry for the byte inCluster of its cluster.
func (img *Image) classify(desc, bitmap uint64, inCluster int64) (extent, error) {
	rest := img.clusterSize - inCluster
	if desc&oflagCompressed != 0 {
		if img.encrypted {
			return extent{}, fmt.Errorf("compressed cluster in an encrypted image: %w", blockdev.ErrCorrupt)
		}
		coff := int64(desc & img.cOffsetMask)
		nsec := int64((desc>>img.cSizeShift)&img.cSizeMask) + 1
		csize := nsec*512 - coff&511
		if coff < img.clusterSize {
			return extent{}, fmt.Errorf("compressed cluster at %#x inside the header cluster: %w", coff, blockdev.ErrCorrupt)
		}
		if coff >= img.fileSize {
			return extent{}, fmt.Errorf("compressed cluster at %#x past the end of the file (%d bytes): %w", coff, img.fileSize, blockdev.ErrTruncated)
		}
		return extent{kind: kindCompressed, length: rest, cOffset: coff, cSize: csize, inCluster: inCluster}, nil
	}
	if desc&l2Reserved != 0 {
		return extent{}, fmt.Errorf("descriptor %#x: reserved bits set: %w", desc, blockdev.ErrCorrupt)
	}
	host := int64(desc & l2OffsetMask)
	if host&(img.clusterSize-1) != 0 {
		return extent{}, fmt.Errorf("data cluster offset %#x not cluster aligned: %w", host, blockdev.ErrCorrupt)
	}
	if !img.extL2 {
		switch {
		case desc&oflagZero != 0 && host != 0:
			return extent{kind: kindZero, length: rest, host: host + inCluster}, nil
		case desc&oflagZero != 0:
			return extent{kind: kindZero, length: rest}, nil
		case host == 0:
			return extent{kind: kindUnallocated, length: rest}, nil
		}
		return extent{kind: kindData, length: rest, host: host + inCluster}, nil
	}
	if desc&oflagZero != 0 {
		return extent{}, fmt.Errorf("descriptor %#x: reserved bit 0 set with extended L2: %w", desc, blockdev.ErrCorrupt)
	}
	alloc, zero := uint32(bitmap), uint32(bitmap>>32)
	if alloc&zero != 0 {
		return extent{}, fmt.Errorf("subcluster bitmap %#x: subclusters both allocated and zero: %w", bitmap, blockdev.ErrCorrupt)
	}
	if host == 0 && alloc != 0 {
		return extent{}, fmt.Errorf("subcluster bitmap %#x: allocated subclusters in an unallocated cluster: %w", bitmap, blockdev.ErrCorrupt)
	}
	scSize := img.clusterSize / subclustersPerCluster
	sc := uint(inCluster / scSize)
	kindOf := func(i uint) extentKind {
		switch {
		case zero&(1<<i) != 0:
			return kindZero
		case alloc&(1<<i) != 0:
			return kindData
		}
		return kindUnallocated
	}
	k := kindOf(sc)
	end := sc + 1
	for end < subclustersPerCluster && kindOf(end) == k {
		end++
	}
	e := extent{kind: k, length: int64(end)*scSize - inCluster}
	if host != 0 {
		e.host = host + inCluster
	}
	return e, nil
}
