package tests

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// Every command that takes a SOURCE — info, cat, inspect, mount, export,
// encrypt — runs on the same images given as a local file, an http:// URL
// and a Glance id, with flags placed after SOURCE, and its bytes are
// compared with the plaintext (qemu-img made the images).
func TestEveryCommandOnEverySource(t *testing.T) {
	testimg.Need(t, "qemu-img")
	tc := needCloud(t)
	dir := t.TempDir()
	plain := testimg.RandomBytes(3<<20, 77)
	clear(plain[1<<20 : 2<<20]) // a zero run: holes for sparse outputs
	enc := testimg.ConvertQcow2(t, dir, "enc.qcow2", plain, "", testPassphrase, false)
	raw := testimg.WriteFile(t, dir, "plain.raw", plain)
	pf := passFile(t, dir, testPassphrase)
	secret := tc.createSecret(t, "passphrase", []byte(testPassphrase))
	web := serveDir(t, dir)

	type source struct {
		kind     string
		enc, raw string   // the qcow2+LUKS image and the plain raw image
		key      []string // key flags for the encrypted image
	}
	sources := []source{
		{"file", enc, raw, []string{"--passphrase-file", pf}},
		{"http", web + "/enc.qcow2", web + "/plain.raw", []string{"--passphrase-file", pf}},
		{"glance",
			tc.uploadImage(t, "qcow2", map[string]string{"os_encrypt_format": "luks", "os_encrypt_key_id": secret}, enc),
			tc.uploadImage(t, "raw", nil, raw), nil},
	}
	for _, s := range sources {
		t.Run(s.kind, func(t *testing.T) {
			out := t.TempDir()
			withKey := func(args ...string) []string { return append(args, s.key...) }

			// info, with flags after SOURCE.
			var info struct {
				Format    string         `json:"format"`
				Encrypted bool           `json:"encrypted"`
				Source    map[string]any `json:"source"`
			}
			if err := json.Unmarshal(mustImgfs(t, nil, "info", s.enc, "--json"), &info); err != nil {
				t.Fatal(err)
			}
			if info.Format != "qcow2" || !info.Encrypted || info.Source["kind"] != s.kind {
				t.Fatalf("info: %+v", info)
			}

			// cat, whole and a range.
			if got := mustImgfs(t, nil, withKey("cat", s.enc)...); !bytes.Equal(got, plain) {
				t.Fatalf("cat: %d bytes differ from the %d-byte plaintext", len(got), len(plain))
			}
			if got := mustImgfs(t, nil, withKey("cat", s.enc, "--offset", "1000000", "--length", "2M")...); !bytes.Equal(got, plain[1000000:1000000+2<<20]) {
				t.Fatal("cat --offset --length differs")
			}

			// inspect examines the plaintext with the key.
			var ins struct {
				InnerExamined bool `json:"inner_examined"`
				Safe          bool `json:"safe"`
			}
			if err := json.Unmarshal(mustImgfs(t, nil, withKey("inspect", s.enc, "--json")...), &ins); err != nil {
				t.Fatal(err)
			}
			if !ins.InnerExamined || !ins.Safe {
				t.Fatalf("inspect: %+v", ins)
			}

			// export to each format, read back by imgfs (and qemu-img).
			for _, to := range []string{"raw", "luks", "qcow2"} {
				o := filepath.Join(out, "export."+to)
				mustImgfs(t, nil, withKey("export", s.enc, "--to", to, "-o", o, "--progress", "off")...)
				args := []string{"cat", o}
				if to != "raw" {
					args = append(args, "--passphrase-file", pf)
				}
				if got := mustImgfs(t, nil, args...); !bytes.Equal(got, plain) {
					t.Fatalf("export --to %s: read back differs", to)
				}
			}
			if got := testimg.QemuRaw(t, filepath.Join(out, "export.qcow2"), testPassphrase); !bytes.Equal(got[:len(plain)], plain) {
				t.Fatal("qemu-img reads the exported qcow2+LUKS differently")
			}

			// encrypt a plain image from this source; an encrypted one is refused.
			o := filepath.Join(out, "new.luks")
			mustImgfs(t, nil, "encrypt", s.raw, "-o", o, "--passphrase-file", pf, "--pbkdf-iterations", "1000", "--progress", "off")
			if got := mustImgfs(t, nil, "cat", o, "--passphrase-file", pf); !bytes.Equal(got, plain) {
				t.Fatal("encrypt: read back differs")
			}
			mustFail(t, runImgfs(t, nil, "encrypt", s.enc, "-o", filepath.Join(out, "x"), "--passphrase-file", pf), "already encrypted")

			// mount: the disk reads back exactly.
			mnt, pid := mountDaemon(t, withKey(s.enc)...)
			got, err := os.ReadFile(filepath.Join(mnt, "disk"))
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("mount: disk differs (%v)", err)
			}
			js, _ := os.ReadFile(filepath.Join(mnt, "image.json"))
			if !strings.Contains(string(js), `"kind": "`+s.kind+`"`) {
				t.Fatalf("image.json lacks the source kind: %s", js)
			}
			unmountAndCheck(t, mnt, pid)
		})
	}
}

// The command line behaves as people expect: --version names the commit
// and Go version, `--` still ends flags, and a command without a flag is
// never failed by another command's flag (issue #15: encrypt of an http
// source used to fail on --http-stall-timeout, which it does not have).
func TestCommandLineConventions(t *testing.T) {
	v := string(mustImgfs(t, nil, "--version"))
	if !strings.HasPrefix(v, "imgfs ") || !strings.Contains(v, "go1.") || !strings.Contains(v, "commit ") {
		t.Fatalf("--version printed %q", v)
	}
	dir := t.TempDir()
	plain := testimg.RandomBytes(1<<20, 5)
	p := testimg.WriteFile(t, dir, "-odd.raw", plain)
	pf := passFile(t, dir, testPassphrase)
	t.Chdir(dir)
	// "-odd.raw" after -- is a SOURCE, not a flag.
	if got := mustImgfs(t, nil, "cat", "--", "-odd.raw"); !bytes.Equal(got, plain) {
		t.Fatal("cat -- -odd.raw differs")
	}
	web := serveDir(t, dir)
	o := filepath.Join(dir, "out.luks")
	mustImgfs(t, nil, "encrypt", "--passphrase-file", pf, "-o", o, "--pbkdf-iterations", "1000", web+"/"+filepath.Base(p))
	if got := mustImgfs(t, nil, "cat", o, "--passphrase-file", pf); !bytes.Equal(got, plain) {
		t.Fatal("encrypt of an http source: read back differs")
	}
	if s := string(mustImgfs(t, nil, "completion", "bash")); !strings.Contains(s, "complete ") {
		t.Fatalf("completion bash printed %q", s)
	}
}
