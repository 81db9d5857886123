package qcowio

import "io"

// NextData returns the first offset >= off that holds data (allocated or
// compressed clusters), or Size() if there is none; io.EOF when off >= Size().
// Zero and unallocated clusters are holes. It implements blockdev.Mapper.
//
// One call loads at most nextScanBytes of L2 tables and at most
// nextScanTables tables: when the hole goes on past them, NextData returns
// the offset where it stopped, which may be a hole (reported as possible
// data, as SEEK_DATA may; a reader then reads zeros there and asks again,
// and the next call starts past it). Without the bound one call on a
// crafted image whose 4Mi L1 entries each point to a zeroed L2 table would
// load all 4Mi tables (tens of seconds) to answer a 512-byte read.
func (img *Image) NextData(off int64) (int64, error) {
	return img.next(off, true)
}

// NextHole returns the first offset >= off that is a hole (zero or
// unallocated), or Size() if there is none; io.EOF when off >= Size().
func (img *Image) NextHole(off int64) (int64, error) {
	return img.next(off, false)
}

// nextScanBytes and nextScanTables bound the L2 tables one NextData call
// loads. The work of a scan is mostly proportional to the entries it
// examines, so the first bound is in bytes: 32 MiB, the L2 cache, is 512
// tables of 64 KiB mapping 256 GiB. Small tables cost a read and a check
// each whatever their size, so the second bound counts them: 16384 tables
// of 512 bytes (8 MiB, mapping 512 MiB).
const (
	nextScanBytes  = l2CacheBytes
	nextScanTables = 16384
)

func (img *Image) next(off int64, data bool) (int64, error) {
	if off < 0 {
		off = 0
	}
	if off >= img.size {
		return 0, io.EOF
	}
	img.mu.RLock()
	closed := img.closed
	img.mu.RUnlock()
	if closed {
		return 0, errClosed
	}
	// L2 tables this call has loaded (a table counts once: lookups inside
	// one table follow each other).
	var tables int64
	lastL1 := ^uint64(0)
	for off < img.size {
		if data {
			if l1i := (uint64(off) >> img.clusterBits) / img.l2Entries; l1i != lastL1 {
				lastL1 = l1i
				if l1i < uint64(len(img.l1)) && img.l1[l1i]&l1OffsetMask != 0 {
					if tables*img.clusterSize >= nextScanBytes || tables >= nextScanTables {
						return off, nil
					}
					tables++
				}
			}
		}
		e, err := img.lookup(off)
		if err != nil {
			return 0, err
		}
		isData := e.kind == kindData || e.kind == kindCompressed
		if isData == data {
			return off, nil
		}
		off += e.length
	}
	return img.size, nil
}
