package imgfs

import (
	"testing"
	"time"

	"github.com/imgfs/imgfs/blockdev/rbd"
)

// Reads of an RBD source run in parallel: the cache's parallel fetches and
// read-ahead must not queue behind each other. A first read waits inside
// librbd's place until a second read has started; when reads are
// serialized (a reconnect check took the write lock on every read, which
// waits for every read in flight) the second never starts.
func TestRBDReadsRunInParallel(t *testing.T) {
	d := &rbdDevice{}
	inside, second := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- d.do(4096, func(*rbd.Image) error {
			close(inside)
			select {
			case <-second:
				return nil
			case <-time.After(5 * time.Second):
				return errSerialized
			}
		})
	}()
	<-inside
	go d.do(4096, func(*rbd.Image) error { close(second); return nil })
	if err := <-first; err != nil {
		t.Fatal(err)
	}
}

type serializedError struct{}

func (serializedError) Error() string {
	return "a second RBD read could not start while one was in flight"
}

var errSerialized = serializedError{}
