// Package tests holds imgfs's end-to-end tests: the real binary against images
// made by real tools, real FUSE mounts and a real local OpenStack cloud.
package tests

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// imgfsBin is the binary under test, built once by TestMain.
var imgfsBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "imgfs-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	imgfsBin = filepath.Join(dir, "imgfs")
	build := exec.Command("go", "build", "-o", imgfsBin, "../cmd/imgfs")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build imgfs:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is one run of the imgfs binary.
type result struct {
	stdout, stderr []byte
	code           int
}

// runImgfs runs the binary with stdin (may be nil) and returns what it printed
// and its exit code. It fails the test only if the binary could not start.
func runImgfs(t testing.TB, stdin []byte, args ...string) result {
	t.Helper()
	cmd := exec.Command(imgfsBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run imgfs: %v", err)
	}
	return result{stdout: out.Bytes(), stderr: errb.Bytes(), code: code}
}

// mustImgfs runs the binary and fails the test on a non-zero exit.
func mustImgfs(t testing.TB, stdin []byte, args ...string) []byte {
	t.Helper()
	r := runImgfs(t, stdin, args...)
	if r.code != 0 {
		t.Fatalf("imgfs %v: exit %d: %s", args, r.code, r.stderr)
	}
	return r.stdout
}
