package fusefs

import "sync/atomic"

// spliceEnabled turns the pipe path of read replies on; tests turn it off
// to check the plain path.
var spliceEnabled = true

// splicedReplies counts read replies sent through a pipe, for tests.
var splicedReplies atomic.Int64
