package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

// Progress modes of --progress.
const (
	progressAuto = "auto" // text on a terminal, nothing otherwise
	progressText = "text"
	progressJSON = "json"
	progressOff  = "off"
)

// Progress report intervals: a human wants a lively line, a machine a
// steady trickle of JSON lines.
const (
	progressTextEvery = 250 * time.Millisecond
	progressJSONEvery = time.Second
)

// progressFlags is --progress.
type progressFlags struct{ value string }

func (p *progressFlags) flags() []cli.Flag {
	return []cli.Flag{&cli.StringFlag{Name: "progress", Value: progressAuto, Destination: &p.value,
		Usage: "report progress on stderr: auto (a line when stderr is a terminal), text, json (one JSON object per line), off"}}
}

// mode resolves --progress against whether stderr is a terminal.
func (p *progressFlags) mode() (string, error) {
	switch m := strings.ToLower(p.value); m {
	case progressAuto, "":
		if isTerminal(os.Stderr) {
			return progressText, nil
		}
		return progressOff, nil
	case progressText, progressJSON, progressOff:
		return m, nil
	default:
		return "", usageError("--progress %q: want auto, text, json or off", p.value)
	}
}

// isTerminal reports whether f is a terminal (not merely a character
// device such as /dev/null).
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progress counts the bytes of a copy of known total length and reports
// them periodically on w until Finish.
type progress struct {
	mode  string
	what  string
	total int64
	done  atomic.Int64
	start time.Time
	w     io.Writer
	stop  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

// progressEvent is one JSON line of --progress=json.
type progressEvent struct {
	Event          string  `json:"event"` // "start", "progress", "done" or "error"
	What           string  `json:"what"`
	Bytes          int64   `json:"bytes"`
	Total          int64   `json:"total"`
	Percent        float64 `json:"percent"`
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	BytesPerSecond float64 `json:"bytes_per_second"`
	ETASeconds     float64 `json:"eta_seconds"`
	Error          string  `json:"error,omitempty"`
}

// startProgress begins reporting a copy of total bytes described by what
// (e.g. "export disk.qcow2 -> disk.luks"); mode off reports nothing.
func startProgress(mode, what string, total int64, w io.Writer) *progress {
	p := &progress{mode: mode, what: what, total: total, start: time.Now(), w: w, stop: make(chan struct{})}
	if mode == progressOff {
		return p
	}
	every := progressTextEvery
	if mode == progressJSON {
		every = progressJSONEvery
		p.emit("start", nil)
	}
	p.wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.emit("progress", nil)
			case <-p.stop:
				return
			}
		}
	})
	return p
}

// Add counts n more bytes done.
func (p *progress) Add(n int64) {
	if p != nil {
		p.done.Add(n)
	}
}

// Finish stops the reports and prints the final one (done or error).
func (p *progress) Finish(err error) {
	p.once.Do(func() {
		close(p.stop)
		p.wg.Wait()
		if p.mode == progressOff {
			return
		}
		if err != nil {
			p.emit("error", err)
		} else {
			p.emit("done", nil)
		}
	})
}

func (p *progress) emit(event string, err error) {
	done := p.done.Load()
	elapsed := time.Since(p.start)
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(done) / s
	}
	eta := 0.0
	if rate > 0 && p.total > done {
		eta = float64(p.total-done) / rate
	}
	pct := 100.0
	if p.total > 0 {
		pct = 100 * float64(done) / float64(p.total)
	}
	if p.mode == progressJSON {
		ev := progressEvent{Event: event, What: p.what, Bytes: done, Total: p.total, Percent: round2(pct),
			ElapsedSeconds: round2(elapsed.Seconds()), BytesPerSecond: round2(rate), ETASeconds: round2(eta)}
		if err != nil {
			ev.Error = err.Error()
		}
		b, _ := json.Marshal(ev)
		fmt.Fprintf(p.w, "%s\n", b)
		return
	}
	line := fmt.Sprintf("%s: %s / %s (%.1f%%)  %s/s", p.what, humanize.IBytes(uint64(done)), humanize.IBytes(uint64(p.total)), pct, humanize.IBytes(uint64(rate)))
	switch event {
	case "progress":
		line += "  ETA " + (time.Duration(eta * float64(time.Second))).Round(time.Second).String()
		fmt.Fprintf(p.w, "\r\033[K%s", line)
	case "done":
		fmt.Fprintf(p.w, "\r\033[K%s  in %s\n", line, elapsed.Round(time.Millisecond))
	default:
		fmt.Fprintf(p.w, "\r\033[K%s  failed\n", line)
	}
}

func round2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }
