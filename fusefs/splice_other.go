//go:build !linux

package fusefs

import "github.com/hanwen/go-fuse/v2/fuse"

// spliceReply is Linux-only; elsewhere replies carry the bytes.
func spliceReply([]byte) (fuse.ReadResult, bool) { return nil, false }
