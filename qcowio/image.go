package qcowio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"os"
	"slices"
	"sync"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/luksio"
)

// decompressedCacheBytes bounds the memory of cached decompressed clusters.
const decompressedCacheBytes = 8 << 20

// walkParallelism is how many L2 tables Open fetches at once.
const walkParallelism = 8

// eagerWalkBytes is the most L2 table bytes Open reads and checks before it
// returns (8 MiB: 128 tables of 64 KiB, mapping 64 GiB of allocated disk;
// or 2048 tables of 4 KiB, mapping 4 GiB). An image whose L1 table
// references more is opened with deferred L2 checks (see Open): walking a
// fully allocated 1 TiB disk with 64 KiB clusters would fetch 128 MiB of L2
// tables, over HTTP, just to read a partition table. Inspect always walks
// every table.
const eagerWalkBytes = 8 << 20

// walkAll is the walk budget of Inspect: no limit.
const walkAll = math.MaxInt64

// Image is an opened, policy-checked qcow2 image. It is a blockdev.Device
// and a blockdev.Mapper over the virtual disk; its methods are safe for
// concurrent use.
type Image struct {
	dev      blockdev.Device
	hdr      *header
	info     *Info
	size     int64
	fileSize int64

	clusterBits uint
	clusterSize int64
	l2Entries   uint64
	extL2       bool
	l1          []uint64
	l2cache     *lru[l2Table]
	l2bufs      sync.Pool // *[]byte of one cluster, for readL2
	l2flight    flight[l2Table]
	zcache      *lru[decompressed]

	// What the checks of an L2 table need, kept by the walk: the fixed
	// metadata and the sorted offsets of every L2 table L1 references.
	meta  []hostRange
	l2set []int64
	// checkFetches is set once Open returns: from then on every L2 table
	// fetched from the device below is checked before use, so a table the
	// walk checked and the cache later evicted is checked again when
	// re-read (a remote source could serve other bytes the second time).
	checkFetches bool
	// badL2 caches the verdict (an error wrapping ErrUnsafe) of each L2
	// table that failed its checks after Open, by host offset: reads and
	// map queries that need it fail at once, without fetching it again.
	badL2 sync.Map

	// Compressed cluster descriptor geometry.
	cOffsetMask uint64
	cSizeShift  uint
	cSizeMask   uint64
	compression uint8

	encrypted bool
	luksHdr   *luksio.Header
	luksArea  blockdev.Device

	mu     sync.RWMutex // guards cipher and closed
	cipher *luksio.SectorCipher
	closed bool
}

var (
	_ blockdev.Device = (*Image)(nil)
	_ blockdev.Mapper = (*Image)(nil)
)

// Inspect parses the header and evaluates the policy without refusing (for
// `imgfs info`). It errors only when dev is not qcow2 (ErrNotQcow2) or its
// header or tables cannot be read; every other problem is a reason in
// Info.Reasons.
func Inspect(dev blockdev.Device, pol Policy) (*Info, error) {
	img, _, err := inspect(dev, pol, walkAll)
	if err != nil {
		return nil, err
	}
	return img.info, nil
}

// Open inspects dev and refuses an unsafe image with an error wrapping
// ErrUnsafe (and the kind of each reason: ErrInsecureEncryption,
// blockdev.ErrCorrupt, ...) before reading any data.
//
// Open checks the header, the extensions, the LUKS header and every L1 entry
// (L2 table offsets aligned, inside the file, used once, off the metadata).
// When the L2 tables that L1 references total at most 8 MiB, it also reads
// and checks every L2 table and cluster descriptor, as Inspect does. Above
// that budget the L2 checks are deferred: each L2 table is checked, with the
// same rules, when a read or a map query (NextData, NextHole) first loads
// it, and a table that fails makes every read or query that needs it fail
// with the error Open would have returned for it (wrapping ErrUnsafe and
// blockdev.ErrCorrupt or blockdev.ErrTruncated); no byte it maps is ever
// returned. Info().DeferredL2Checks tells which mode was used, and
// Info().AllocatedBytes is then -1 (unknown).
func Open(dev blockdev.Device, pol Policy) (*Image, error) {
	return open(dev, pol, eagerWalkBytes)
}

// open is Open with the budget of L2 table bytes walked up front.
func open(dev blockdev.Device, pol Policy, walkBudget int64) (*Image, error) {
	img, v, err := inspect(dev, pol, walkBudget)
	if err != nil {
		return nil, err
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	img.checkFetches = true
	return img, nil
}

// inspect parses everything that Open checks and returns the image (usable
// only when the verdict is clean) and the verdict. The L2 tables are walked
// when they total at most walkBudget bytes; otherwise their checks are
// deferred to their first load.
func inspect(dev blockdev.Device, pol Policy, walkBudget int64) (*Image, *verdict, error) {
	v := &verdict{}
	h, err := readHeader(dev, v)
	if err != nil {
		return nil, nil, err
	}
	img := &Image{dev: dev, hdr: h, fileSize: dev.Size()}
	geometryOK := h.checkFields(img.fileSize, v)
	if h.clusterBits >= minClusterBits && h.clusterBits <= maxClusterBits {
		if err := h.readExtensions(dev, v); err != nil {
			return nil, nil, err
		}
	}
	h.checkPolicy(pol, v)
	img.info = newInfo(h, img.fileSize)
	if geometryOK {
		img.setGeometry()
		if err := img.readL1(); err != nil {
			return nil, nil, err
		}
		if h.cryptMethod == cryptLUKS && h.hasCrypto {
			img.readLUKSHeader(v)
		}
		if err := img.walk(v, walkBudget); err != nil {
			return nil, nil, err
		}
	}
	img.info.Safe = len(v.reasons) == 0
	if !img.info.Safe {
		img.info.Reasons = v.messages()
	}
	return img, v, nil
}

func (img *Image) setGeometry() {
	h := img.hdr
	img.size = int64(h.size)
	img.clusterBits = uint(h.clusterBits)
	img.clusterSize = 1 << h.clusterBits
	img.extL2 = h.incompat&incompatExtendedL2 != 0
	img.l2Entries = h.l2Entries()
	img.cSizeShift = 62 - (img.clusterBits - 8)
	img.cSizeMask = 1<<(img.clusterBits-8) - 1
	img.cOffsetMask = 1<<img.cSizeShift - 1
	img.compression = h.compressionType
	img.encrypted = h.cryptMethod != cryptNone
	img.l2cache = newLRU[l2Table](l2CacheBytes, img.clusterSize, 4)
	cs := img.clusterSize
	img.l2bufs.New = func() any { b := make([]byte, cs); return &b }
	img.zcache = newLRU[decompressed](decompressedCacheBytes, img.clusterSize, 2)
}

// readL1 reads the L1 entries that cover the virtual size (checkFields has
// bounded and placed the table). It reads in pieces of l1ReadBytes, so the
// table is not held twice (bytes and entries) at its 32 MiB cap.
func (img *Image) readL1() error {
	n := img.hdr.l1Needed() // n*8 <= maxL1TableBytes
	img.l1 = make([]uint64, n)
	buf := make([]byte, min(n*8, l1ReadBytes))
	for done := uint64(0); done < n; {
		k := min(n-done, uint64(len(buf))/8)
		if err := blockdev.ReadFull(img.dev, buf[:k*8], int64(img.hdr.l1TableOffset+done*8)); err != nil {
			return fmt.Errorf("qcow2: L1 table: %w", err)
		}
		for i := range k {
			img.l1[done+i] = binary.BigEndian.Uint64(buf[i*8:])
		}
		done += k
	}
	return nil
}

// l1ReadBytes is the piece in which readL1 reads the L1 table.
const l1ReadBytes = 1 << 20

// walk checks every L1 entry, L2 table and cluster descriptor that maps the
// virtual disk and counts the allocated bytes. Each L2 table is read once:
// an L2 table referenced twice is corrupt, so the walk reads at most the
// file's size. L2 tables and the clusters that reads would use must not
// overlap the image's metadata (header cluster, L1 table, refcount table,
// LUKS header, L2 tables): a crafted image could otherwise loop its tables
// into each other or serve its own metadata as disk data.
//
// When the L2 tables total more than budget bytes, walk checks only the L1
// entries (which need no L2 read), sets Info.DeferredL2Checks and leaves
// each table's checks to checkFetched when it is first loaded.
func (img *Image) walk(v *verdict, budget int64) error {
	img.meta = img.metadataRanges()
	// Compact structures only: an L1 table may have 4Mi entries (the 32
	// MiB cap), each with a table of its own. The referenced offsets go to
	// one slice that is sorted to find tables used twice, and a bitmap over
	// the L1 entries marks those whose table is checked; no map or slice of
	// structs over all entries is built.
	valid := make([]uint64, (len(img.l1)+63)/64)
	refs := make([]int64, 0, len(img.l1))
	for l1i := range uint64(len(img.l1)) {
		l2off, err := img.l2Offset(l1i)
		if err != nil {
			v.add(blockdev.ErrCorrupt, "%v", err)
			continue
		}
		if l2off == 0 {
			continue
		}
		switch {
		case l2off%img.clusterSize != 0:
			v.add(blockdev.ErrCorrupt, "L1 entry %d: L2 table offset %#x not cluster aligned", l1i, l2off)
			continue
		case !inFile(uint64(l2off), uint64(img.clusterSize), img.fileSize):
			v.add(blockdev.ErrTruncated, "L1 entry %d: L2 table at %#x outside the file (%d bytes)", l1i, l2off, img.fileSize)
			continue
		}
		if name := overlaps(img.meta, l2off, img.clusterSize); name != "" {
			v.add(blockdev.ErrCorrupt, "L1 entry %d: L2 table at %#x overlaps the %s", l1i, l2off, name)
			continue
		}
		valid[l1i/64] |= 1 << (l1i % 64)
		refs = append(refs, l2off)
	}
	slices.Sort(refs)
	// Tables referenced more than once: every reference after the first,
	// in L1 order, is refused (and its entry left unchecked).
	var dups []int64
	for i := 1; i < len(refs); i++ {
		if refs[i] == refs[i-1] && (len(dups) == 0 || dups[len(dups)-1] != refs[i]) {
			dups = append(dups, refs[i])
		}
	}
	if len(dups) > 0 {
		firstSeen := make([]bool, len(dups))
		for l1i := range uint64(len(img.l1)) {
			if valid[l1i/64]&(1<<(l1i%64)) == 0 {
				continue
			}
			l2off := int64(img.l1[l1i] & l1OffsetMask)
			d, ok := slices.BinarySearch(dups, l2off)
			if !ok {
				continue
			}
			if !firstSeen[d] {
				firstSeen[d] = true
				continue
			}
			v.add(blockdev.ErrCorrupt, "L1 entry %d: L2 table at %#x used twice", l1i, l2off)
			valid[l1i/64] &^= 1 << (l1i % 64)
		}
	}
	img.l2set = slices.Compact(refs)
	if len(img.l2set) < cap(refs)/2 {
		// Most L1 entries are empty (a sparse disk) or repeated: do not
		// keep a slice sized for all of them for the image's lifetime.
		img.l2set = slices.Clone(img.l2set)
	}
	tables := len(img.l2set)
	// tables <= maxL1TableBytes/8 and clusterSize <= 2 MiB: no overflow.
	if int64(tables)*img.clusterSize > budget {
		img.info.DeferredL2Checks = true
		img.info.AllocatedBytes = -1
		return nil
	}
	var allocated int64
	var err error
	if budget == walkAll {
		allocated, err = img.walkRuns(v, valid)
	} else {
		allocated, err = img.walkCached(v, valid)
	}
	if err != nil {
		return err
	}
	img.info.AllocatedBytes = allocated
	return nil
}

// forEachValid calls fn with every L1 index whose bit is set in valid, in
// order, until fn fails.
func forEachValid(valid []uint64, fn func(l1i uint64) error) error {
	for w, word := range valid {
		for word != 0 {
			b := uint64(bits.TrailingZeros64(word))
			word &= word - 1
			if err := fn(uint64(w)*64 + b); err != nil {
				return err
			}
		}
	}
	return nil
}

// walkCached is Open's walk (at most eagerWalkBytes of tables): it loads the
// tables of the L1 entries marked in valid through the L2 cache, where the
// reads that follow find them, walkParallelism at a time (over HTTP each is
// a request, and Open should not pay their latencies one after another),
// and checks them in L1 order.
func (img *Image) walkCached(v *verdict, valid []uint64) (int64, error) {
	var allocated int64
	var batch [walkParallelism]uint64 // L1 indexes
	var loaded [walkParallelism]l2Table
	var errs [walkParallelism]error
	n := 0
	flush := func() error {
		var wg sync.WaitGroup
		for i := range n {
			l1i := batch[i]
			wg.Go(func() { loaded[i], errs[i] = img.loadL2(l1i, int64(img.l1[l1i]&l1OffsetMask)) })
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				return errs[i]
			}
			allocated += img.checkL2(v, batch[i], int64(img.l1[batch[i]]&l1OffsetMask), loaded[i])
			loaded[i] = nil
		}
		n = 0
		return nil
	}
	err := forEachValid(valid, func(l1i uint64) error {
		batch[n] = l1i
		if n++; n == walkParallelism {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	return allocated, err
}

// walkRunBytes is the most L2 table bytes walkRuns reads at once.
const walkRunBytes = 256 << 10

// walkRuns is Inspect's walk, which has no budget: an L1 table of 4Mi
// entries may reference 4Mi tables. Tables that follow each other in the
// file, for L1 entries that follow each other, are read as one run of up
// to walkRunBytes into reused buffers (walkParallelism runs at a time),
// neither allocated one by one nor cached (Inspect reads no data), and
// checked in L1 order.
func (img *Image) walkRuns(v *verdict, valid []uint64) (int64, error) {
	cs := img.clusterSize
	per := max(1, int(walkRunBytes/cs))
	var runs [walkParallelism][]uint64 // L1 indexes of each run
	var bufs [walkParallelism][]byte
	var errs [walkParallelism]error
	for i := range walkParallelism {
		runs[i] = make([]uint64, 0, per)
		bufs[i] = make([]byte, int64(per)*cs)
	}
	table := make(l2Table, cs/8)
	var allocated int64
	n := 0 // runs started
	flush := func() error {
		var wg sync.WaitGroup
		for i := range n {
			first := int64(img.l1[runs[i][0]] & l1OffsetMask)
			buf := bufs[i][:int64(len(runs[i]))*cs]
			wg.Go(func() {
				if err := blockdev.ReadFull(img.dev, buf, first); err != nil {
					errs[i] = fmt.Errorf("qcow2: L2 table at %#x: %w", first, err)
				}
			})
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				return errs[i]
			}
			for k, l1i := range runs[i] {
				b := bufs[i][int64(k)*cs:]
				for j := range table {
					table[j] = binary.BigEndian.Uint64(b[j*8:])
				}
				allocated += img.checkL2(v, l1i, int64(img.l1[l1i]&l1OffsetMask), table)
			}
			runs[i] = runs[i][:0]
		}
		n = 0
		return nil
	}
	var last int64 // table offset of the last L1 entry added
	err := forEachValid(valid, func(l1i uint64) error {
		off := int64(img.l1[l1i] & l1OffsetMask)
		if n > 0 && len(runs[n-1]) < per && off == last+cs {
			runs[n-1] = append(runs[n-1], l1i)
		} else {
			if n == walkParallelism {
				if err := flush(); err != nil {
					return err
				}
			}
			runs[n] = append(runs[n], l1i)
			n++
		}
		last = off
		return nil
	})
	if err == nil {
		err = flush()
	}
	return allocated, err
}

// checkL2 checks the entries of the L2 table t (at l2off, for L1 entry l1i)
// that map the disk and returns the allocated bytes they count. It needs
// img.meta and img.l2set (set by walk).
func (img *Image) checkL2(v *verdict, l1i uint64, l2off int64, t l2Table) int64 {
	var allocated int64
	clusters := uint64(img.size+img.clusterSize-1) >> img.clusterBits
	first := l1i * img.l2Entries
	n := min(img.l2Entries, clusters-first)
	for l2i := range n {
		var desc, bitmap uint64
		if img.extL2 {
			desc, bitmap = t[2*l2i], t[2*l2i+1]
		} else {
			desc = t[l2i]
		}
		if desc == 0 && bitmap == 0 {
			continue
		}
		guest := int64(first+l2i) << img.clusterBits
		used := min(img.clusterSize, img.size-guest)
		b, err := img.checkDescriptor(desc, bitmap, used)
		if err == nil && b > 0 {
			err = img.checkDataOverlap(desc)
		}
		if err != nil {
			kind := blockdev.ErrCorrupt
			if errors.Is(err, blockdev.ErrTruncated) {
				kind = blockdev.ErrTruncated
			}
			v.add(kind, "cluster %d (L2 table %#x entry %d): %v", first+l2i, l2off, l2i, err)
			continue
		}
		allocated += b
	}
	return allocated
}

// hostRange is a named range of metadata in the image file.
type hostRange struct {
	off, n int64
	name   string
}

// metadataRanges lists the fixed metadata of the image file.
func (img *Image) metadataRanges() []hostRange {
	h := img.hdr
	r := []hostRange{
		{0, img.clusterSize, "header cluster"},
		{int64(h.l1TableOffset), int64(len(img.l1)) * 8, "L1 table"},
	}
	if rt := uint64(h.refcountTableClusters) * uint64(img.clusterSize); rt <= maxRefcountTableBytes && h.refcountTableOffset < maxHostOffset {
		r = append(r, hostRange{int64(h.refcountTableOffset), int64(rt), "refcount table"})
	}
	if h.hasCrypto && h.cryptoLength <= maxLUKSAreaBytes && h.cryptoOffset < maxHostOffset {
		r = append(r, hostRange{int64(h.cryptoOffset), int64(h.cryptoLength), "LUKS header"})
	}
	return r
}

// overlaps returns the name of the first range of meta that [off, off+n)
// overlaps, or "".
func overlaps(meta []hostRange, off, n int64) string {
	for _, m := range meta {
		if m.n > 0 && off < m.off+m.n && m.off < off+n {
			return m.name
		}
	}
	return ""
}

// checkDataOverlap refuses a data or compressed cluster that lies on
// metadata (img.meta) or on an L2 table (img.l2set).
func (img *Image) checkDataOverlap(desc uint64) error {
	off, n := int64(desc&l2OffsetMask), img.clusterSize
	if desc&oflagCompressed != 0 {
		e, err := img.classify(desc, 0, 0)
		if err != nil {
			return err
		}
		off, n = e.cOffset, min(e.cSize, img.fileSize-e.cOffset)
	}
	what := "data"
	if desc&oflagCompressed != 0 {
		what = "compressed data"
	}
	if name := overlaps(img.meta, off, n); name != "" {
		return fmt.Errorf("%s at %#x overlaps the %s: %w", what, off, name, blockdev.ErrCorrupt)
	}
	for c := off &^ (img.clusterSize - 1); c < off+n; c += img.clusterSize {
		if _, ok := slices.BinarySearch(img.l2set, c); ok {
			return fmt.Errorf("%s at %#x overlaps the L2 table at %#x: %w", what, off, c, blockdev.ErrCorrupt)
		}
	}
	return nil
}

// checkDescriptor validates one L2 entry against the file and returns the
// host bytes it occupies; used is how much of the cluster the disk covers.
func (img *Image) checkDescriptor(desc, bitmap uint64, used int64) (int64, error) {
	e, err := img.classify(desc, bitmap, 0)
	if err != nil {
		return 0, err
	}
	switch {
	case e.kind == kindCompressed:
		return min(e.cSize, img.fileSize-e.cOffset), nil
	case desc&oflagCompressed == 0 && desc&l2OffsetMask != 0:
		host := int64(desc & l2OffsetMask)
		end := used
		if img.extL2 {
			// Only allocated subclusters need to exist in the file.
			alloc := uint32(bitmap)
			if alloc == 0 {
				return 0, nil
			}
			last := 31 - bits.LeadingZeros32(alloc)
			end = min(used, int64(last+1)*(img.clusterSize/subclustersPerCluster))
		} else if desc&oflagZero != 0 {
			return 0, nil
		}
		if !inFile(uint64(host), uint64(end), img.fileSize) {
			return 0, fmt.Errorf("data cluster at %#x past the end of the file (%d bytes): %w", host, img.fileSize, blockdev.ErrTruncated)
		}
		return img.clusterSize, nil
	}
	return 0, nil
}

// Info returns the inspection result of the image. The caller must not
// modify it.
func (img *Image) Info() *Info { return img.info }

// Encrypted reports whether the image is encrypted (and so needs Unlock).
func (img *Image) Encrypted() bool { return img.encrypted }

// Size returns the virtual disk size.
func (img *Image) Size() int64 { return img.size }

// Close forgets and zeroes the key. Reads after Close fail. The device
// below belongs to the caller and stays open.
func (img *Image) Close() error {
	img.mu.Lock()
	defer img.mu.Unlock()
	img.closed = true
	img.dropKeyLocked()
	return nil
}

var errClosed = fmt.Errorf("qcow2: image is closed: %w", os.ErrClosed)
