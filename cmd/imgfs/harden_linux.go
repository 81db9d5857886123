package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// harden protects key material held by this process: it marks the process
// non-dumpable (no core dump, no ptrace attach by other users, /proc/<pid>/mem
// and environ readable only by root) and sets RLIMIT_CORE to 0 so that even a
// crash writes no core file. It runs before any key is read. Failures are
// reported but not fatal: the protection is a second line of defence.
func harden() {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "imgfs: warning: prctl(PR_SET_DUMPABLE, 0):", err)
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		fmt.Fprintln(os.Stderr, "imgfs: warning: setrlimit(RLIMIT_CORE, 0):", err)
	}
}
