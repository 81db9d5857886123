// Package testimg makes test images with real tools (qemu-img, qemu-io,
// cryptsetup, python3-cryptography) so that imgfs is never tested against
// vectors it made itself.
//
// A test that needs a tool calls Need. Outside CI a missing tool skips the
// test loudly; with CI=true it fails, because `make test` installs every tool.
package testimg

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// InCI reports whether the tests run under CI (CI=true), where nothing may skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Need fails (in CI) or skips (elsewhere) the test when a tool is missing.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if InCI() {
				t.Fatalf("required tool %q is not installed (make test installs it)", tool)
			}
			t.Skipf("SKIP: required tool %q is not installed; run `make test` to install it", tool)
		}
	}
}

// Run runs a command and returns its stdout; it fails the test on error with
// the command's stderr.
func Run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := RunErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

// RunErr runs a command and returns its stdout, or an error carrying stderr.
func RunErr(name string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &cmdError{err: err, stderr: stderr.String()}
	}
	return stdout.Bytes(), nil
}

type cmdError struct {
	err    error
	stderr string
}

func (e *cmdError) Error() string { return e.err.Error() + ": " + strings.TrimSpace(e.stderr) }

// QemuImg runs qemu-img, retrying the intermittent "Unable to get accurate
// CPU usage" failure that PBKDF2 calibration hits on these VMs.
func QemuImg(t testing.TB, args ...string) []byte {
	t.Helper()
	Need(t, "qemu-img")
	return retryCalibration(t, "qemu-img", args...)
}

// QemuIO runs qemu-io with the same retry as QemuImg.
func QemuIO(t testing.TB, args ...string) []byte {
	t.Helper()
	Need(t, "qemu-io")
	return retryCalibration(t, "qemu-io", args...)
}

func retryCalibration(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	var err error
	var out []byte
	for i := 0; i < 60; i++ {
		out, err = RunErr(name, args...)
		if err == nil {
			return out
		}
		if !strings.Contains(err.Error(), "accurate CPU usage") {
			break
		}
		time.Sleep(time.Duration(i+1) * time.Millisecond)
	}
	t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	return nil
}

// RandomBytes returns n pseudo-random bytes from seed: reproducible plaintext.
func RandomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// WriteFile writes data to a new file in dir and returns its path.
func WriteFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := dir + "/" + name
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
