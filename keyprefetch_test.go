package imgfs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

// gatedKey is a key source that says when it is asked and answers only
// once allowed.
type gatedKey struct {
	pass    string
	asked   chan struct{}
	allowed chan struct{}
	calls   atomic.Int32
	last    []byte
}

func (g *gatedKey) Passphrase(ctx context.Context) ([]byte, error) {
	if g.calls.Add(1) == 1 {
		close(g.asked)
	}
	select {
	case <-g.allowed:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	g.last = []byte(g.pass)
	return g.last, nil
}

func (g *gatedKey) String() string { return "gated test key" }

// gatedDevice holds every read until the key has been asked for (or a
// deadline passes: then the read fails, as a stack that asks for the key
// only after the headers would make it).
type gatedDevice struct {
	blockdev.Device
	key   *gatedKey
	reads atomic.Int32
	// far is set by a read at or past 4096: LUKS1 keyslot key material
	// (the binary header is the first 592 bytes).
	far atomic.Bool
	// readsBeforeKey counts reads that had to wait for the key request.
	readsBeforeKey atomic.Int32
}

var errNeverAsked = errors.New("the key was not asked for while the header was being read")

func (d *gatedDevice) ReadAt(p []byte, off int64) (int, error) {
	d.reads.Add(1)
	if off >= 4096 {
		d.far.Store(true)
	}
	select {
	case <-d.key.asked:
	default:
		d.readsBeforeKey.Add(1)
		select {
		case <-d.key.asked:
		case <-time.After(5 * time.Second):
			return 0, errNeverAsked
		}
	}
	return d.Device.ReadAt(p, off)
}

// The passphrase is asked for before the first header read completes, and
// the keyslot's key material is read while its answer is awaited: with a
// Barbican key, the secret's round trips overlap the header and keyslot
// reads instead of preceding or following them. (Before the prefetch the
// header reads waited here for a key request that came only after them,
// and Open failed; without the keyslot read ahead the key came 5 s late.)
func TestKeyFetchOverlapsHeaderReads(t *testing.T) {
	dir := t.TempDir()
	plain := bytes.Repeat([]byte("imgfs#14"), 64<<10)
	path := testimg.QemuLUKS1(t, dir, "o", plain, "overlap", testimg.QemuLUKSOpts{})
	f, err := blockdev.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	key := &gatedKey{pass: "overlap", asked: make(chan struct{}), allowed: make(chan struct{})}
	dev := &gatedDevice{Device: f, key: key}
	// The key answers only once the keyslot's key material has been read
	// (or after 5 s: then the keyslot was read only after the key came).
	var late atomic.Bool
	go func() {
		deadline := time.Now().Add(5 * time.Second)
		for !dev.far.Load() {
			if time.Now().After(deadline) {
				late.Store(true)
				break
			}
			time.Sleep(time.Millisecond)
		}
		close(key.allowed)
	}()
	img, err := OpenDevice(context.Background(), dev, Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	got := make([]byte, len(plain))
	if _, err := img.Disk.ReadAt(got, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.Equal(got, plain) {
		t.Fatal("plaintext differs")
	}
	if late.Load() {
		t.Error("the keyslot was not read while the key was awaited")
	}
	if n := key.calls.Load(); n != 1 {
		t.Fatalf("key asked for %d times, want 1", n)
	}
	if !allZero(key.last) {
		t.Fatal("the passphrase was not zeroed after the unlock")
	}
	t.Logf("%d reads, %d of them waited for the key request", dev.reads.Load(), dev.readsBeforeKey.Load())
}

// A key fetched ahead for an image that turns out to be unencrypted is
// refused with the image, and the passphrase is zeroed whether the fetch
// had finished when it was discarded or finished later.
func TestPrefetchedKeyDiscarded(t *testing.T) {
	key := &gatedKey{pass: "unused", asked: make(chan struct{}), allowed: make(chan struct{})}
	close(key.allowed)
	if _, err := OpenDevice(context.Background(), bytes.NewReader(make([]byte, 1<<20)), Options{Key: key}); err == nil {
		t.Fatal("a key for an unencrypted image was accepted")
	}
	for _, early := range []bool{true, false} {
		key := &gatedKey{pass: "unused", asked: make(chan struct{}), allowed: make(chan struct{})}
		if early {
			close(key.allowed)
		}
		pk := prefetchKey(context.Background(), key)
		if early {
			<-pk.done
		}
		pk.discard()
		if !early {
			close(key.allowed) // ignored ctx: answers after the discard
		}
		<-pk.done
		if len(key.last) == 0 && early {
			t.Fatal("no passphrase was fetched")
		}
		if !allZero(key.last) {
			t.Fatalf("early=%v: the discarded passphrase was not zeroed", early)
		}
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
