package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/imgfs/imgfs"
	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/fusefs"
	"github.com/imgfs/imgfs/keyring"
	"github.com/imgfs/imgfs/luksio"
)

// daemonReadyEnv marks the re-executed child of `imgfs mount --daemon`: its
// value is the file descriptor on which the child writes "ready" once the
// mount serves.
const daemonReadyEnv = "IMGFS_DAEMON_READY_FD"

// daemonReadyMsg is what the daemon child writes on the ready pipe.
const daemonReadyMsg = "ready"

func mountCommand() *cli.Command {
	var (
		of                        openFlags
		cf                        catalogFlags
		allowOther, daemon, debug bool
		logPath                   string
		partKeys                  cli.StringSlice
	)
	return &cli.Command{
		Name:  "mount",
		Usage: "mount the image read-only with FUSE: MOUNTPOINT/disk (plaintext), disk.p1... (partitions), encrypted, disk.luks, image.json; or, with --catalog, every Glance image",
		Description: "Files are mode 0400, owned by you, and only you see the mount. --allow-other shows it\n" +
			"to every user (files 0444); a non-root user needs `user_allow_other` in /etc/fuse.conf.\n" +
			"Runs in the foreground until Ctrl-C, SIGTERM, SIGHUP or `imgfs umount`. --daemon returns\n" +
			"once the mount is ready and leaves it serving in the background (its later errors go\n" +
			"to --log FILE, else nowhere). A mount left by a killed imgfs is cleared by `imgfs umount`.\n\n" +
			"imgfs mount --catalog [--filter KEY=VALUE]... MOUNTPOINT shows every Glance image the\n" +
			"credentials can see as MOUNTPOINT/<image-id>/ (opened, keys from Barbican, when first\n" +
			"looked into; an image that cannot be opened shows error.txt), by-name/<name> links and\n" +
			"catalog.json (counters). At most --max-open images are open; their block caches share\n" +
			"--cache-total (each at most --cache-size, default 32MiB in a catalog).",
		ArgsUsage: "SOURCE MOUNTPOINT | --catalog MOUNTPOINT",
		Flags: append(append(of.flags(),
			&cli.BoolFlag{Name: "allow-other", Destination: &allowOther, Usage: "let other users read the mount (allow_other)"},
			&cli.BoolFlag{Name: "daemon", Aliases: []string{"d"}, Destination: &daemon, Usage: "return once mounted and serve in the background"},
			&cli.BoolFlag{Name: "debug", Destination: &debug, Usage: "log every FUSE request to stderr"},
			&cli.StringSliceFlag{Name: "partition-passphrase-file", Destination: &partKeys, Usage: "`N=FILE`: open the LUKS volume in partition N with the passphrase in FILE and serve its plaintext as disk.pN.plain (repeatable)"},
			&cli.StringFlag{Name: "log", Destination: &logPath, Usage: "append read errors (and, with --daemon, anything the daemon prints) to `FILE`"},
		), cf.flags()...),
		Action: func(c *cli.Context) error {
			var spec, dir string
			switch {
			case cf.on && c.NArg() != 1:
				return usageError("mount --catalog: want MOUNTPOINT only")
			case cf.on:
				spec, dir = "the Glance catalog", c.Args().Get(0)
			case c.NArg() != 2:
				return usageError("mount: want SOURCE MOUNTPOINT")
			default:
				for _, f := range []string{"filter", "ttl", "max-open", "idle-timeout", "cache-total", "list-page-size"} {
					if c.IsSet(f) {
						return usageError("mount: --%s needs --catalog", f)
					}
				}
				spec, dir = c.Args().Get(0), c.Args().Get(1)
			}
			if err := fusefs.CheckMountpoint(dir); err != nil {
				return err
			}
			if err := fusefs.CheckFuse(); err != nil {
				return err
			}
			readyFD := -1
			if v := os.Getenv(daemonReadyEnv); v != "" {
				fd, err := strconv.Atoi(v)
				if err != nil || fd < 3 {
					return fmt.Errorf("%s=%q: not a file descriptor", daemonReadyEnv, v)
				}
				readyFD = fd
				os.Unsetenv(daemonReadyEnv)
			} else if daemon {
				if debug {
					return usageError("mount: --debug logs to stderr, which --daemon closes: use one or the other")
				}
				return startDaemon(spec, dir)
			}
			opts, err := of.options()
			if err != nil {
				return err
			}
			// A mount cannot report a checksum at the end of a read: the
			// hash would cost every sequential read a core for nothing.
			opts.SkipChecksum = true
			var logFile *os.File
			var logger *log.Logger
			if logPath != "" {
				if logFile, err = os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err != nil {
					return fmt.Errorf("--log: %w", err)
				}
				defer logFile.Close()
				logger = log.New(logFile, "", log.LstdFlags)
			}
			if cf.on && len(partKeys.Value()) > 0 {
				return usageError("mount: --partition-passphrase-file takes one image, not --catalog")
			}
			if cf.on {
				cf.perImageSet, cf.blockSet = c.IsSet("cache-size"), c.IsSet("block-size")
				co, err := catalogMount(c.Context, &cf, opts)
				if err != nil {
					return err
				}
				co.AllowOther, co.Debug, co.Logger = allowOther, debug, logger
				return serve(spec, dir, func() (*fusefs.Server, error) { return fusefs.MountCatalog(dir, co) }, readyFD, logFile)
			}
			img, err := openImage(c.Context, spec, opts)
			if err != nil {
				return err
			}
			defer img.Close()
			fo, parts, err := mountOptions(img)
			if err != nil {
				return fmt.Errorf("%s: %w", spec, err)
			}
			inner, err := openLUKSPartitions(c.Context, img, parts, partKeys.Value())
			if err != nil {
				return fmt.Errorf("%s: %w", spec, err)
			}
			defer func() {
				for _, v := range inner {
					v.Close()
				}
			}()
			for n, v := range inner {
				fo.Extra = append(fo.Extra, fusefs.File{Name: n, Dev: v})
			}
			fo.AllowOther, fo.Debug, fo.Logger = allowOther, debug, logger
			return serve(spec, dir, func() (*fusefs.Server, error) { return fusefs.Mount(dir, fo) }, readyFD, logFile)
		},
	}
}

// openLUKSPartitions unlocks the LUKS partitions that --partition-passphrase-file
// gives keys for (N=FILE); it returns their plaintexts by file name
// (disk.pN.plain). A LUKS partition without a key stays ciphertext.
func openLUKSPartitions(ctx context.Context, img *imgfs.Image, parts *imgfs.Partitions, specs []string) (map[string]*luksio.Volume, error) {
	out := map[string]*luksio.Volume{}
	if len(specs) == 0 {
		return out, nil
	}
	fail := func(err error) (map[string]*luksio.Volume, error) {
		for _, v := range out {
			v.Close()
		}
		return nil, err
	}
	for _, spec := range specs {
		n, file, ok := strings.Cut(spec, "=")
		idx, err := strconv.Atoi(n)
		if !ok || err != nil || file == "" {
			return fail(usageError("--partition-passphrase-file %q: want N=FILE (N the partition number)", spec))
		}
		var part *imgfs.PartitionFile
		for i := range parts.Partitions {
			if parts.Partitions[i].Index == idx {
				part = &parts.Partitions[i]
			}
		}
		if part == nil {
			return fail(fmt.Errorf("--partition-passphrase-file: the disk has no partition %d", idx))
		}
		vol, err := img.OpenLUKSPartition(ctx, *part, keyring.PassphraseFile{Path: file})
		if err != nil {
			return fail(err)
		}
		name := part.File + ".plain"
		if _, dup := out[name]; dup {
			vol.Close()
			return fail(usageError("--partition-passphrase-file: partition %d given twice", idx))
		}
		out[name] = vol
	}
	return out, nil
}

// mountOptions describes what the mount serves for img, and returns the
// partition table it found (empty if none could be read).
func mountOptions(img *imgfs.Image) (fusefs.Options, *imgfs.Partitions, error) {
	js, err := json.MarshalIndent(img.Info, "", "  ")
	if err != nil {
		return fusefs.Options{}, nil, fmt.Errorf("image.json: %w", err)
	}
	opts := fusefs.Options{Disk: img.Disk, ImageJSON: append(js, '\n')}
	if img.Info.Encrypted {
		opts.Encrypted = img.Stored
		if opts.RawLUKS, err = img.RawLUKS(); err != nil {
			return opts, nil, fmt.Errorf("disk.luks: %w", err)
		}
	}
	// Unknown (-1) when Open deferred the L2 checks of a large image: the
	// disk then looks fully allocated (st_blocks), and SEEK_HOLE still
	// finds the holes.
	if q := img.Info.Qcow2; q != nil && q.AllocatedBytes > 0 {
		opts.DiskAllocated = q.AllocatedBytes
	}
	parts, err := img.Partitions()
	if err != nil {
		fmt.Fprintf(os.Stderr, "imgfs: warning: no partition files: %v\n", err)
		parts = &imgfs.Partitions{}
	}
	if len(parts.Partitions) > 0 || len(parts.Skipped) > 0 {
		for _, p := range parts.Partitions {
			opts.Extra = append(opts.Extra, fusefs.File{Name: p.File, Dev: p.Device})
		}
		js, err := json.MarshalIndent(parts, "", "  ")
		if err != nil {
			return opts, nil, fmt.Errorf("partitions.json: %w", err)
		}
		opts.Extra = append(opts.Extra, fusefs.File{Name: "partitions.json", Dev: bytes.NewReader(append(js, '\n'))})
	}
	if _, ok := img.Stats(); ok {
		opts.Stats = func() []byte {
			st, _ := img.Stats()
			b, _ := json.MarshalIndent(struct {
				blockdev.Stats
				Mode string `json:"mode,omitempty"`
			}{st, img.Mode()}, "", "  ")
			return append(b, '\n')
		}
	}
	return opts, parts, nil
}

// serve mounts and serves until unmounted or signalled.
func serve(spec, dir string, mount func() (*fusefs.Server, error), readyFD int, logFile *os.File) error {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	srv, err := mount()
	if err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		srv.Wait()
		close(done)
	}()
	if readyFD >= 0 {
		if err := detach(readyFD, logFile); err != nil {
			srv.Unmount()
			return err
		}
	} else {
		fmt.Fprintf(os.Stderr, "imgfs: mounted %s at %s (Ctrl-C or `imgfs umount %s` to unmount)\n", spec, srv.Dir(), srv.Dir())
	}

	defer func() {
		if n := srv.ReadErrors(); n > 1 {
			fmt.Fprintf(os.Stderr, "imgfs: %d reads failed with EIO while mounted\n", n)
		}
		if cc := srv.CatalogCounters(); cc.Listings > 0 {
			fmt.Fprintf(os.Stderr, "imgfs: catalog unmounted: %d list calls, %d opens, %d closes, %d open, %s fetched\n",
				cc.ListCalls, cc.Opens, cc.Closes, cc.OpenNow, blockdev.IBytes(cc.BytesFetched))
		}
	}()
	select {
	case <-done: // unmounted from outside (imgfs umount, fusermount3 -u)
		return nil
	case <-sigs:
	}
	if err := srv.Unmount(); err != nil {
		if lerr := fusefs.DetachLazily(srv.Dir()); lerr != nil {
			return fmt.Errorf("%v; lazy unmount: %v", err, lerr)
		}
		fmt.Fprintf(os.Stderr, "imgfs: %s was busy: detached it lazily\n", srv.Dir())
		return nil
	}
	<-done
	return nil
}

// startDaemon re-executes imgfs with the same arguments in a new session and
// waits until the child says the mount is ready, as sshfs-style tools do. The
// child inherits stdin (for --passphrase-file -) and stderr (for errors
// before the mount is ready), then detaches from both.
func startDaemon(spec, dir string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("daemon: find own executable: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	defer r.Close()
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), daemonReadyEnv+"=3")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, nil, os.Stderr
	cmd.ExtraFiles = []*os.File{w} // fd 3 in the child
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("daemon: start: %w", err)
	}
	w.Close()
	line, _ := bufio.NewReader(r).ReadString('\n')
	if strings.TrimSpace(line) == daemonReadyMsg {
		pid := cmd.Process.Pid
		cmd.Process.Release()
		abs, _ := filepath.Abs(dir)
		fmt.Fprintf(os.Stderr, "imgfs: mounted %s at %s (daemon pid %d; `imgfs umount %s` to unmount)\n", spec, abs, pid, abs)
		return nil
	}
	// The child failed before the mount was ready; it printed why.
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 {
		return cli.Exit("", ee.ExitCode())
	}
	return fmt.Errorf("daemon exited before the mount was ready: %v", err)
}

// detach is the daemon child's last step of mounting: stdio goes to
// /dev/null, stderr to logFile if there is one (so the parent's pipes close),
// and "ready" goes to the parent.
func detach(readyFD int, logFile *os.File) error {
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer null.Close()
	for fd := 0; fd <= 2; fd++ {
		to := null
		if fd == 2 && logFile != nil {
			to = logFile
		}
		if err := unix.Dup3(int(to.Fd()), fd, 0); err != nil {
			return fmt.Errorf("daemon: redirect fd %d: %w", fd, err)
		}
	}
	ready := os.NewFile(uintptr(readyFD), "ready")
	defer ready.Close()
	if _, err := ready.WriteString(daemonReadyMsg + "\n"); err != nil {
		return fmt.Errorf("daemon: tell the parent: %w", err)
	}
	return nil
}
