package luksio

import (
	"time"

	"golang.org/x/sys/unix"
)

// threadCPUTime returns the CPU time consumed by the calling OS thread, or 0
// if it cannot be read. Benchmarks use it (with runtime.LockOSThread) to
// report throughput per CPU second, which the other processes on a shared
// machine disturb far less than wall-clock throughput.
func threadCPUTime() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
