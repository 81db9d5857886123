//go:build !linux

package main

// harden is a no-op where prctl(PR_SET_DUMPABLE) does not exist.
func harden() {}
