package remote

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// RetryPolicy bounds how transient failures (connection resets, timeouts,
// 5xx, 429, short bodies) are retried: capped exponential backoff with
// jitter, at most Attempts tries in all.
type RetryPolicy struct {
	Attempts int           // total tries per request; default 6
	Base     time.Duration // first backoff; default 200ms
	Max      time.Duration // backoff cap; default 5s
	// MaxRetryAfter caps a server's Retry-After; default 30s.
	MaxRetryAfter time.Duration
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts <= 0 {
		p.Attempts = 6
	}
	if p.Base <= 0 {
		p.Base = 200 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 5 * time.Second
	}
	if p.MaxRetryAfter <= 0 {
		p.MaxRetryAfter = 30 * time.Second
	}
	return p
}

// backoff returns the wait before retry number n (0-based): Base·2ⁿ capped
// at Max, scaled by a random factor in [0.5, 1.5), or the server's
// Retry-After when it gave one (capped at MaxRetryAfter).
func (p RetryPolicy) backoff(n int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return min(retryAfter, p.MaxRetryAfter)
	}
	d := p.Base << min(n, 20)
	if d <= 0 || d > p.Max {
		d = p.Max
	}
	return time.Duration(float64(d) * (0.5 + rand.Float64()))
}

// transientError marks a failure worth retrying.
type transientError struct {
	err        error
	retryAfter time.Duration
}

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// retry runs fn until it succeeds, fails with an error that is not
// transient, or the policy's attempts are used up. onRetry is called before
// each repeated attempt.
func retry(ctx context.Context, p RetryPolicy, onRetry func(), fn func() error) error {
	p = p.withDefaults()
	var err error
	for attempt := 0; attempt < p.Attempts; attempt++ {
		if attempt > 0 {
			onRetry()
		}
		err = fn()
		var te *transientError
		if err == nil || !errors.As(err, &te) {
			return err
		}
		if attempt == p.Attempts-1 {
			break
		}
		t := time.NewTimer(p.backoff(attempt, te.retryAfter))
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(te.err, ctx.Err())
		case <-t.C:
		}
	}
	var te *transientError
	if errors.As(err, &te) {
		return &exhaustedError{fmt.Errorf("%w (gave up after %d attempts)", te.err, p.Attempts)}
	}
	return err
}

// exhaustedError is a transient failure that outlasted the retry policy:
// the network may heal, so a later attempt may succeed.
type exhaustedError struct{ err error }

func (e *exhaustedError) Error() string { return e.err.Error() }
func (e *exhaustedError) Unwrap() error { return e.err }

// isNetworkFailure reports whether err is a transient failure, retried or
// not, rather than a refusal or damage that a retry cannot change.
func isNetworkFailure(err error) bool {
	var te *transientError
	var ex *exhaustedError
	return errors.As(err, &te) || errors.As(err, &ex)
}
