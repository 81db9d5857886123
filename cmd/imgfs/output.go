package main

import (
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/blockdev/rbd"
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

// checkNotSource refuses an output that is the source itself (the same
// file or block device, by any path): writing a device in place while it
// is read would destroy it.
func checkNotSource(spec, path string) error {
	if path == "" || path == "-" {
		return nil
	}
	in, err := os.Stat(spec)
	if err != nil {
		return nil // not a local file: a URL, a Glance id, rbd:
	}
	if out, err := os.Stat(path); err == nil && os.SameFile(in, out) {
		return usageError("-o %s is SOURCE itself: write somewhere else", path)
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
	// targetIsZero skips holes on a block device (--target-is-zero);
	// readBack reads the target back and compares it (--verify);
	// existing writes into an RBD image that exists (--existing).
	targetIsZero, readBack, existing bool
	// ceph reaches the cluster of an rbd:POOL/IMAGE output.
	ceph rbd.Config
}

// outputFlags are the flags of a command that writes a device to -o. The
// Ceph flags (ceph) are listed by the command itself (ceph.flags()), so
// that a command whose source flags already have them shares them.
type outputFlags struct {
	targetIsZero, verify, existing bool
	ceph                           cephFlags
}

func (f *outputFlags) flags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "target-is-zero", Destination: &f.targetIsZero, Usage: "the block device or RBD image already reads as zeros: skip holes and zero runs instead of writing zeros"},
		&cli.BoolFlag{Name: "verify", Destination: &f.verify, Usage: "read the written file, device or RBD image back and compare its SHA-256 with what was streamed"},
		&cli.BoolFlag{Name: "existing", Destination: &f.existing, Usage: "-o rbd:POOL/IMAGE: write into the existing image (default: create it at the disk's size)"},
	}
}

// output returns the output for path with these flags; the caller sets
// its ceph config (from ceph.config(), or from the source's Ceph flags).
func (f *outputFlags) output(path string, prog *progress) output {
	return output{path: path, prog: prog, targetIsZero: f.targetIsZero, readBack: f.verify, existing: f.existing}
}

// write streams d to the output (target.Write): a regular file (or a new
// path) sparsely under a temporary name, mode 0600, renamed when complete
// and verified; a block device in place; stdout, a pipe or /dev/null in
// order.
func (o output) write(ctx context.Context, d blockdev.Device) (st target.Stats, err error) {
	if isRBD(o.path) {
		return o.writeRBD(ctx, d)
	}
	if o.existing {
		return st, usageError("--existing applies to rbd:POOL/IMAGE outputs only")
	}
	return target.Write(ctx, o.path, d, o.options())
}

// isRBD reports whether an output path names an RBD image.
func isRBD(path string) bool { return strings.HasPrefix(path, "rbd:") }

// writeRBD writes d into the RBD image o.path (rbd.Write).
func (o output) writeRBD(ctx context.Context, d blockdev.Device) (st target.Stats, err error) {
	spec, err := rbd.ParseSpec(o.path)
	if err != nil {
		return st, usageError("-o: %v", err)
	}
	c, err := rbd.Connect(ctx, o.ceph)
	if err != nil {
		return st, err
	}
	defer c.Close()
	return rbd.Write(ctx, c, spec, d, rbd.WriteOptions{Options: o.options(), Existing: o.existing})
}

func (o output) options() target.Options {
	return target.Options{Progress: o.prog.Add, TargetIsZero: o.targetIsZero, Verify: o.readBack, Check: o.verify}
}

// writeQcow2 writes the plaintext disk d as a qcow2 image (encrypted when
// wopts carry a LUKS area and cipher) to the file path.
func (o output) writeQcow2(ctx context.Context, d blockdev.Device, wopts qcowio.WriteOptions) error {
	if o.path == "" || o.path == "-" {
		return usageError("qcow2 output is written with seeks: use -o FILE, not stdout")
	}
	if isRBD(o.path) {
		return usageError("qcow2 output is a file: -o %s is an RBD image (use --to luks or --to raw)", o.path)
	}
	if kind, err := target.Classify(o.path); err != nil {
		return err
	} else if kind != target.KindFile {
		return usageError("qcow2 output is written with seeks into a new file: -o %s is not a regular file", o.path)
	}
	if o.readBack || o.targetIsZero {
		return usageError("--verify and --target-is-zero apply to raw and LUKS output, not qcow2")
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
