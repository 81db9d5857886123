package main

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestHardenDisablesDumpsAndCores proves that harden() (called first thing
// in main) turns a dumpable process with core dumps allowed into a
// non-dumpable one whose core limit is 0, soft and hard.
func TestHardenDisablesDumpsAndCores(t *testing.T) {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 1 << 20, Max: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	if d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); err != nil || d != 1 {
		t.Fatalf("precondition: dumpable = %d (%v), want 1", d, err)
	}
	harden()
	if d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); err != nil || d != 0 {
		t.Fatalf("after harden: dumpable = %d (%v), want 0", d, err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur != 0 || lim.Max != 0 {
		t.Fatalf("after harden: RLIMIT_CORE = %d/%d, want 0/0", lim.Cur, lim.Max)
	}
}
