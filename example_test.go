package imgfs_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"

	"github.com/imgfs/imgfs"
)

// ExampleOpen opens a local file and the same image over HTTP ranges, and
// reads the same bytes from both. An encrypted image would take
// Options.Key (for instance keyring.PassphraseFile{Path: "pw"}); a Glance
// image id takes Options.Cloud and finds its key in Barbican.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "imgfs-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "disk.raw")
	data := bytes.Repeat([]byte("imgfs "), 200000) // a 1.2 MB raw disk
	if err := os.WriteFile(path, data, 0o600); err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer srv.Close()

	ctx := context.Background()
	for _, source := range []string{path, srv.URL + "/disk.raw"} {
		img, err := imgfs.Open(ctx, source, imgfs.Options{})
		if err != nil {
			log.Fatal(err)
		}
		buf := make([]byte, 11)
		if _, err := img.Disk.ReadAt(buf, 600000); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s, %d bytes, encrypted %v: %q\n", img.Info.Format, img.Disk.Size(), img.Info.Encrypted, buf)
		img.Close()
	}
	// Output:
	// raw, 1200000 bytes, encrypted false: "imgfs imgfs"
	// raw, 1200000 bytes, encrypted false: "imgfs imgfs"
}
