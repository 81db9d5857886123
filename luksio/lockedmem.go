package luksio

import "runtime"

// lockedBuf is key memory from lockedAlloc. free zeroes and releases it; if
// its owner becomes unreachable without free, a runtime cleanup releases
// the pages (already zeroed or not: they are unmapped, never reused as Go
// heap).
type lockedBuf struct {
	b, mem  []byte
	cleanup runtime.Cleanup
}

// newLockedBuf allocates n bytes of key memory owned by owner.
func newLockedBuf[T any](owner *T, n int) lockedBuf {
	b, mem := lockedAlloc(n)
	lb := lockedBuf{b: b, mem: mem}
	if mem != nil {
		lb.cleanup = runtime.AddCleanup(owner, func(m []byte) { lockedFree(m, m) }, mem)
	}
	return lb
}

// free zeroes the memory and unlocks and unmaps its pages. The buffer must
// not be used afterwards; free may be called again.
func (lb *lockedBuf) free() {
	lb.cleanup.Stop()
	lockedFree(lb.b, lb.mem)
	*lb = lockedBuf{}
}
