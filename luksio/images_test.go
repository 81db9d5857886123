package luksio

import (
	"os"
	"sync"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// qemu-img spends seconds calibrating PBKDF2 for every LUKS image it makes,
// so each qemu-made image of the matrix is built once and shared by tests.

// qemuCase is one qemu-img-made LUKS1 image of the test matrix.
type qemuCase struct {
	name     string
	opts     testimg.QemuLUKSOpts
	spec     string
	keyBytes int
}

// qemuMatrix covers every AES key size qemu can make (aes-192 aborts
// qemu 7.2), every mode and IV generator, every header hash, plus twofish
// and cast5.
var qemuMatrix = []qemuCase{
	{"aes256-xts-plain64-sha256", testimg.QemuLUKSOpts{CipherAlg: "aes-256", Mode: "xts", IVGen: "plain64", Hash: "sha256"}, "aes-xts-plain64", 64},
	{"aes128-xts-plain64-sha1", testimg.QemuLUKSOpts{CipherAlg: "aes-128", Mode: "xts", IVGen: "plain64", Hash: "sha1"}, "aes-xts-plain64", 32},
	{"aes256-xts-plain-sha512", testimg.QemuLUKSOpts{CipherAlg: "aes-256", Mode: "xts", IVGen: "plain", Hash: "sha512"}, "aes-xts-plain", 64},
	{"aes256-cbc-essiv-sha512", testimg.QemuLUKSOpts{CipherAlg: "aes-256", Mode: "cbc", IVGen: "essiv", IVHash: "sha256", Hash: "sha512"}, "aes-cbc-essiv:sha256", 32},
	{"aes256-xts-essiv-sha256", testimg.QemuLUKSOpts{CipherAlg: "aes-256", Mode: "xts", IVGen: "essiv", IVHash: "sha256", Hash: "sha256"}, "aes-xts-essiv:sha256", 64},
	{"aes128-cbc-plain64-sha1", testimg.QemuLUKSOpts{CipherAlg: "aes-128", Mode: "cbc", IVGen: "plain64", Hash: "sha1"}, "aes-cbc-plain64", 16},
	{"twofish256-xts-plain64-sha256", testimg.QemuLUKSOpts{CipherAlg: "twofish-256", Mode: "xts", IVGen: "plain64", Hash: "sha256"}, "twofish-xts-plain64", 64},
	{"cast5-cbc-plain-sha1", testimg.QemuLUKSOpts{CipherAlg: "cast5-128", Mode: "cbc", IVGen: "plain", Hash: "sha1"}, "cast5-cbc-plain", 16},
}

// qemuPlainSize is the plaintext size of every matrix image: 1 MiB plus
// three sectors, so that nothing is a power of two.
const qemuPlainSize = 1<<20 + 3*512

var (
	imageDir  string
	imageMu   sync.Mutex
	imageOnce = map[string]*sync.Once{}
	imagePath = map[string]string{}
)

func TestMain(m *testing.M) {
	var err error
	imageDir, err = os.MkdirTemp("", "luksio-images-")
	if err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(imageDir)
	os.Exit(code)
}

// qemuImage returns the path and plaintext of matrix image i, making it on
// first use.
func qemuImage(t *testing.T, i int) (string, []byte) {
	t.Helper()
	c := qemuMatrix[i]
	plain := testimg.RandomBytes(qemuPlainSize, uint64(i+1))
	imageMu.Lock()
	once := imageOnce[c.name]
	if once == nil {
		once = new(sync.Once)
		imageOnce[c.name] = once
	}
	imageMu.Unlock()
	once.Do(func() {
		testimg.Need(t, "qemu-img")
		p := testimg.QemuLUKS1(t, imageDir, c.name, plain, luks1Pass, c.opts)
		imageMu.Lock()
		imagePath[c.name] = p
		imageMu.Unlock()
	})
	imageMu.Lock()
	p := imagePath[c.name]
	imageMu.Unlock()
	if p == "" {
		t.Fatalf("image %s could not be made (see the test that tried first)", c.name)
	}
	return p, plain
}
