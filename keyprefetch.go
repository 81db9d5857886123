package imgfs

import (
	"context"
	"sync"
	"time"

	"github.com/imgfs/imgfs/keyring"
)

// prefetchedKey fetches a passphrase in the background while the image's
// headers are read, so that a Barbican secret (a token validation and two
// requests) costs no time on top of the header and keyslot reads. The
// first Passphrase call takes the prefetched bytes (the caller owns and
// zeroes them, as with any Source); discard zeroes them if nobody took
// them.
type prefetchedKey struct {
	src    keyring.Source
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	pass      []byte
	err       error
	taken     bool // the result went to a caller, or was discarded
	discarded bool
	at        time.Time // when the fetch returned
}

// prefetchKey starts fetching k's passphrase now.
func prefetchKey(ctx context.Context, k keyring.Source) *prefetchedKey {
	ctx, cancel := context.WithCancel(ctx)
	p := &prefetchedKey{src: k, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		pass, err := k.Passphrase(ctx)
		p.mu.Lock()
		defer p.mu.Unlock()
		p.at = time.Now()
		if p.discarded {
			keyring.Zero(pass)
			return
		}
		p.pass, p.err = pass, err
	}()
	return p
}

// Passphrase implements keyring.Source: the first call returns the
// prefetched result, later calls fetch again.
func (p *prefetchedKey) Passphrase(ctx context.Context) ([]byte, error) {
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	if p.taken {
		p.mu.Unlock()
		return p.src.Passphrase(ctx)
	}
	p.taken = true
	pass, err := p.pass, p.err
	p.pass, p.err = nil, nil
	p.mu.Unlock()
	return pass, err
}

// fetchedAt returns when the prefetch returned (zero: not yet).
func (p *prefetchedKey) fetchedAt() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.at
}

func (p *prefetchedKey) String() string { return p.src.String() }

// discard ends the prefetch: a fetch still running is cancelled and its
// result zeroed when it returns (discard does not wait for it: a source
// may ignore ctx, as a read of standard input does); a passphrase nobody
// took is zeroed now.
func (p *prefetchedKey) discard() {
	p.cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.discarded = true
	if !p.taken {
		keyring.Zero(p.pass)
		p.pass, p.err, p.taken = nil, nil, true
	}
}
