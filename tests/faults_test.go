package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/imgfs/imgfs/tests/testimg"
)

// The seeded fault schedule (issue #8, network): a proxy between imgfs and
// the real servers (net/http's file server, the local Glance) that breaks
// requests on a schedule drawn from IMGFS_FAULT_SEED. Under every fault,
// `imgfs cat` writes the exact plaintext or stops with a clear error having
// written only a prefix of it; a mount answers EIO, never wrong bytes, and
// never hangs.

// faultKind is one way the network between imgfs and a server misbehaves.
type faultKind int

const (
	faultReset      faultKind = iota // headers and part of the body, then a TCP RST
	faultStall                       // part of the answer (sometimes not even the headers), then silence
	fault500                         // 500 Internal Server Error
	fault503                         // 503 Service Unavailable
	fault429                         // 429 Too Many Requests, Retry-After: 0 or 1
	faultTruncated                   // headers announcing the whole body, part of it, then FIN
	faultFull200                     // 200 with the whole object to a Range request
	faultWrongRange                  // 206 whose Content-Range is not the range asked for
	numFaultKinds
)

var faultKindNames = [numFaultKinds]string{"reset", "stall", "500", "503", "429", "truncated", "200-full-body", "wrong-Content-Range"}

// transientKinds are the faults of an outage: each is retried by imgfs,
// and only a run of them exhausts its retry budget.
var transientKinds = []faultKind{faultReset, fault500, fault503, fault429, faultTruncated}

// faultStallTimeout is the --http-stall-timeout given to imgfs under the
// schedule; a stalled answer stays silent until imgfs gives up on it.
const faultStallTimeout = "1s"

// schedule modes forced on every request (the mount test's phases).
const (
	scheduleDrawn   int32 = iota // each request draws its fate
	scheduleOutage               // every request fails with a transient fault
	scheduleHealthy              // no request fails
)

// faultSchedule decides the fate of every request through its proxy. The
// fate of a request is drawn from a PCG seeded with the schedule's seed and
// (run, Range header, attempt number): it does not depend on the order in
// which concurrent requests arrive. A run may also have an outage: every
// request that touches the object at or past outageFrom fails.
type faultSchedule struct {
	seed    uint64
	rate    float64            // share of requests faulted
	weights [numFaultKinds]int // relative frequency of each kind (0: never)
	mode    atomic.Int32       // scheduleDrawn, scheduleOutage or scheduleHealthy
	counts  [numFaultKinds]atomic.Int64
	served  atomic.Int64  // requests passed through untouched
	release chan struct{} // closed at the end of the test: stalled answers end

	mu       sync.Mutex
	attempts map[string]int
	outages  map[int]int64 // run -> first byte of its outage
}

// newFaultSchedule returns a schedule faulting the given share of requests
// with the kinds weighted as given.
func newFaultSchedule(t *testing.T, seed uint64, rate float64, weights [numFaultKinds]int) *faultSchedule {
	s := &faultSchedule{seed: seed, rate: rate, weights: weights, release: make(chan struct{}),
		attempts: map[string]int{}, outages: map[int]int64{}}
	t.Cleanup(func() { close(s.release) })
	return s
}

// faultSeed is IMGFS_FAULT_SEED, 1 by default.
func faultSeed(t *testing.T) uint64 {
	v := os.Getenv("IMGFS_FAULT_SEED")
	if v == "" {
		return 1
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		t.Fatalf("IMGFS_FAULT_SEED=%q: %v", v, err)
	}
	return n
}

// envInt is the integer environment variable name, or def.
func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

func hash64(parts ...any) uint64 {
	h := fnv.New64a()
	fmt.Fprintln(h, parts...)
	return h.Sum64()
}

// setOutage makes run's requests that touch byte from (or later) fail.
func (s *faultSchedule) setOutage(run int, from int64) {
	s.mu.Lock()
	s.outages[run] = from
	s.mu.Unlock()
}

// total returns the number of faults injected.
func (s *faultSchedule) total() int64 {
	var n int64
	for i := range s.counts {
		n += s.counts[i].Load()
	}
	return n
}

// summary lists the faults injected by kind.
func (s *faultSchedule) summary() string {
	var parts []string
	for k := range numFaultKinds {
		parts = append(parts, fmt.Sprintf("%s %d", faultKindNames[k], s.counts[k].Load()))
	}
	return strings.Join(parts, ", ")
}

// requestRange parses a "bytes=a-b" header; ok is false without one.
func requestRange(v string) (a, b int64, ok bool) {
	if _, err := fmt.Sscanf(v, "bytes=%d-%d", &a, &b); err != nil {
		return 0, 0, false
	}
	return a, b, true
}

// draw returns the fate of a request of run: a fault kind and the PCG that
// shapes it, or -1.
func (s *faultSchedule) draw(run int, r *http.Request) (faultKind, *rand.Rand) {
	rng := r.Header.Get("Range")
	s.mu.Lock()
	key := fmt.Sprint(run, rng)
	attempt := s.attempts[key]
	s.attempts[key]++
	from, outage := s.outages[run]
	s.mu.Unlock()
	pcg := rand.New(rand.NewPCG(s.seed, hash64(run, rng, attempt)))
	mode := s.mode.Load()
	if mode == scheduleHealthy {
		return -1, pcg
	}
	_, b, ranged := requestRange(rng)
	kind := s.drawKind(pcg, ranged)
	// An outage fails what touches its bytes, including a whole-object
	// answer to a Range request.
	if mode == scheduleOutage || (outage && (!ranged || b >= from || kind == faultFull200)) {
		return transientKinds[pcg.IntN(len(transientKinds))], pcg
	}
	return kind, pcg
}

// drawKind draws whether a request is faulted, and how.
func (s *faultSchedule) drawKind(pcg *rand.Rand, ranged bool) faultKind {
	if pcg.Float64() >= s.rate {
		return -1
	}
	total := 0
	var w [numFaultKinds]int
	for k := range numFaultKinds {
		w[k] = s.weights[k]
		if !ranged && (k == faultFull200 || k == faultWrongRange) {
			w[k] = 0 // only a Range request can be answered out of range
		}
		total += w[k]
	}
	x := pcg.IntN(total)
	for k := range numFaultKinds {
		if x < w[k] {
			return k
		}
		x -= w[k]
	}
	panic("unreachable")
}

// proxy starts the fault-injecting front of target: a request for
// /run/N/PATH is run N's request for target's PATH. token, when set, is
// sent as X-Auth-Token (to front Glance).
func (s *faultSchedule) proxy(t *testing.T, target, token string) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, ok := strings.CutPrefix(r.URL.Path, "/run/")
		runStr, path, ok2 := strings.Cut(rest, "/")
		run, err := strconv.Atoi(runStr)
		if !ok || !ok2 || err != nil {
			http.Error(w, "want /run/N/PATH", http.StatusBadRequest)
			return
		}
		r.URL.Path, r.URL.RawPath = "/"+path, ""
		if token != "" {
			r.Header.Set("X-Auth-Token", token)
		}
		kind, pcg := s.draw(run, r)
		if kind < 0 || !s.inject(kind, pcg, w, r, rp) {
			s.served.Add(1)
			rp.ServeHTTP(w, r)
			return
		}
		s.counts[kind].Add(1)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// inject answers r with fault kind; false means the fault did not apply
// (the real answer was not one it could distort) and r is still to serve.
func (s *faultSchedule) inject(kind faultKind, pcg *rand.Rand, w http.ResponseWriter, r *http.Request, next http.Handler) bool {
	// real is the server's answer, for the faults that distort it.
	real := func() *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		return rec
	}
	// part sends the headers of rec and a strict prefix of its body; in a
	// forced outage nothing of the body comes (a prefix is real data, and
	// a client that resumes broken answers rightly reads on with it: 8
	// reads 512 KiB apart, read as one run, got their bytes from the
	// prefixes of a few dozen broken answers).
	part := func(rec *httptest.ResponseRecorder) {
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		if body := rec.Body.Bytes(); len(body) > 0 && s.mode.Load() != scheduleOutage {
			w.Write(body[:pcg.IntN(len(body))])
		}
		w.(http.Flusher).Flush()
	}
	switch kind {
	case fault500, fault503:
		http.Error(w, "injected fault", map[faultKind]int{fault500: 500, fault503: 503}[kind])
	case fault429:
		w.Header().Set("Retry-After", strconv.Itoa(pcg.IntN(2)))
		http.Error(w, "injected fault", http.StatusTooManyRequests)
	case faultReset:
		part(real())
		time.Sleep(20 * time.Millisecond) // let the client read what came before the RST
		hijackClose(w, true)
	case faultTruncated:
		part(real())
		hijackClose(w, false)
	case faultStall:
		if pcg.IntN(4) > 0 { // else not even the headers come
			part(real())
		}
		select { // silent until imgfs gives up (its stall timeout)
		case <-r.Context().Done():
		case <-s.release:
		case <-time.After(5 * time.Minute):
		}
	case faultFull200:
		r.Header.Del("Range")
		next.ServeHTTP(w, r)
	case faultWrongRange:
		rec := real()
		var a, b, total int64
		if _, err := fmt.Sscanf(rec.Header().Get("Content-Range"), "bytes %d-%d/%d", &a, &b, &total); rec.Code != http.StatusPartialContent || err != nil {
			return false
		}
		switch pcg.IntN(3) {
		case 0: // other bytes than asked for, labelled as what they are
			shift := int64(512)
			if b+shift >= total {
				shift = -min(a, 512)
			}
			if shift == 0 {
				return false
			}
			r.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", a+shift, b+shift))
			if rec = real(); rec.Code != http.StatusPartialContent {
				return false
			}
			a, b = a+shift, b+shift
		case 1:
			total += 4096
		case 2:
			total = max(b+1, total-4096)
			if total == b+1 {
				a, b = a+1, b+1
			}
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b, total))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(rec.Body.Bytes())
	}
	return true
}

// faultImage is an image under the schedule and the plaintext it holds.
type faultImage struct {
	name  string // "luks1", "qcow2+luks"
	file  string // path of the image
	path  string // URL path of the image behind the proxy target
	plain []byte
	size  int64 // bytes of the stored image
}

// catOutcome is one `imgfs cat` run under the schedule.
type catOutcome struct {
	run        int
	img        *faultImage
	outage     bool
	code       int
	stdout     []byte
	stderr     string
	elapsed    time.Duration
	wrongBytes int64
}

// wrongBytes counts the bytes of out that are not the plaintext at their
// offset, and those past its end.
func wrongBytes(out, plain []byte) int64 {
	n := int64(max(0, len(out)-len(plain)))
	for i := range min(len(out), len(plain)) {
		if out[i] != plain[i] {
			n++
		}
	}
	return n
}

// clearReasons are what a failure under the schedule may name: its retry
// budget spent on transient faults, or a malformed answer.
var clearReasons = []string{"gave up after", "Content-Range", "object is", "bytes for an object of", "answered 206"}

// catUnderSchedule runs `imgfs cat` of img through the proxy as run and
// checks the outcome: the exact plaintext, or a non-zero exit with a clear
// one-line error and only a prefix of the plaintext written.
func catUnderSchedule(t *testing.T, s *faultSchedule, proxy string, run int, img *faultImage, pf string) catOutcome {
	pcg := rand.New(rand.NewPCG(s.seed, hash64("run", run)))
	o := catOutcome{run: run, img: img}
	outageFrom := int64(-1)
	if pcg.IntN(8) == 0 { // an outage from somewhere in the image on
		o.outage = true
		outageFrom = img.size/10 + pcg.Int64N(img.size*6/10)
		s.setOutage(run, outageFrom)
	}
	blockSize := []string{"64K", "128K", "256K"}[pcg.IntN(3)]
	src := fmt.Sprintf("%s/run/%d%s", proxy, run, img.path)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, imgfsBin, "cat", "--passphrase-file", pf, "--http-stall-timeout", faultStallTimeout,
		"--block-size", blockSize, "--cache-dir", t.TempDir(), src)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	o.elapsed = time.Since(start)
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Errorf("run %d (%s): imgfs cat still running after 3 minutes: hung", run, img.name)
		return o
	case errors.As(err, &ee):
		o.code = ee.ExitCode()
	case err != nil:
		t.Errorf("run %d: imgfs did not run: %v", run, err)
		return o
	}
	o.stdout, o.stderr = out.Bytes(), errb.String()
	o.wrongBytes = wrongBytes(o.stdout, img.plain)
	if o.wrongBytes != 0 {
		t.Errorf("run %d (%s, seed %d): %d WRONG BYTES in %d written; exit %d; %s", run, img.name, s.seed, o.wrongBytes, len(o.stdout), o.code, o.stderr)
	}
	msg := strings.TrimSpace(o.stderr)
	switch {
	case o.code == 0 && len(o.stdout) != len(img.plain):
		t.Errorf("run %d (%s): exit 0 with %d of %d bytes", run, img.name, len(o.stdout), len(img.plain))
	case o.code == 0 && o.outage:
		t.Errorf("run %d (%s): exit 0 through an outage of every request past byte %d", run, img.name, outageFrom)
	case o.code != 0:
		if strings.Count(msg, "\n") != 0 || !strings.HasPrefix(msg, "imgfs: ") || !strings.Contains(msg, src) ||
			strings.Contains(msg, "panic") || !containsAny(msg, clearReasons) {
			t.Errorf("run %d (%s): exit %d with an unclear error (want one line naming %s and one of %q): %q", run, img.name, o.code, src, clearReasons, msg)
		}
	}
	return o
}

func containsAny(s string, subs []string) bool {
	for _, x := range subs {
		if strings.Contains(s, x) {
			return true
		}
	}
	return false
}

// reason is the gist of a failure message, for the tally in the log.
func reason(msg string) string {
	if strings.Contains(msg, "gave up after") {
		return "retries exhausted, last: " + cause(msg)
	}
	return cause(msg)
}

func cause(msg string) string {
	for _, r := range []string{"stalled", "Content-Range", "object is", "bytes for an object of", "answered 206", "short body", "connection reset",
		"HTTP 500", "HTTP 503", "HTTP 429", "EOF"} {
		if strings.Contains(msg, r) {
			return r
		}
	}
	return msg
}

// runSchedule runs `imgfs cat` runs [first, first+n) over imgs in turn,
// four at a time, and returns their outcomes.
func runSchedule(t *testing.T, s *faultSchedule, proxy string, first, n int, imgs []*faultImage, pf string) []catOutcome {
	outs := make([]catOutcome, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			outs[i] = catUnderSchedule(t, s, proxy, first+i, imgs[i%len(imgs)], pf)
		})
	}
	wg.Wait()
	return outs
}

// tally summarizes outcomes: exact runs, clear errors, wrong bytes, and
// the failures by reason.
func tally(outs []catOutcome) (exact, failed int, wrong int64, reasons string) {
	byReason := map[string]int{}
	for _, o := range outs {
		wrong += o.wrongBytes
		if o.code == 0 {
			if o.wrongBytes == 0 {
				exact++
			}
			continue
		}
		failed++
		byReason[reason(o.stderr)]++
	}
	var parts []string
	for r, n := range byReason {
		parts = append(parts, fmt.Sprintf("%s %d", r, n))
	}
	sort.Strings(parts)
	return exact, failed, wrong, strings.Join(parts, ", ")
}

// makeFaultImages makes a raw LUKS1 and a qcow2+LUKS image (with a hole)
// of 4 MiB of plaintext each in dir.
func makeFaultImages(t *testing.T, dir string) []*faultImage {
	plain := testimg.RandomBytes(4<<20, 81)
	luks := testimg.QemuLUKS1(t, dir, "f", plain, testPassphrase, testimg.QemuLUKSOpts{})
	plain2 := testimg.RandomBytes(4<<20, 82)
	clear(plain2[1<<20 : 2<<20])
	qcow := testimg.ConvertQcow2(t, dir, "f.qcow2", plain2, "", testPassphrase, false)
	var imgs []*faultImage
	for _, x := range []struct {
		name, file string
		plain      []byte
	}{{"luks1", luks, plain}, {"qcow2+luks", qcow, plain2}} {
		st, err := os.Stat(x.file)
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, &faultImage{name: x.name, file: x.file, path: "/" + filepath.Base(x.file), plain: x.plain, size: st.Size()})
	}
	return imgs
}

// catWeights are the relative frequencies of the kinds in the cat runs: a
// wrong Content-Range fails a run at once (imgfs does not retry malformed
// answers) and a stall costs a second, so they are rarer.
var catWeights = [numFaultKinds]int{faultReset: 4, faultStall: 2, fault500: 3, fault503: 3, fault429: 2, faultTruncated: 4, faultFull200: 1, faultWrongRange: 1}

// TestFaultScheduleCat runs `imgfs cat` of a raw LUKS1 and a qcow2+LUKS
// image through the seeded fault schedule, in front of net/http's file
// server (IMGFS_FAULT_RUNS runs, 64 by default) and of the real Glance (a
// tenth as many, at least 4). Every run writes the exact plaintext, or fails
// with a clear error after writing only a prefix of it: zero wrong bytes.
func TestFaultScheduleCat(t *testing.T) {
	seed := faultSeed(t)
	runs := envInt(t, "IMGFS_FAULT_RUNS", 64)
	t.Logf("IMGFS_FAULT_SEED=%d IMGFS_FAULT_RUNS=%d", seed, runs)
	dir := t.TempDir()
	imgs := makeFaultImages(t, dir)
	pf := passFile(t, dir, testPassphrase)
	s := newFaultSchedule(t, seed, 0.3, catWeights)
	start := time.Now()

	proxy := s.proxy(t, serveDir(t, dir), "")
	outs := runSchedule(t, s, proxy, 0, runs, imgs, pf)
	exact, failed, wrong, reasons := tally(outs)
	t.Logf("file server: %d runs in %s: %d exact, %d clear errors (%s), %d wrong bytes; faults: %d (%s)",
		runs, time.Since(start).Round(time.Millisecond), exact, failed, reasons, wrong, s.total(), s.summary())

	glanceRuns := 0
	t.Run("glance", func(t *testing.T) {
		tc := needCloud(t)
		gs := time.Now()
		before := s.total()
		var gimgs []*faultImage
		var host string
		for _, img := range imgs {
			id := tc.uploadImage(t, map[string]string{"luks1": "luks", "qcow2+luks": "qcow2"}[img.name], nil, img.file)
			file, err := url.Parse(tc.fileURL(id))
			if err != nil {
				t.Fatal(err)
			}
			host = file.Scheme + "://" + file.Host
			g := *img
			g.path = file.Path
			gimgs = append(gimgs, &g)
		}
		glanceRuns = max(4, runs/10)
		gproxy := s.proxy(t, host, tc.cloud.Provider.Token())
		gouts := runSchedule(t, s, gproxy, runs, glanceRuns, gimgs, pf)
		outs = append(outs, gouts...)
		e, f, w, r := tally(gouts)
		t.Logf("glance: %d runs in %s: %d exact, %d clear errors (%s), %d wrong bytes; %d faults",
			glanceRuns, time.Since(gs).Round(time.Millisecond), e, f, r, w, s.total()-before)
	})

	exact, failed, wrong, reasons = tally(outs)
	outage := 0
	for _, o := range outs {
		if o.outage {
			outage++
		}
	}
	t.Logf("FIGURE fault schedule (cat): seed=%d runs=%d (file server %d, glance %d; %d with an outage) faults=%d (%s) passed-through=%d exact=%d clear-errors=%d (%s) wrong-bytes=%d time=%s",
		seed, len(outs), runs, glanceRuns, outage, s.total(), s.summary(), s.served.Load(), exact, failed, reasons, wrong, time.Since(start).Round(time.Second))
	if runs < 32 {
		return // too few runs to expect every outcome and kind
	}
	if exact == 0 || failed == 0 {
		t.Errorf("%d exact runs and %d failed ones: the schedule should exercise both", exact, failed)
	}
	for k := range numFaultKinds {
		if s.counts[k].Load() == 0 {
			t.Errorf("no %s fault was injected: the schedule does not cover it", faultKindNames[k])
		}
	}
}

// readOutcome is one read of the mounted disk.
type readOutcome struct {
	off, n int64
	got    int
	err    error
	wrong  int64
	hung   bool
}

// boundedRead reads n bytes at off from f within limit, comparing them with
// plain: a read still blocked at the deadline is reported as hung.
func boundedRead(f *os.File, off, n int64, plain []byte, limit time.Duration) readOutcome {
	o := readOutcome{off: off, n: n}
	done := make(chan struct{})
	buf := make([]byte, n)
	go func() {
		o.got, o.err = f.ReadAt(buf, off)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(limit):
		return readOutcome{off: off, n: n, hung: true}
	}
	o.wrong = wrongBytes(buf[:o.got], plain[off:])
	return o
}

// TestFaultScheduleMount reads a LUKS1 disk mounted through the schedule:
// with faults, every read gives the exact bytes or EIO; through an outage,
// EIO within a bound; once the network heals, the exact bytes again.
func TestFaultScheduleMount(t *testing.T) {
	testimg.Need(t, "fusermount3")
	seed := faultSeed(t)
	start := time.Now()
	dir := t.TempDir()
	plain := testimg.RandomBytes(16<<20, 83)
	img := testimg.QemuLUKS1(t, dir, "m", plain, testPassphrase, testimg.QemuLUKSOpts{})
	weights := catWeights
	// A 200 to a Range request switches the source to sequential mode, which
	// downloads the whole image at once: the outage phase would then test
	// nothing. That fault is covered by the cat runs.
	weights[faultFull200] = 0
	weights[faultWrongRange] = 3 // the fault that makes a read fail at once (EIO)
	s := newFaultSchedule(t, seed, 0.4, weights)
	s.mode.Store(scheduleHealthy)
	proxy := s.proxy(t, serveDir(t, dir), "")
	cmd, mnt, errs, _ := mountForeground(t, "--passphrase-file", passFile(t, dir, testPassphrase), "--http-stall-timeout", faultStallTimeout,
		"--block-size", "64KiB", "--parallel", "8", proxy+"/run/0/"+filepath.Base(img))
	logged := make(chan []byte, 1)
	go func() { // drain the mount's stderr (EIO lines) so that it never blocks
		b, _ := io.ReadAll(errs)
		logged <- b
	}()
	f, err := os.Open(filepath.Join(mnt, "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const limit = 90 * time.Second // retries of one request take ~6 s; stalls 1 s each

	phase := func(name string, offs func(pcg *rand.Rand) (int64, int64), readers, reads int) []readOutcome {
		var mu sync.Mutex
		var outs []readOutcome
		var wg sync.WaitGroup
		for i := range readers {
			wg.Go(func() {
				pcg := rand.New(rand.NewPCG(seed, hash64(name, i)))
				for range reads {
					off, n := offs(pcg)
					o := boundedRead(f, off, n, plain, limit)
					mu.Lock()
					outs = append(outs, o)
					mu.Unlock()
					if o.hung {
						return // the reader is blocked for good
					}
				}
			})
		}
		wg.Wait()
		return outs
	}
	check := func(name string, outs []readOutcome, wantEIO, wantExact bool) (exact, eio int) {
		for _, o := range outs {
			switch {
			case o.hung:
				t.Errorf("%s: read of %d at %d still blocked after %s", name, o.n, o.off, limit)
				continue
			case o.wrong != 0:
				t.Errorf("%s: read of %d at %d: %d WRONG BYTES (seed %d)", name, o.n, o.off, o.wrong, seed)
			case o.err == nil && int64(o.got) == o.n:
				exact++
			case errors.Is(o.err, syscall.EIO):
				eio++
			default:
				t.Errorf("%s: read of %d at %d: %d bytes, %v; want all of them or EIO", name, o.n, o.off, o.got, o.err)
			}
		}
		if wantEIO && eio != len(outs) {
			t.Errorf("%s: %d of %d reads answered EIO, want all", name, eio, len(outs))
		}
		if wantExact && exact != len(outs) {
			t.Errorf("%s: %d of %d reads exact, want all", name, exact, len(outs))
		}
		return exact, eio
	}

	// Faults: random reads in the first 8 MiB.
	s.mode.Store(scheduleDrawn)
	faulty := phase("faults", func(pcg *rand.Rand) (int64, int64) {
		n := 4096 + pcg.Int64N(256<<10)
		return pcg.Int64N(8<<20 - n), n
	}, 4, 24)
	fExact, fEIO := check("faults", faulty, false, false)
	faultsBefore, summaryBefore := s.total(), s.summary()

	// Outage: reads of the last 4 MiB, which nothing has read (no page
	// cache, no imgfs cache), fail after the retry budget.
	outageReads := func(i int) func(pcg *rand.Rand) (int64, int64) {
		return func(*rand.Rand) (int64, int64) { return 12<<20 + int64(i)*(512<<10), 64 << 10 }
	}
	var outs []readOutcome
	var mu sync.Mutex
	var wg sync.WaitGroup
	s.mode.Store(scheduleOutage)
	os0 := time.Now()
	for i := range 8 {
		wg.Go(func() {
			off, n := outageReads(i)(nil)
			o := boundedRead(f, off, n, plain, limit)
			mu.Lock()
			outs = append(outs, o)
			mu.Unlock()
		})
	}
	wg.Wait()
	outageTime := time.Since(os0)
	check("outage", outs, true, false)

	// Healed: the same reads give the exact bytes.
	s.mode.Store(scheduleHealthy)
	var healed []readOutcome
	for i := range 8 {
		off, n := outageReads(i)(nil)
		healed = append(healed, boundedRead(f, off, n, plain, limit))
	}
	check("healed", healed, false, true)

	if fExact == 0 {
		t.Errorf("faults phase: no read was exact")
	}
	var wrong int64
	for _, o := range append(append(faulty, outs...), healed...) {
		wrong += o.wrong
	}
	t.Logf("FIGURE fault schedule (mount): seed=%d faults phase: %d reads, %d exact, %d EIO, %d faults (%s); outage: %d of %d reads EIO in %s (%d faults); healed: %d of %d exact; wrong-bytes=%d time=%s",
		seed, len(faulty), fExact, fEIO, faultsBefore, summaryBefore, countEIO(outs), len(outs), outageTime.Round(time.Millisecond), s.total()-faultsBefore,
		countExact(healed), len(healed), wrong, time.Since(start).Round(time.Second))

	f.Close()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	t.Logf("mount stderr: %s", <-logged)
}

func countEIO(outs []readOutcome) int {
	n := 0
	for _, o := range outs {
		if !o.hung && errors.Is(o.err, syscall.EIO) {
			n++
		}
	}
	return n
}

func countExact(outs []readOutcome) int {
	n := 0
	for _, o := range outs {
		if !o.hung && o.err == nil && int64(o.got) == o.n && o.wrong == 0 {
			n++
		}
	}
	return n
}
