package remote

import (
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/blake2b"
	"golang.org/x/crypto/blake2s"

	"github.com/imgfs/imgfs/blockdev"
)

// Mode says how an HTTP source reads: by ranges, or through one streaming
// download when the server ignores or refuses Range requests.
type Mode string

// Modes of an HTTP source.
const (
	// ModeRange reads every block with its own `Range: bytes=a-b` request.
	ModeRange Mode = "range"
	// ModeSequential streams the whole object once into a sparse local
	// file and serves reads as their bytes arrive. Glance answers this way
	// for images on RBD, Swift or S3 stores (400 to any Range request).
	ModeSequential Mode = "sequential"
)

// ModeReporter is implemented by devices that know their read mode.
type ModeReporter interface {
	Mode() Mode
}

var (
	// ErrIntegrity means downloaded bytes do not match the checksum the
	// image's metadata states.
	ErrIntegrity = errors.New("integrity check failed")
	// ErrRemote means a server refused a request for a reason retrying
	// cannot fix (403, 404, a malformed answer).
	ErrRemote = errors.New("remote source error")
	// errUnauthorized is a 401, which a token renewal may fix once.
	errUnauthorized = errors.New("HTTP 401 Unauthorized")
)

// TokenSource supplies the token sent with each request. Renew is called
// once when a request is answered 401 with the token that was rejected.
type TokenSource interface {
	Token(ctx context.Context) (string, error)
	Renew(ctx context.Context, stale string) (string, error)
}

// HashSpec is an expected digest of a whole object: Algo is a hashlib
// name as Glance's os_hash_algo gives it (sha512 by default; see
// HashAlgorithms) or md5, and Value its lowercase hex.
type HashSpec struct {
	Algo  string
	Value string
}

// hashAlgorithms are the hashlib names Glance may use for os_hash_algo
// that Go's standard library and x/crypto implement.
var hashAlgorithms = map[string]func() hash.Hash{
	"md5":        md5.New,
	"sha1":       sha1.New,
	"sha224":     sha256.New224,
	"sha256":     sha256.New,
	"sha384":     sha512.New384,
	"sha512":     sha512.New,
	"sha512_224": sha512.New512_224,
	"sha512_256": sha512.New512_256,
	"sha3_224":   func() hash.Hash { return sha3.New224() },
	"sha3_256":   func() hash.Hash { return sha3.New256() },
	"sha3_384":   func() hash.Hash { return sha3.New384() },
	"sha3_512":   func() hash.Hash { return sha3.New512() },
	"blake2b":    func() hash.Hash { h, _ := blake2b.New512(nil); return h },
	"blake2s":    func() hash.Hash { h, _ := blake2s.New256(nil); return h },
}

// Supported reports whether the algorithm can be checked. Glance accepts
// any hashlib name; for the others (shake_128, ...) a read cannot be
// verified, and callers say so rather than refuse to read.
func (s HashSpec) Supported() bool {
	_, ok := hashAlgorithms[strings.ToLower(strings.TrimSpace(s.Algo))]
	return ok
}

func (s HashSpec) newHash() (hash.Hash, []byte, error) {
	want, err := hex.DecodeString(strings.ToLower(strings.TrimSpace(s.Value)))
	if err != nil {
		return nil, nil, fmt.Errorf("checksum %q is not hex", s.Value)
	}
	mk, ok := hashAlgorithms[strings.ToLower(strings.TrimSpace(s.Algo))]
	if !ok {
		return nil, nil, fmt.Errorf("unknown hash algorithm %q: %w", s.Algo, blockdev.ErrUnsupported)
	}
	h := mk()
	if len(want) != h.Size() {
		return nil, nil, fmt.Errorf("%s checksum has %d bytes, want %d", s.Algo, len(want), h.Size())
	}
	return h, want, nil
}

// HTTPOptions configure an HTTP source.
type HTTPOptions struct {
	// Client sends the requests; nil means a client with keep-alive
	// connections for several parallel readers.
	Client *http.Client
	// Size is the object's size when the caller knows it (Glance
	// metadata); 0 means learn it from the first response.
	Size int64
	// Token, when set, is sent in TokenHeader (default X-Auth-Token).
	Token       TokenSource
	TokenHeader string
	// Retry bounds retries of transient failures.
	Retry RetryPolicy
	// RequestTimeout bounds one range request; default 2 minutes.
	RequestTimeout time.Duration
	// StallTimeout bounds how long a request may go without progress:
	// no response headers, or no body byte while one is awaited, for this
	// long ends the attempt as a transient failure ("stalled: no data for
	// 30s after N of M bytes") that the Retry policy repeats. It also
	// watches the stream of sequential mode (but not its pauses when it is
	// far enough ahead of the readers). Default DefaultStallTimeout;
	// negative disables it (RequestTimeout and the transport's
	// ResponseHeaderTimeout still apply).
	StallTimeout time.Duration
	// CacheDir holds the sparse file of sequential mode; default
	// $XDG_CACHE_HOME/imgfs (or ~/.cache/imgfs), else the temp dir.
	CacheDir string
	// Name names the source in messages; default the URL without
	// credentials or query.
	Name string
	// Hash, when set, is checked once the whole object has streamed by
	// (sequential mode).
	Hash HashSpec
	// SeqAhead bounds how far sequential mode downloads past the furthest
	// byte asked for; default 64 MiB.
	SeqAhead int64
}

// DefaultStallTimeout is HTTPOptions.StallTimeout's default.
const DefaultStallTimeout = 30 * time.Second

// HTTP is a Device over an object served by HTTP(S) range requests. Every
// response is validated: 206 with the Content-Range asked for and a body of
// exactly that length; anything else is retried or reported, never used.
type HTTP struct {
	url    string
	name   string
	opts   HTTPOptions
	client *http.Client
	// ownClient: the client was made by OpenHTTP, so Close closes its
	// idle connections (their goroutines and sockets would leak otherwise).
	ownClient bool
	size      int64
	ctx       context.Context
	cancel    context.CancelFunc
	c         counters

	mu  sync.Mutex
	seq *sequential // non-nil in sequential mode

	tokMu sync.Mutex
	token string
}

// NewHTTPClient returns a client whose transport keeps enough idle
// connections for parallel block fetches to reuse them, and can be given a
// connection dialed ahead (Preconnect).
func NewHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	registerPreDialer(t)
	t.MaxIdleConns = 64
	t.MaxIdleConnsPerHost = 16
	t.ResponseHeaderTimeout = 60 * time.Second
	t.DisableCompression = true // a gzip-encoded body would not be the bytes of the range
	return &http.Client{Transport: t, CheckRedirect: checkRedirect}
}

// credentialHeaders are dropped from a request redirected to another host
// or scheme: a token must reach only the server it was issued for.
var credentialHeaders = []string{"X-Auth-Token", "X-Subject-Token", "Authorization", "Proxy-Authorization", "Cookie"}

// checkRedirect follows redirects as curl does: credentials are kept only
// for the same scheme and host, https is never downgraded to http, and at
// most 10 redirects are followed.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return fmt.Errorf("stopped after 10 redirects: %w", ErrRemote)
	}
	first := via[0].URL
	if first.Scheme == "https" && req.URL.Scheme != "https" {
		return fmt.Errorf("refusing a redirect from https to %s: %w", RedactURL(req.URL.String()), ErrRemote)
	}
	if req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
		for _, h := range credentialHeaders {
			req.Header.Del(h)
		}
		if h, ok := req.Context().Value(tokenHeaderKey{}).(string); ok {
			req.Header.Del(h)
		}
	}
	return nil
}

// tokenHeaderKey is the context key under which a request carries the
// name of its token header, for checkRedirect.
type tokenHeaderKey struct{}

// RedactURL returns u without user info, query or fragment: what may be
// printed of a URL that might carry credentials or signatures.
func RedactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	p.User = nil
	if p.RawQuery != "" {
		p.RawQuery = ""
		p.ForceQuery = false
		return p.String() + "?…"
	}
	p.Fragment = ""
	return p.String()
}

// OpenHTTP opens rawURL. Unless opts.Size is given, one 1-byte range
// request learns the size (and whether the server honours ranges).
func OpenHTTP(ctx context.Context, rawURL string, opts HTTPOptions) (*HTTP, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%s: not an http(s) URL", RedactURL(rawURL))
	}
	h := &HTTP{url: rawURL, name: opts.Name, opts: opts, client: opts.Client, size: opts.Size}
	if h.name == "" {
		h.name = RedactURL(rawURL)
	}
	if h.client == nil {
		h.client, h.ownClient = NewHTTPClient(), true
	}
	if h.opts.TokenHeader == "" {
		h.opts.TokenHeader = "X-Auth-Token"
	}
	if h.opts.RequestTimeout <= 0 {
		h.opts.RequestTimeout = 2 * time.Minute
	}
	if h.opts.SeqAhead <= 0 {
		h.opts.SeqAhead = 64 << 20
	}
	if h.opts.StallTimeout == 0 {
		h.opts.StallTimeout = DefaultStallTimeout
	}
	h.ctx, h.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if opts.Token != nil {
		if h.token, err = opts.Token.Token(ctx); err != nil {
			h.cancel()
			return nil, fmt.Errorf("%s: token: %w", h.name, err)
		}
	}
	if h.size <= 0 {
		if err := h.probe(ctx); err != nil {
			h.Close()
			return nil, err
		}
	}
	return h, nil
}

// probe learns the size from a 1-byte range request.
func (h *HTTP) probe(ctx context.Context) error {
	var total int64 = -1
	one := make([]byte, 1)
	err := h.withRetry(ctx, func() error {
		var err error
		total, err = h.rangeOnce(ctx, [][]byte{one}, 0, true, nil)
		return err
	})
	var sw *switchError
	if errors.As(err, &sw) {
		return h.switchToSequential(sw)
	}
	if err != nil {
		return err
	}
	if total < 0 {
		return fmt.Errorf("%s: the server did not say the size (Content-Range total is *): %w", h.name, ErrRemote)
	}
	h.size = total
	return nil
}

// Size returns the object's size in bytes.
func (h *HTTP) Size() int64 { return h.size }

// Name returns the source's printable name (no credentials).
func (h *HTTP) Name() string { return h.name }

// Mode returns how the source reads now.
func (h *HTTP) Mode() Mode {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seq != nil {
		return ModeSequential
	}
	return ModeRange
}

// Stats returns the request and byte counters.
func (h *HTTP) Stats() blockdev.Stats { return h.c.snapshot() }

// Close stops any download in progress and removes the sequential cache.
func (h *HTTP) Close() error {
	h.cancel()
	h.mu.Lock()
	s := h.seq
	h.mu.Unlock()
	if s != nil {
		s.close()
	}
	if h.ownClient {
		h.client.CloseIdleConnections()
	}
	return nil
}

// ReadAt implements io.ReaderAt. It returns verified bytes or an error.
func (h *HTTP) ReadAt(p []byte, off int64) (int, error) {
	n, eof := blockdev.Clip(p, off, h.size)
	if n == 0 {
		return 0, eof
	}
	if err := h.ReadVecAt([][]byte{p[:n]}, off); err != nil {
		return 0, err
	}
	return n, eof
}

// ReadVecAt fills bufs from consecutive bytes at off with one range
// request (retried as ReadAt's are), reading the body straight into each
// buffer. In sequential mode it reads each buffer from the stream. The
// range must lie within the object.
func (h *HTTP) ReadVecAt(bufs [][]byte, off int64) error {
	return h.ReadVecEach(bufs, off, nil)
}

// ReadVecEach is ReadVecAt that calls done(i), in order and before it
// returns, as soon as bufs[i] is complete, so that a caller can use the
// first blocks of a large request while the rest is still on the wire. A
// request that breaks off is retried for the buffers not yet complete only.
func (h *HTTP) ReadVecEach(bufs [][]byte, off int64, done func(i int)) error {
	var total int64
	for _, b := range bufs {
		total += int64(len(b))
	}
	if off < 0 || off > h.size || total > h.size-off {
		return fmt.Errorf("%s: read of %d bytes at %d: past the end (%d bytes): %w", h.name, total, off, h.size, io.ErrUnexpectedEOF)
	}
	if total == 0 {
		for i := range bufs {
			if done != nil {
				done(i)
			}
		}
		return nil
	}
	h.mu.Lock()
	s := h.seq
	h.mu.Unlock()
	next := 0 // bufs before next are complete
	if s == nil {
		err := h.withRetry(h.ctx, func() error {
			from := next
			at := off
			for _, b := range bufs[:from] {
				at += int64(len(b))
			}
			_, err := h.rangeOnce(h.ctx, bufs[from:], at, false, func(i int) {
				next = from + i + 1
				if done != nil {
					done(from + i)
				}
			})
			return err
		})
		var sw *switchError
		if !errors.As(err, &sw) {
			return err
		}
		if err := h.switchToSequential(sw); err != nil {
			return err
		}
		h.mu.Lock()
		s = h.seq
		h.mu.Unlock()
	}
	for i, b := range bufs {
		if i >= next {
			if err := s.readAt(b, off); err != nil {
				return err
			}
			if done != nil {
				done(i)
			}
		}
		off += int64(len(b))
	}
	return nil
}

// errStreamStopped ends a stream whose reader asked for no more units.
var errStreamStopped = errors.New("stream stopped by its reader")

// StreamUnits reads the object from off to its end with one request, as
// a sequential reader goes: next(i) is called before unit i (unit bytes,
// the last one shorter) is read and returns its buffer, blocking as long
// as the reader is far enough ahead, or nil to end the stream; done(i)
// follows as soon as the unit is filled. The request is not retried: a
// stream that breaks returns its error and the caller reads the rest by
// ranges (which are). In sequential mode it returns errNoStream at once.
func (h *HTTP) StreamUnits(ctx context.Context, off, unit int64, next func(i int64) []byte, done func(i int64)) error {
	h.mu.Lock()
	seq := h.seq
	h.mu.Unlock()
	if seq != nil {
		return errNoStream
	}
	if off < 0 || off >= h.size || unit <= 0 {
		return fmt.Errorf("%s: stream at %d: past the end (%d bytes): %w", h.name, off, h.size, io.ErrUnexpectedEOF)
	}
	want := h.size - off
	count := (want + unit - 1) / unit
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(h.ctx, cancel)
	defer stop()
	_, err := h.rangeUnits(ctx, off, want, int(count), func(i int) []byte { return next(int64(i)) }, false, true, func(i int) { done(int64(i)) })
	var sw *switchError
	if errors.As(err, &sw) {
		if sw.cancel != nil {
			sw.resp.Body.Close()
			sw.cancel()
		}
		return errNoStream
	}
	return err
}

// errNoStream: the source cannot stream (sequential mode, or a server that
// answered the stream's request without honouring its range).
var errNoStream = errors.New("no stream: the server does not serve ranges")

// withRetry runs one request under the retry policy, renewing the token
// once on a 401.
func (h *HTTP) withRetry(ctx context.Context, fn func() error) error {
	renewed := false
	return retry(ctx, h.opts.Retry, func() { h.c.retries.Add(1) }, func() error {
		for skips := 0; ; {
			used := h.currentToken()
			err := fn()
			if !errors.Is(err, errUnauthorized) || h.opts.Token == nil || renewed || skips > 1 {
				return err
			}
			did, rerr := h.renew(ctx, used)
			if rerr != nil {
				return fmt.Errorf("%w; renewing the token failed: %v", err, rerr)
			}
			if did {
				renewed = true
			} else {
				skips++ // another reader renewed it: try the new token
			}
		}
	})
}

func (h *HTTP) currentToken() string {
	h.tokMu.Lock()
	defer h.tokMu.Unlock()
	return h.token
}

// renew replaces the rejected token, unless another reader has already
// replaced it (parallel readers all see the same expiry: one of them
// renews). did says whether this call renewed.
func (h *HTTP) renew(ctx context.Context, rejected string) (did bool, err error) {
	h.tokMu.Lock()
	defer h.tokMu.Unlock()
	if h.token != rejected {
		return false, nil
	}
	t, err := h.opts.Token.Renew(ctx, h.token)
	if err != nil {
		return false, err
	}
	h.token = t
	h.c.renewals.Add(1)
	return true, nil
}

// newRequest builds a GET with the token; rng is "" for the whole object.
func (h *HTTP) newRequest(ctx context.Context, rng string) (*http.Request, error) {
	if h.opts.Token != nil {
		ctx = context.WithValue(ctx, tokenHeaderKey{}, h.opts.TokenHeader)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", h.name, err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	req.Header.Set("Accept-Encoding", "identity")
	if h.opts.Token != nil {
		req.Header.Set(h.opts.TokenHeader, h.currentToken())
	}
	return req, nil
}

// do sends req and classifies transport failures as transient. A watchdog
// (opts.StallTimeout) ends the request when the headers, or later a byte of
// the body while a Read waits for one, do not come in time: the Read then
// fails with a stallError.
func (h *HTTP) do(ctx context.Context, req *http.Request, what string) (*http.Response, error) {
	h.c.requests.Add(1)
	wctx, wcancel := context.WithCancel(req.Context())
	wd := newWatchdog(h.opts.StallTimeout, wcancel)
	wd.arm()
	resp, err := h.client.Do(req.WithContext(wctx))
	wd.disarm()
	if err != nil {
		wcancel()
		if ctx.Err() != nil && h.ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %s: %w", h.name, what, context.Canceled)
		}
		if wd.stalled() && req.Context().Err() == nil {
			return nil, &transientError{err: fmt.Errorf("%s: %s: stalled: no response headers within %s", h.name, what, wd.d)}
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its message repeats the URL, which may carry secrets
		}
		return nil, &transientError{err: fmt.Errorf("%s: %s: %v", h.name, what, err)}
	}
	resp.Body = &watchedBody{ReadCloser: resp.Body, w: wd}
	return resp, nil
}

// statusError turns an unusable status into an error: transient for 5xx,
// 408 and 429 (with Retry-After), errUnauthorized for 401, permanent else.
func (h *HTTP) statusError(resp *http.Response, what string) error {
	msg := fmt.Sprintf("%s: %s: HTTP %s", h.name, what, resp.Status)
	switch code := resp.StatusCode; {
	case code == http.StatusUnauthorized:
		return fmt.Errorf("%s (token rejected): %w", msg, errUnauthorized)
	case code == http.StatusForbidden:
		return fmt.Errorf("%s (access denied): %w", msg, ErrRemote)
	case code == http.StatusNotFound:
		return fmt.Errorf("%s (no such object): %w", msg, ErrRemote)
	case code == http.StatusTooManyRequests || code == http.StatusRequestTimeout || code >= 500:
		return &transientError{err: errors.New(msg), retryAfter: retryAfter(resp.Header.Get("Retry-After"))}
	default:
		return fmt.Errorf("%s: %w", msg, ErrRemote)
	}
}

func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), time.Millisecond)
	}
	return 0
}

// switchError carries the answer that shows a server does not do ranges:
// a 200 with the full body (kept open to stream from) or a 400/416.
type switchError struct {
	resp   *http.Response     // 200 only
	cancel context.CancelFunc // ends resp's request
	status string
}

func (e *switchError) Error() string { return "server does not honour Range: " + e.status }

// rangeOnce sends one range request for the bytes at off that fill bufs,
// in order, and fills them, calling filled(i) (if not nil) as each buffer
// is complete. probe allows the answer to say only the total size (1-byte
// request). It returns the total size from Content-Range (-1 if "*").
func (h *HTTP) rangeOnce(ctx context.Context, bufs [][]byte, off int64, probe bool, filled func(i int)) (int64, error) {
	want := 0
	for _, b := range bufs {
		want += len(b)
	}
	return h.rangeUnits(ctx, off, int64(want), len(bufs), func(i int) []byte { return bufs[i] }, probe, false, filled)
}

// rangeUnits is rangeOnce for want bytes in count consecutive buffers that
// bufAt gives one at a time, just before each is read into: a stream
// (bufAt not known in advance, RequestTimeout not applied) asks for its
// memory only as the bytes come; bufAt returning nil ends the request
// there with errStreamStopped.
func (h *HTTP) rangeUnits(ctx context.Context, off, want int64, count int, bufAt func(i int) []byte, probe, stream bool, filled func(i int)) (int64, error) {
	end := off + want - 1
	what := fmt.Sprintf("GET bytes=%d-%d", off, end)
	// A timer rather than WithTimeout: a 200 answer's body must outlive
	// this call as the sequential stream, which then owns cancel. A
	// stream of the rest of an image may rightly take hours: only the
	// stall watchdog bounds it.
	rctx, cancel := context.WithCancel(ctx)
	timeout := h.opts.RequestTimeout
	if stream {
		timeout = 1<<63 - 1
	}
	timer := time.AfterFunc(timeout, cancel)
	keep := false
	defer func() {
		if !keep {
			timer.Stop()
			cancel()
		}
	}()
	req, err := h.newRequest(rctx, fmt.Sprintf("bytes=%d-%d", off, end))
	if err != nil {
		return -1, err
	}
	resp, err := h.do(ctx, req, what)
	if err != nil {
		if rctx.Err() != nil && ctx.Err() == nil {
			return -1, &transientError{err: fmt.Errorf("%s: %s: no answer within %s", h.name, what, h.opts.RequestTimeout)}
		}
		return -1, err
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
	case http.StatusOK:
		// The full object instead of the range. It is usable as the
		// sequential stream only if it is the whole object.
		if resp.ContentLength >= 0 && h.size > 0 && resp.ContentLength != h.size {
			resp.Body.Close()
			return -1, fmt.Errorf("%s: %s: HTTP 200 with %d bytes for an object of %d: %w", h.name, what, resp.ContentLength, h.size, ErrRemote)
		}
		if !timer.Stop() {
			resp.Body.Close()
			return -1, &transientError{err: fmt.Errorf("%s: %s: timed out", h.name, what)}
		}
		keep = true
		return -1, &switchError{resp: resp, cancel: cancel, status: resp.Status}
	case http.StatusBadRequest, http.StatusRequestedRangeNotSatisfiable:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if !probe && h.size > 0 && resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && resp.Header.Get("Content-Range") != "" {
			return -1, fmt.Errorf("%s: %s: HTTP %s (%s): %w", h.name, what, resp.Status, resp.Header.Get("Content-Range"), ErrRemote)
		}
		return -1, &switchError{status: resp.Status}
	default:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return -1, h.statusError(resp, what)
	}
	defer resp.Body.Close()
	cr := resp.Header.Get("Content-Range")
	a, b, total, err := parseContentRange(cr)
	if err != nil {
		return -1, fmt.Errorf("%s: %s: bad Content-Range %q: %w", h.name, what, cr, ErrRemote)
	}
	if a != off || (b != end && !(probe && b >= a)) {
		return -1, fmt.Errorf("%s: %s: server sent Content-Range %q: %w", h.name, what, cr, ErrRemote)
	}
	if total >= 0 && h.size > 0 && total != h.size {
		return -1, fmt.Errorf("%s: %s: object is %d bytes, expected %d (changed?): %w", h.name, what, total, h.size, ErrRemote)
	}
	if resp.ContentLength >= 0 && resp.ContentLength != b-a+1 {
		return -1, fmt.Errorf("%s: %s: Content-Length %d does not match Content-Range %q: %w", h.name, what, resp.ContentLength, cr, ErrRemote)
	}
	var n int64
	for i := range count {
		b := bufAt(i)
		if b == nil {
			return -1, errStreamStopped
		}
		var m int
		m, err = io.ReadFull(resp.Body, b)
		n += int64(m)
		h.c.bytes.Add(int64(m))
		if err != nil {
			break
		}
		if filled != nil {
			filled(i)
		}
	}
	var stall *stallError
	if errors.As(err, &stall) && ctx.Err() == nil {
		return -1, &transientError{err: fmt.Errorf("%s: %s: %v after %d of %d bytes", h.name, what, stall, n, want)}
	}
	if err != nil && rctx.Err() != nil && ctx.Err() == nil {
		return -1, &transientError{err: fmt.Errorf("%s: %s: body not complete within %s (%d of %d bytes)", h.name, what, h.opts.RequestTimeout, n, want)}
	}
	if err != nil {
		return -1, &transientError{err: fmt.Errorf("%s: %s: short body (%d of %d bytes): %v", h.name, what, n, want, err)}
	}
	return total, nil
}

// watchdog cancels a request that makes no progress for d. It runs only
// while the caller waits for the server — for the response headers, or in
// a Read of the body — so a reader that pauses on purpose (sequential mode
// when it is SeqAhead past the readers) is not taken for a stall. A
// watchdog is used by one goroutine at a time.
type watchdog struct {
	d      time.Duration
	cancel context.CancelFunc
	t      *time.Timer // nil when d <= 0
	fired  atomic.Bool
}

// newWatchdog returns a disarmed watchdog that calls cancel once armed
// for d without being disarmed; d <= 0 gives one that never fires.
func newWatchdog(d time.Duration, cancel context.CancelFunc) *watchdog {
	w := &watchdog{d: d, cancel: cancel}
	if d > 0 {
		w.t = time.AfterFunc(d, func() {
			w.fired.Store(true)
			cancel()
		})
		w.t.Stop()
	}
	return w
}

func (w *watchdog) arm() {
	if w.t != nil {
		w.t.Reset(w.d)
	}
}

func (w *watchdog) disarm() {
	if w.t != nil {
		w.t.Stop()
	}
}

// stalled reports whether the watchdog cancelled the request.
func (w *watchdog) stalled() bool { return w.fired.Load() }

// stallError is what a watched body's Read returns once it has stalled.
type stallError struct{ d time.Duration }

func (e *stallError) Error() string { return fmt.Sprintf("stalled: no data for %s", e.d) }

// watchedBody is a response body under its request's watchdog; Close
// also releases the watchdog's context.
type watchedBody struct {
	io.ReadCloser
	w *watchdog
}

func (b *watchedBody) Close() error {
	err := b.ReadCloser.Close()
	b.w.disarm()
	b.w.cancel()
	return err
}

func (b *watchedBody) Read(p []byte) (int, error) {
	b.w.arm()
	n, err := b.ReadCloser.Read(p)
	b.w.disarm()
	if err != nil && b.w.stalled() {
		err = &stallError{d: b.w.d}
	}
	return n, err
}

// parseContentRange reads "bytes a-b/total" (total may be "*": -1).
func parseContentRange(v string) (a, b, total int64, err error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !ok {
		return 0, 0, 0, errors.New("no bytes unit")
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, errors.New("no total")
	}
	as, bs, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, errors.New("no range")
	}
	if a, err = strconv.ParseInt(as, 10, 64); err != nil || a < 0 {
		return 0, 0, 0, errors.New("bad start")
	}
	if b, err = strconv.ParseInt(bs, 10, 64); err != nil || b < a {
		return 0, 0, 0, errors.New("bad end")
	}
	total = -1
	if tot != "*" {
		if total, err = strconv.ParseInt(tot, 10, 64); err != nil || total <= b {
			return 0, 0, 0, errors.New("bad total")
		}
	}
	return a, b, total, nil
}

// CacheDirDefault is where sequential mode keeps its sparse files when no
// directory is given: $XDG_CACHE_HOME/imgfs, ~/.cache/imgfs, or the temp dir.
func CacheDirDefault() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "imgfs")
	}
	if d, err := os.UserHomeDir(); err == nil && d != "" {
		return filepath.Join(d, ".cache", "imgfs")
	}
	return os.TempDir()
}
