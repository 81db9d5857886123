package main

import (
	"bufio"
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

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/fusefs"
)

// daemonReadyEnv marks the re-executed child of `imgfs mount --daemon`: its
// value is the file descriptor on which the child writes "ready" once the
// mount serves.
const daemonReadyEnv = "IMGFS_DAEMON_READY_FD"

// daemonReadyMsg is what the daemon child writes on the ready pipe.
const daemonReadyMsg = "ready"

func mountCommand() *cli.Command {
	return &cli.Command{
		Name:  "mount",
		Usage: "mount the image read-only with FUSE: MOUNTPOINT/disk (plaintext), MOUNTPOINT/encrypted, MOUNTPOINT/image.json",
		Description: "Files are mode 0400, owned by you, and only you see the mount. --allow-other shows it\n" +
			"to every user (files 0444); a non-root user needs `user_allow_other` in /etc/fuse.conf.\n" +
			"Runs in the foreground until Ctrl-C, SIGTERM, SIGHUP or `imgfs umount`. --daemon returns\n" +
			"once the mount is ready and leaves it serving in the background (its later errors go\n" +
			"to --log FILE, else nowhere). A mount left by a killed imgfs is cleared by `imgfs umount`.",
		ArgsUsage: "SOURCE MOUNTPOINT",
		Flags: append(append(append(keyFlags(), formatFlags()...), sourceFlags()...),
			&cli.BoolFlag{Name: "allow-other", Usage: "let other users read the mount (allow_other)"},
			&cli.BoolFlag{Name: "daemon", Aliases: []string{"d"}, Usage: "return once mounted and serve in the background"},
			&cli.BoolFlag{Name: "debug", Usage: "log every FUSE request to stderr"},
			&cli.StringFlag{Name: "log", Usage: "append read errors (and, with --daemon, anything the daemon prints) to `FILE`"},
		),
		Action: mountAction,
	}
}

func umountCommand() *cli.Command {
	return &cli.Command{
		Name:      "umount",
		Usage:     "unmount an imgfs mount (also one left behind by a killed imgfs)",
		ArgsUsage: "MOUNTPOINT",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "lazy", Aliases: []string{"z"}, Usage: "if the mount is busy, detach it now and let it go when the last file is closed"},
		},
		Action: umountAction,
	}
}

func mountAction(c *cli.Context) error {
	if c.NArg() != 2 {
		return usageError("mount: want SOURCE MOUNTPOINT")
	}
	spec, dir := c.Args().Get(0), c.Args().Get(1)
	if err := checkMountpoint(dir); err != nil {
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
	} else if c.Bool("daemon") {
		if c.Bool("debug") {
			return usageError("mount: --debug logs to stderr, which --daemon closes: use one or the other")
		}
		return startDaemon(spec, dir)
	}

	img, src, err := openImage(c, spec)
	if err != nil {
		return err
	}
	defer src.close()
	defer img.Close()
	js, err := json.MarshalIndent(img.Info, "", "  ")
	if err != nil {
		return fmt.Errorf("image.json: %w", err)
	}
	opts := fusefs.Options{
		Disk:       img.Disk,
		ImageJSON:  append(js, '\n'),
		AllowOther: c.Bool("allow-other"),
		Debug:      c.Bool("debug"),
	}
	if img.Info != nil && img.Info.Encrypted {
		opts.Encrypted = img.Stored
		if opts.RawLUKS, err = rawLUKSView(img); err != nil {
			return fmt.Errorf("%s: disk.luks: %w", spec, err)
		}
	}
	// Unknown (-1) when Open deferred the L2 checks of a large image: the
	// disk then looks fully allocated (st_blocks), and SEEK_HOLE still
	// finds the holes.
	if img.Info != nil && img.Info.Qcow2 != nil && img.Info.Qcow2.AllocatedBytes > 0 {
		opts.DiskAllocated = img.Info.Qcow2.AllocatedBytes
	}
	if src.stats != nil {
		opts.Stats = func() []byte {
			st := struct {
				blockdev.Stats
				Mode any `json:"mode,omitempty"`
			}{Stats: src.stats()}
			if m, ok := src.dev.(blockdev.ModeReporter); ok {
				st.Mode = m.Mode()
			}
			b, _ := json.MarshalIndent(st, "", "  ")
			return append(b, '\n')
		}
	}

	var logFile *os.File
	if p := c.String("log"); p != "" {
		if logFile, err = os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err != nil {
			return fmt.Errorf("--log: %w", err)
		}
		defer logFile.Close()
		opts.Logger = log.New(logFile, "", log.LstdFlags)
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	srv, err := fusefs.Mount(dir, opts)
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
	}()
	select {
	case <-done: // unmounted from outside (imgfs umount, fusermount3 -u)
		return nil
	case <-sigs:
	}
	if err := srv.Unmount(); err != nil {
		// Busy: detach it as libfuse does on a signal; open files then
		// fail with ENOTCONN once this process is gone.
		if lerr := fusermount("-u", "-z", srv.Dir()); lerr != nil {
			return fmt.Errorf("%v; lazy unmount: %v", err, lerr)
		}
		fmt.Fprintf(os.Stderr, "imgfs: %s was busy: detached it lazily\n", srv.Dir())
		return nil
	}
	<-done
	return nil
}

// checkMountpoint refuses a mountpoint that is not a directory or that
// already holds an imgfs mount, live or stale (left by a killed imgfs).
func checkMountpoint(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if fstype := mountedFS(abs); strings.HasPrefix(fstype, "fuse") {
		if _, err := os.ReadDir(abs); errors.Is(err, syscall.ENOTCONN) {
			return fmt.Errorf("%s: a stale mount (its imgfs was killed) is still there: run `imgfs umount %s` first", dir, dir)
		}
		return fmt.Errorf("%s: already a %s mount: run `imgfs umount %s` first", dir, fstype, dir)
	}
	st, err := os.Stat(abs)
	switch {
	case errors.Is(err, syscall.ENOTCONN):
		return fmt.Errorf("%s: a stale mount (its imgfs was killed) is still there: run `imgfs umount %s` first", dir, dir)
	case err != nil:
		return fmt.Errorf("mountpoint: %w", err)
	case !st.IsDir():
		return fmt.Errorf("mountpoint %s is not a directory", dir)
	}
	return nil
}

// mountedFS returns the type of the topmost mount at the absolute path dir
// ("" if none), from /proc/self/mounts.
func mountedFS(dir string) string {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return ""
	}
	fstype := ""
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && unescapeMountField(f[1]) == dir {
			fstype = f[2]
		}
	}
	return fstype
}

// unescapeMountField undoes the octal escapes (\040 for a space) of
// /proc/self/mounts.
func unescapeMountField(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
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

func umountAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError("umount: want MOUNTPOINT")
	}
	dir, err := filepath.Abs(c.Args().First())
	if err != nil {
		return err
	}
	if mountedFS(dir) == "" {
		return fmt.Errorf("%s is not mounted", dir)
	}
	err = fusermount("-u", dir)
	if err == nil {
		return nil
	}
	if strings.Contains(err.Error(), "busy") {
		if !c.Bool("lazy") {
			return fmt.Errorf("%v (a process still uses the mount; close it, or use --lazy)", err)
		}
		return fusermount("-u", "-z", dir)
	}
	return err
}

// fusermount runs fusermount3 with args and returns its complaint as the error.
func fusermount(args ...string) error {
	fm, err := fusefs.FusermountPath()
	if err != nil {
		return fmt.Errorf("%w: fusermount3 is not in PATH (install it with `apt-get install fuse3`)", fusefs.ErrFuseMissing)
	}
	out, err := exec.Command(fm, args...).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if msg == "" {
			msg = err.Error()
		}
		return fmt.Errorf("%s", msg)
	}
	return nil
}
