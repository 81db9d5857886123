//go:build linux

package luksio

import (
	"bufio"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mappingFlags returns the VmFlags of the /proc/self/smaps mapping that
// holds addr, or ok=false if no mapping does.
func mappingFlags(t *testing.T, addr uintptr) (flags []string, ok bool) {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no /proc/self/smaps: %v", err)
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if lo, hi, found := strings.Cut(strings.Fields(line)[0], "-"); found && !strings.HasSuffix(strings.Fields(line)[0], ":") {
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			in = err1 == nil && err2 == nil && uint64(addr) >= a && uint64(addr) < b
			continue
		}
		if in && strings.HasPrefix(line, "VmFlags:") {
			return strings.Fields(strings.TrimPrefix(line, "VmFlags:")), true
		}
	}
	return nil, false
}

// TestKeyMemoryLocked unlocks a qemu-made LUKS1 image and finds the volume
// key on pages of its own that are locked in RAM (smaps VmFlags "lo") and
// excluded from core dumps ("dd"); after Close its pages are unmapped
// (Close zeroes them first).
func TestKeyMemoryLocked(t *testing.T) {
	probe, err := unix.Mmap(-1, 0, unix.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mlock(probe); err != nil {
		unix.Munmap(probe)
		t.Skipf("mlock is not permitted here (%v): lockedAlloc falls back to unlocked pages", err)
	}
	unix.Munlock(probe)
	unix.Munmap(probe)

	path, _ := qemuImage(t, 0)
	f := openFile(t, path)
	h, err := ReadHeader(f, f.Size())
	if err != nil {
		t.Fatal(err)
	}
	k, err := h.Unlock(f, []byte(luks1Pass), UnlockOptions{Slot: AnySlot})
	if err != nil {
		t.Fatal(err)
	}
	addr := uintptr(unsafe.Pointer(&k.key[0]))
	flags, ok := mappingFlags(t, addr)
	if !ok {
		t.Fatal("the key's address is in no mapping")
	}
	if !slices.Contains(flags, "lo") || !slices.Contains(flags, "dd") {
		t.Fatalf("key pages have VmFlags %v: want lo (mlocked) and dd (not dumped)", flags)
	}
	k.Close()
	if f, ok := mappingFlags(t, addr); ok && slices.Contains(f, "lo") && slices.Contains(f, "dd") {
		t.Fatal("the key's locked pages are still mapped after Close")
	}
	if k.key != nil || k.buf.mem != nil {
		t.Fatal("Close left the key reachable")
	}
}
