package fusefs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// CheckMountpoint refuses a mountpoint that is not a directory or that
// already holds a FUSE mount, live or stale (left by a killed imgfs).
func CheckMountpoint(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if fstype := MountedFS(abs); strings.HasPrefix(fstype, "fuse") {
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

// MountedFS returns the type of the topmost mount at the absolute path dir
// ("" if none), from /proc/self/mounts.
func MountedFS(dir string) string {
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

// ErrBusy means a mount could not be unmounted because a process uses it.
var ErrBusy = errors.New("mount is busy")

// Unmount unmounts the FUSE mount at dir (also one left stale by a killed
// server) with fusermount3. A busy mount fails with ErrBusy unless lazy is
// set, which detaches it now and lets it go when the last file is closed.
func Unmount(dir string, lazy bool) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if MountedFS(dir) == "" {
		return fmt.Errorf("%s is not mounted", dir)
	}
	err = fusermount("-u", dir)
	if err == nil {
		return nil
	}
	if strings.Contains(err.Error(), "busy") {
		if !lazy {
			return fmt.Errorf("%v (a process still uses the mount; close it, or use --lazy): %w", err, ErrBusy)
		}
		return fusermount("-u", "-z", dir)
	}
	return err
}

// DetachLazily detaches a busy mount as libfuse does on a signal: open
// files then fail with ENOTCONN once the server is gone.
func DetachLazily(dir string) error { return fusermount("-u", "-z", dir) }

// fusermount runs fusermount3 with args and returns its complaint as the error.
func fusermount(args ...string) error {
	fm, err := FusermountPath()
	if err != nil {
		return fmt.Errorf("%w: fusermount3 is not in PATH (install it with `apt-get install fuse3`)", ErrFuseMissing)
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
