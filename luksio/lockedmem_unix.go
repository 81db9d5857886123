//go:build unix

package luksio

import "golang.org/x/sys/unix"

// lockedAlloc returns n zeroed bytes for a volume key on anonymous pages of
// their own (so that no other data shares, and no other Close unlocks,
// them), locked in RAM with mlock and excluded from core dumps, best
// effort: without CAP_IPC_LOCK and above RLIMIT_MEMLOCK mlock fails with
// EPERM or ENOMEM and the pages stay swappable. mem is the mapping to pass
// to lockedFree, nil when mmap failed and b is ordinary heap memory.
func lockedAlloc(n int) (b, mem []byte) {
	size := (n + unix.Getpagesize() - 1) / unix.Getpagesize() * unix.Getpagesize()
	mem, err := unix.Mmap(-1, 0, max(size, unix.Getpagesize()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return make([]byte, n), nil
	}
	_ = unix.Mlock(mem)                       // best effort, see above
	_ = unix.Madvise(mem, unix.MADV_DONTDUMP) // best effort
	return mem[:n], mem
}

// lockedFree zeroes b, then unlocks and unmaps mem (if not nil). b must
// not be used afterwards.
func lockedFree(b, mem []byte) {
	clear(b)
	if mem == nil {
		return
	}
	clear(mem)
	_ = unix.Munlock(mem)
	_ = unix.Munmap(mem)
}
