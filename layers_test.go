package imgfs_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The layers depend in one direction: the format packages and the mount
// know nothing of OpenStack, and blockdev's own package is the standard
// library only.
func TestLayering(t *testing.T) {
	deps := func(pkg string) []string {
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		return strings.Fields(string(out))
	}
	for _, pkg := range []string{"./luksio", "./qcowio", "./fusefs", "./blockdev", "./blockdev/target", "./keyring", "./sniff"} {
		for _, d := range deps(pkg) {
			if strings.Contains(d, "gophercloud") || strings.HasSuffix(d, "imgfs/cloud") || strings.Contains(d, "imgfs/blockdev/remote") {
				t.Errorf("%s depends on %s", pkg, d)
			}
		}
	}
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./blockdev").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range strings.Fields(string(out)) {
		if d != "github.com/imgfs/imgfs/blockdev" {
			t.Errorf("blockdev imports %s: it must use the standard library only", d)
		}
	}
}
