package testimg

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// QemuLUKSOpts chooses the cipher of a qemu-made LUKS1 image. Empty fields
// take qemu's defaults except IterTime, which defaults to 10 ms.
type QemuLUKSOpts struct {
	CipherAlg string // "aes-128", "aes-256", "twofish-256", ...
	Mode      string // "xts", "cbc"
	IVGen     string // "plain64", "plain", "essiv"
	IVHash    string // ESSIV hash, e.g. "sha256"
	Hash      string // header hash: "sha1", "sha256", "sha512"
	IterTime  int    // ms
}

// QemuLUKS1 writes plain to dir/name.raw and converts it with qemu-img into
// the raw LUKS1 image dir/name.luks protected by pass; it returns the path.
func QemuLUKS1(t testing.TB, dir, name string, plain []byte, pass string, o QemuLUKSOpts) string {
	t.Helper()
	src := WriteFile(t, dir, name+".raw", plain)
	out := filepath.Join(dir, name+".luks")
	opts := []string{"key-secret=sec0"}
	add := func(k, v string) {
		if v != "" {
			opts = append(opts, k+"="+v)
		}
	}
	add("cipher-alg", o.CipherAlg)
	add("cipher-mode", o.Mode)
	add("ivgen-alg", o.IVGen)
	add("ivgen-hash-alg", o.IVHash)
	add("hash-alg", o.Hash)
	if o.IterTime == 0 {
		o.IterTime = 10
	}
	add("iter-time", strconv.Itoa(o.IterTime))
	QemuImg(t, "convert", "-f", "raw", "-O", "luks",
		"--object", "secret,id=sec0,data="+pass,
		"-o", strings.Join(opts, ","), src, out)
	return out
}

// QemuLUKSDecrypt returns the plaintext of a raw LUKS1 image as qemu-img
// sees it (qemu-img convert -f luks -O raw).
func QemuLUKSDecrypt(t testing.TB, path, pass string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "qemu-decrypted.raw")
	QemuImg(t, "convert", "--object", "secret,id=sec0,data="+pass, "--image-opts",
		"driver=luks,key-secret=sec0,file.filename="+path, "-O", "raw", out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// CryptsetupFormat creates a size-byte file at path and runs
// `cryptsetup luksFormat --batch-mode --key-file <pass> args... path`.
func CryptsetupFormat(t testing.TB, path string, size int64, pass string, args ...string) {
	t.Helper()
	Need(t, "cryptsetup")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	pf := PassFile(t, pass)
	a := append([]string{"luksFormat", "--batch-mode", "--key-file", pf}, args...)
	Run(t, "cryptsetup", append(a, path)...)
}

// CryptsetupAddKey adds newPass to a free keyslot (args e.g. select the KDF).
func CryptsetupAddKey(t testing.TB, path, pass, newPass string, args ...string) {
	t.Helper()
	Need(t, "cryptsetup")
	a := append([]string{"luksAddKey", "--batch-mode", "--key-file", PassFile(t, pass)}, args...)
	Run(t, "cryptsetup", append(a, path, PassFile(t, newPass))...)
}

// CryptsetupVolumeKey returns the volume key and the payload offset in
// bytes of a LUKS image as cryptsetup reports them (luksDump --dump-master-key).
func CryptsetupVolumeKey(t testing.TB, path, pass string) (key []byte, payloadOffset int64) {
	t.Helper()
	Need(t, "cryptsetup")
	out := Run(t, "cryptsetup", "luksDump", "--dump-master-key", "--batch-mode", "--key-file", PassFile(t, pass), path)
	var hexKey strings.Builder
	inKey := false
	payloadOffset = -1
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, "Payload offset:"):
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimPrefix(line, "Payload offset:")), 10, 64)
			if err != nil {
				t.Fatalf("luksDump: %q: %v", line, err)
			}
			payloadOffset = n * 512
		case strings.HasPrefix(line, "MK dump:"):
			inKey = true
			hexKey.WriteString(strings.TrimPrefix(line, "MK dump:"))
		case inKey && strings.HasPrefix(line, "\t"):
			hexKey.WriteString(line)
		default:
			inKey = false
		}
	}
	key, err := hex.DecodeString(strings.Join(strings.Fields(hexKey.String()), ""))
	if err != nil || len(key) == 0 || payloadOffset < 0 {
		t.Fatalf("cannot parse luksDump output (%v):\n%s", err, out)
	}
	return key, payloadOffset
}

// PassFile writes pass to a temporary file (for cryptsetup --key-file)
// and returns its path.
func PassFile(t testing.TB, pass string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "pass")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(pass); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// Python is the interpreter that has python3-cryptography on these machines
// (the python3 on PATH may be a pyenv one without it).
const Python = "/usr/bin/python3"

// encryptPy encrypts stdin sector by sector with python3-cryptography and
// writes the ciphertext to stdout: an encryptor independent of luksio.
const encryptPy = `
import sys, struct, hashlib
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
key = bytes.fromhex(sys.argv[1]); spec = sys.argv[2]
ss = int(sys.argv[3]); first = int(sys.argv[4])
data = sys.stdin.buffer.read()
assert len(data) % ss == 0, "plaintext is not whole sectors"
alg, mode, ivgen = (spec.split("-", 2) + [""])[:3]
assert alg == "aes", alg
out = bytearray()
for i in range(len(data) // ss):
    sector = first + i * (ss // 512)
    if mode == "ecb":
        iv = None
    elif ivgen == "plain64":
        iv = struct.pack("<Q", sector & (2**64 - 1)) + bytes(8)
    elif ivgen == "plain":
        iv = struct.pack("<I", sector & 0xffffffff) + bytes(12)
    elif ivgen.startswith("essiv:"):
        salt = hashlib.new(ivgen[6:], key).digest()
        e = Cipher(algorithms.AES(salt), modes.ECB()).encryptor()
        iv = e.update(struct.pack("<Q", sector) + bytes(8)) + e.finalize()
    else:
        raise SystemExit("unknown ivgen " + ivgen)
    m = {"xts": modes.XTS, "cbc": modes.CBC, "ecb": lambda iv: modes.ECB()}[mode](iv)
    enc = Cipher(algorithms.AES(key), m).encryptor()
    out += enc.update(data[i*ss:(i+1)*ss]) + enc.finalize()
sys.stdout.buffer.write(out)
`

// PyEncrypt encrypts plain (whole sectors) with python3-cryptography using
// a dm-crypt spec ("aes-xts-plain64", "aes-cbc-essiv:sha256",
// "aes-cbc-plain64", "aes-xts-plain", "aes-ecb"), sectorSize and the IV sector number
// of the first sector (IVs count 512-byte units).
func PyEncrypt(t testing.TB, key []byte, spec string, sectorSize int, firstSector uint64, plain []byte) []byte {
	t.Helper()
	Need(t, Python)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(Python, "-c", encryptPy, hex.EncodeToString(key), spec, strconv.Itoa(sectorSize), strconv.FormatUint(firstSector, 10))
	cmd.Stdin = bytes.NewReader(plain)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("python encryptor: %v: %s", err, stderr.String())
	}
	if stdout.Len() != len(plain) {
		t.Fatalf("python encryptor wrote %d bytes for %d", stdout.Len(), len(plain))
	}
	return stdout.Bytes()
}

// FillPayload encrypts plain with PyEncrypt and writes it at payloadOffset
// of the image at path, the way dm-crypt would have written it.
func FillPayload(t testing.TB, path string, payloadOffset int64, key []byte, spec string, sectorSize int, ivTweak uint64, plain []byte) {
	t.Helper()
	ct := PyEncrypt(t, key, spec, sectorSize, ivTweak, plain)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(ct, payloadOffset); err != nil {
		t.Fatal(fmt.Errorf("fill payload: %w", err))
	}
}

// editLUKS2Py writes edited copies of a LUKS2 image: for each (statement,
// output path) pair it applies the python statement to the JSON metadata
// dict j of both header copies and recomputes each copy's checksum with
// hashlib (independently of the code under test). The statement also sees
// secondary (which copy it edits) and meta["seqid"] (writable).
const editLUKS2Py = `
import sys, json, hashlib, struct
src = open(sys.argv[1], "rb").read()
hdr = struct.unpack(">Q", src[8:16])[0]
for code, out in zip(sys.argv[2::2], sys.argv[3::2]):
    b = bytearray(src)
    for off in (0, hdr):
        area = bytes(b[off+4096:off+hdr])
        j = json.loads(area.split(b"\0", 1)[0])
        meta = {"seqid": struct.unpack(">Q", b[off+16:off+24])[0]}
        exec(code, {"j": j, "secondary": off != 0, "meta": meta})
        b[off+16:off+24] = struct.pack(">Q", meta["seqid"])
        t = json.dumps(j).encode()
        assert len(t) < hdr - 4096
        b[off+4096:off+hdr] = t + bytes(hdr - 4096 - len(t))
        alg = bytes(b[off+72:off+104]).split(b"\0")[0].decode()
        b[off+448:off+512] = bytes(64)
        d = hashlib.new(alg, bytes(b[off:off+hdr])).digest()
        b[off+448:off+448+len(d)] = d
    open(out, "wb").write(b)
`

// EditLUKS2JSON applies a python statement to the JSON metadata dict j of
// both header copies of the LUKS2 image at path, in place, and fixes their
// checksums, e.g. `j["segments"]["0"]["iv_tweak"] = "7"`. The statement
// also sees secondary (true while it edits the secondary copy) and may set
// meta["seqid"], e.g. `if secondary: meta["seqid"] += 1`.
func EditLUKS2JSON(t testing.TB, path, statement string) {
	t.Helper()
	EditLUKS2JSONCopies(t, path, map[string]string{path: statement})
}

// EditLUKS2JSONCopies writes edited copies of the LUKS2 image src: edits
// maps each output path to a python statement as for EditLUKS2JSON. One
// python process makes all copies.
func EditLUKS2JSONCopies(t testing.TB, src string, edits map[string]string) {
	t.Helper()
	Need(t, Python)
	args := []string{"-c", editLUKS2Py, src}
	for out, stmt := range edits {
		args = append(args, stmt, out)
	}
	Run(t, Python, args...)
}
