package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgfs/imgfs/cloud"
	"github.com/imgfs/imgfs/tests/testimg"
)

// shortTokenLifetime is the token lifetime, in seconds, of the second
// Keystone that TestTokenExpiresMidRead starts. Keystone truncates the issue
// time to whole seconds, so a token lives between lifetime-1 and lifetime
// seconds. imgfs renews a token once per request, so a renewed token must
// outlive the retried request's validation by Glance: 10 s leaves room for a
// loaded machine. (8 s once failed so, back when the test cloud's Keystone
// stalled up to 4 s per other keep-alive connection: Glance took 8 s to
// validate a renewed token, found it expired, and the read failed with a
// 401; see "Connection: close" in cloud.sh.)
const shortTokenLifetime = 10

// shortKeystone is a second Keystone process on the shared test cloud's
// database and fernet keys whose tokens expire after shortTokenLifetime
// seconds (tests/cloud/cloud.sh short-keystone). The shared Keystone, which
// Glance's and Barbican's keystonemiddleware ask, validates its tokens and
// rejects them once they have expired: real Keystone tokens, really expired.
type shortKeystone struct {
	url    string // its identity v3 URL
	config string // a clouds.yaml whose loopback-demo authenticates there
}

// startShortKeystone starts a short-token Keystone in the background and
// returns a function that waits for it and writes the clouds.yaml. Cleanup
// stops it. Starting it takes a few seconds (a Python WSGI app); the caller
// makes its images meanwhile.
func startShortKeystone(t *testing.T, dir string) func() shortKeystone {
	t.Helper()
	cloudDir, sharedURL := os.Getenv("IMGFS_TEST_CLOUD_DIR"), os.Getenv("OSL_KEYSTONE_URL")
	if cloudDir == "" || sharedURL == "" {
		t.Fatal("IMGFS_TEST_CLOUD_DIR or OSL_KEYSTONE_URL is not set: run the tests through tests/with-cloud.sh")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	script, err := filepath.Abs(filepath.Join("cloud", "cloud.sh"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(script, "short-keystone", cloudDir, port, strconv.Itoa(shortTokenLifetime))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatalf("cloud.sh short-keystone: %v", err)
	}
	waited := false
	t.Cleanup(func() {
		if !waited {
			cmd.Wait() // a test that failed meanwhile: let the start finish, then stop
		}
		if r, err := exec.Command(script, "stop-short-keystone", cloudDir, port).CombinedOutput(); err != nil {
			t.Errorf("cloud.sh stop-short-keystone: %v: %s", err, r)
		}
	})
	return func() shortKeystone {
		t.Helper()
		waited = true
		if err := cmd.Wait(); err != nil {
			t.Fatalf("cloud.sh short-keystone %s %s %d: %v\n%s", cloudDir, port, shortTokenLifetime, err, errb.Bytes())
		}
		m := regexp.MustCompile(`(?m)^export OSL_SHORT_KEYSTONE_URL=(\S+)$`).FindSubmatch(out.Bytes())
		if m == nil {
			t.Fatalf("cloud.sh short-keystone printed no OSL_SHORT_KEYSTONE_URL: %q", out.Bytes())
		}
		url := string(m[1])
		y, err := os.ReadFile(os.Getenv("OS_CLIENT_CONFIG_FILE"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(y, []byte("auth_url: "+sharedURL+"\n")) {
			t.Fatalf("the shared clouds.yaml has no auth_url %s", sharedURL)
		}
		short := strings.ReplaceAll(string(y), "auth_url: "+sharedURL+"\n", "auth_url: "+url+"\n")
		return shortKeystone{url: url, config: testimg.WriteFile(t, dir, "clouds-short-token.yaml", []byte(short))}
	}
}

// shortToken is a token the short-token Keystone issued, as Keystone states
// its times.
type shortToken struct {
	id                 string
	issuedAt, expireAt time.Time
}

// lifetime is the token's lifetime as Keystone states it.
func (s shortToken) lifetime() time.Duration { return s.expireAt.Sub(s.issuedAt) }

// getShortToken authenticates through OS_CLIENT_CONFIG_FILE (the
// short-token clouds.yaml) and returns the token and its times.
func getShortToken(t *testing.T) shortToken {
	t.Helper()
	c, err := cloud.Connect(context.Background(), "")
	if err != nil {
		t.Fatalf("authenticate at the short-token Keystone: %v", err)
	}
	ar, ok := c.Provider.GetAuthResult().(interface{ ExtractInto(any) error })
	if !ok {
		t.Fatalf("auth result %T has no body", c.Provider.GetAuthResult())
	}
	var tok struct { // ExtractInto unwraps {"token": ...}
		IssuedAt  time.Time `json:"issued_at"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := ar.ExtractInto(&tok); err != nil {
		t.Fatalf("token body: %v", err)
	}
	return shortToken{id: c.Provider.Token(), issuedAt: tok.IssuedAt, expireAt: tok.ExpiresAt}
}

// glanceStatus is Glance's status for a 1-byte range of image id's data
// with token tok, sent as is (no renewal).
func glanceStatus(t *testing.T, tc *testCloud, id, tok string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, tc.fileURL(id), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Auth-Token", tok)
	req.Header.Set("Range", "bytes=0-0")
	resp, err := tc.cloud.HTTP.Do(req)
	if err != nil {
		t.Fatalf("glance GET with the short-lived token: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// sleepPastExpiry sleeps until every token the short Keystone issued before
// issuedBefore has expired, with a margin.
func sleepPastExpiry(t *testing.T, issuedBefore time.Time) {
	t.Helper()
	d := time.Until(issuedBefore.Add(shortTokenLifetime*time.Second + 1500*time.Millisecond))
	t.Logf("sleeping %s until the token has expired", d.Round(time.Millisecond))
	time.Sleep(d)
}

var catRenewalsRE = regexp.MustCompile(`(\d+) token renewals`)

// Issue #8: a Glance token that expires in the middle of a read is renewed
// transparently. A second Keystone (same database and fernet keys as the
// shared one) issues real tokens that live shortTokenLifetime seconds. imgfs
// authenticates there, and both a mount and a cat read the first part of an
// encrypted Glance image; then the token expires (Glance answers 401 to it:
// checked with a token issued just before imgfs's) and the rest of each read
// renews it and returns exact plaintext. Both reads wait out one expiry.
func TestTokenExpiresMidRead(t *testing.T) {
	tc := needCloud(t) // the shared cloud: long-lived tokens for uploads
	testimg.Need(t, "fusermount3")
	start := time.Now()
	dir := t.TempDir()
	waitKeystone := startShortKeystone(t, dir)

	// while the short-token Keystone starts: a qcow2+LUKS image keyed in
	// Barbican (for the mount) and a raw LUKS one (for cat) larger than the
	// ~24 MiB cat's copy pipeline reads ahead of a blocked writer
	mountPlain := testimg.RandomBytes(6<<20, 81)
	clear(mountPlain[2<<20 : 3<<20])
	qcow := testimg.ConvertQcow2(t, dir, "mount.qcow2", mountPlain, "", testPassphrase, false)
	secret := tc.createSecret(t, "passphrase", []byte(testPassphrase))
	mountID := tc.uploadImage(t, "qcow2", map[string]string{
		"os_encrypt_format": "luks", "os_encrypt_key_id": secret,
		"os_decrypt_size": strconv.Itoa(len(mountPlain)), "os_decrypt_container_format": "bare",
	}, qcow)
	catPlain := testimg.RandomBytes(48<<20, 82)
	luks := testimg.QemuLUKS1(t, dir, "cat.luks", catPlain, testPassphrase, testimg.QemuLUKSOpts{})
	catID := tc.uploadImage(t, "luks", map[string]string{"os_encrypt_format": "luks"}, luks)
	pass := passFile(t, dir, testPassphrase)

	ks := waitKeystone()
	// imgfs (through mountDaemon too) authenticates at the short-token Keystone
	t.Setenv("OS_CLIENT_CONFIG_FILE", ks.config)
	t.Logf("short-token Keystone %s up, images ready after %s", ks.url, time.Since(start).Round(time.Millisecond))

	// a token issued before imgfs's: Glance takes it now, refuses it later
	probe := getShortToken(t)
	if got := probe.lifetime(); got != shortTokenLifetime*time.Second {
		t.Fatalf("the short-token Keystone issued a token living %s, want %ds", got, shortTokenLifetime)
	}
	if c := glanceStatus(t, tc, mountID, probe.id); c != http.StatusPartialContent {
		t.Fatalf("Glance answers %d to a fresh short-lived token, want 206", c)
	}

	// the mount: read its first MiB
	mnt, pid := mountDaemon(t, "--block-size", "256K", "--cache-size", "1M", mountID)
	disk, err := os.Open(filepath.Join(mnt, "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	gotMount := make([]byte, len(mountPlain))
	const first = 1 << 20
	if _, err := io.ReadFull(disk, gotMount[:first]); err != nil {
		t.Fatalf("read the mount's first MiB: %v", err)
	}
	mountBefore := readTokenStats(t, mnt)
	t.Logf("mounted and read 1 MiB at %s", time.Since(start).Round(time.Millisecond))

	// cat: read its first MiB; it then blocks writing to the full pipe, with
	// what its pipeline has fetched ahead, and needs a new token for the rest
	cat := exec.Command(imgfsBin, "cat", "--stats", "--passphrase-file", pass, "--block-size", "256K", catID)
	stdout, err := cat.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var catErr bytes.Buffer
	cat.Stderr = &catErr
	if err := cat.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Process.Kill(); cat.Wait() })
	out := bufio.NewReaderSize(stdout, 1<<20)
	gotCat := make([]byte, len(catPlain))
	if _, err := io.ReadFull(out, gotCat[:first]); err != nil {
		cat.Process.Kill()
		cat.Wait()
		t.Fatalf("read cat's first MiB: %v; stderr %s", err, catErr.Bytes())
	}
	// every token imgfs holds was issued before now (cat's is the newest)
	sleepPastExpiry(t, time.Now())
	if c := glanceStatus(t, tc, mountID, probe.id); c != http.StatusUnauthorized {
		t.Fatalf("after its expiry Glance answers %d to the short-lived token, want 401", c)
	}

	// the rest of both reads, with expired tokens
	t.Logf("token expired at %s", time.Since(start).Round(time.Millisecond))
	if _, err := io.ReadFull(disk, gotMount[first:]); err != nil {
		t.Fatalf("read the rest of the mount after the token expired: %v", err)
	}
	if !bytes.Equal(gotMount, mountPlain) {
		t.Fatal("the mount's disk read across the token expiry differs from the plaintext")
	}
	mountAfter := readTokenStats(t, mnt)
	if mountAfter.TokenRenewals <= mountBefore.TokenRenewals {
		t.Fatalf("mount stats: token_renewals %d before the expiry, %d after; want a renewal",
			mountBefore.TokenRenewals, mountAfter.TokenRenewals)
	}
	disk.Close()
	unmountAndCheck(t, mnt, pid)
	t.Logf("FIGURE token expiry: lifetime %ds, renewals %d, bytes exact (mount of a %d MiB qcow2+LUKS Glance image, key in Barbican; %d renewals before the expiry)",
		shortTokenLifetime, mountAfter.TokenRenewals, len(mountPlain)>>20, mountBefore.TokenRenewals)

	t.Logf("mount read and unmounted at %s", time.Since(start).Round(time.Millisecond))
	if _, err := io.ReadFull(out, gotCat[first:]); err != nil {
		cat.Wait()
		t.Fatalf("read the rest of cat's output after the token expired: %v; stderr %s", err, catErr.Bytes())
	}
	if n, _ := out.Read(make([]byte, 1)); n != 0 {
		t.Fatal("imgfs cat wrote more than the plaintext")
	}
	if err := cat.Wait(); err != nil {
		t.Fatalf("imgfs cat across the token expiry: %v; stderr %s", err, catErr.Bytes())
	}
	if !bytes.Equal(gotCat, catPlain) {
		t.Fatal("imgfs cat across the token expiry: the bytes differ from the plaintext")
	}
	m := catRenewalsRE.FindSubmatch(catErr.Bytes())
	if m == nil {
		t.Fatalf("--stats does not say the token renewals: %s", catErr.Bytes())
	}
	catRenewals, _ := strconv.Atoi(string(m[1]))
	if catRenewals < 1 {
		t.Fatalf("imgfs cat: no token renewal in a read across the expiry: %s", catErr.Bytes())
	}
	t.Logf("imgfs cat: %s", bytes.TrimSpace(catErr.Bytes()))
	t.Logf("FIGURE token expiry: lifetime %ds, renewals %d, bytes exact (cat of a %d MiB LUKS Glance image through a stalled pipe)",
		shortTokenLifetime, catRenewals, len(catPlain)>>20)
	t.Logf("wall time %s", time.Since(start).Round(time.Millisecond))
}

// tokenStats is the part of a mount's stats file this test reads.
type tokenStats struct {
	TokenRenewals int64 `json:"token_renewals"`
}

func readTokenStats(t *testing.T, mnt string) tokenStats {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(mnt, "stats"))
	if err != nil {
		t.Fatal(err)
	}
	var st tokenStats
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("stats is not JSON: %v\n%s", err, b)
	}
	return st
}
