package tests

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

type mountStats struct {
	Requests     int64  `json:"requests"`
	BytesFetched int64  `json:"bytes_fetched"`
	Mode         string `json:"mode"`
}

func readMountStats(t *testing.T, dir string) mountStats {
	t.Helper()
	var st mountStats
	b := readFile(t, filepath.Join(dir, "stats"))
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("stats is not JSON: %v\n%s", err, b)
	}
	return st
}

// A mount of a remote source has a "stats" file with the live counters: it
// grows as the disk is read, and a local mount has none.
func TestMountStatsFileShowsLiveCounters(t *testing.T) {
	plain := testimg.RandomBytes(8<<20, 51)
	origin := serveDir(t, filepath.Dir(testimg.WriteFile(t, t.TempDir(), "disk.raw", plain)))
	dir, pid := mountDaemon(t, origin+"/disk.raw")
	before := readMountStats(t, dir)
	if before.Mode != "range" || before.Requests < 1 {
		t.Fatalf("stats before reading: %+v", before)
	}
	f, err := os.Open(filepath.Join(dir, "disk"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4<<20)
	if _, err := f.ReadAt(buf, 2<<20); err != nil || !bytes.Equal(buf, plain[2<<20:6<<20]) {
		t.Fatalf("disk read: %v or bytes differ", err)
	}
	f.Close()
	after := readMountStats(t, dir)
	if after.BytesFetched < before.BytesFetched+4<<20 || after.Requests <= before.Requests {
		t.Fatalf("stats did not follow the 4 MiB read: before %+v, after %+v", before, after)
	}
	unmountAndCheck(t, dir, pid)

	local := makeMountImage(t, "raw", plain)
	dir, pid = mountDaemon(t, local.path)
	if _, err := os.Stat(filepath.Join(dir, "stats")); !os.IsNotExist(err) {
		t.Fatalf("a local mount has a stats file (stat: %v)", err)
	}
	unmountAndCheck(t, dir, pid)
}
