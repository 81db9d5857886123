package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/blockdev/target"
	"github.com/imgfs/imgfs/qcowio"
)

// checkOutput refuses to write an image to a terminal.
func checkOutput(path string) error {
	if (path == "" || path == "-") && isTerminal(os.Stdout) {
		return usageError("refusing to write an image to a terminal: use -o FILE or redirect stdout")
	}
	return nil
}

// interruptible cancels ctx on SIGINT or SIGTERM, so that an interrupted
// export stops cleanly and removes its temporary file.
func interruptible(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}

// output is where a command writes a device.
type output struct {
	path string // "" or "-" = stdout
	prog *progress
	// verify, if set, runs once the whole device is written and before
	// a file output is renamed into place: a mismatch leaves no file.
	verify func(context.Context) error
}

// write streams d to the output. A regular file (or a new path) is written
// sparsely under a temporary name, mode 0600, and renamed when complete
// and verified; stdout and other existing files (a pipe, /dev/null) are
// written in order.
func (o output) write(ctx context.Context, d blockdev.Device) (st target.Stats, err error) {
	defer func() {
		if errors.Is(err, context.Canceled) && o.path != "" && o.path != "-" {
			err = fmt.Errorf("interrupted, %s not written: %w", o.path, err)
		}
	}()
	finish := func(ctx context.Context) error {
		if o.verify == nil {
			return nil
		}
		return o.verify(ctx)
	}
	stream := func(f *os.File, sparse bool) error {
		var err error
		if st, err = target.Stream(ctx, f, d, sparse, o.prog.Add); err != nil {
			return err
		}
		return finish(ctx)
	}
	if o.path == "" || o.path == "-" {
		return st, stream(os.Stdout, false)
	}
	if fi, err := os.Stat(o.path); err == nil && !fi.Mode().IsRegular() {
		f, err := os.OpenFile(o.path, os.O_WRONLY, 0)
		if err != nil {
			return st, err
		}
		defer f.Close()
		if err := stream(f, false); err != nil {
			return st, err
		}
		return st, f.Close()
	}
	return st, target.WriteFile(o.path, func(f *os.File) error { return stream(f, true) })
}

// writeQcow2 writes the plaintext disk d as a qcow2 image (encrypted when
// wopts carry a LUKS area and cipher) to the file path.
func (o output) writeQcow2(ctx context.Context, d blockdev.Device, wopts qcowio.WriteOptions) error {
	if o.path == "" || o.path == "-" {
		return usageError("qcow2 output is written with seeks: use -o FILE, not stdout")
	}
	wopts.Progress = o.prog.Add
	return target.WriteFile(o.path, func(f *os.File) error {
		if _, err := qcowio.Write(ctx, f, d, wopts); err != nil {
			return err
		}
		if o.verify != nil {
			return o.verify(ctx)
		}
		return nil
	})
}
