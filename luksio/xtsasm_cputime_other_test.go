//go:build amd64 && !linux

package luksio

import "time"

// threadCPUTime is not implemented here; benchmarks then omit cpu-MB/s.
func threadCPUTime() time.Duration { return 0 }
