#!/usr/bin/env bash
# demo.sh (make demo): a partitioned disk, encrypted as qcow2+LUKS with qemu-img,
# its key in Barbican, uploaded to Glance with the os_encrypt_* properties, then
# read back lazily by imgfs: `imgfs info <id>`, a FUSE mount (or cat) showing the
# partition table, and the bytes fetched against the image size. Starts and stops
# its own local cloud (real Keystone, Glance, Barbican on 127.0.0.1).
# DEMO_STORE=rbd (make demo-ceph): also a single-node Ceph; the images go to
# Glance's rbd store, which refuses Range (shown), and imgfs reads them straight
# from RADOS (mode rbd), including 4 KiB 90 GiB into a sparse 100 GiB image.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
IMGFS=${IMGFS:-$ROOT/bin/imgfs}
PY=/usr/bin/python3
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
json() { $PY -c "import json,sys; print(json.load(sys.stdin)$1)"; }

[ -x "$IMGFS" ] || { say "building imgfs"; go build -o "$IMGFS" ./cmd/imgfs; }
for tool in qemu-img sfdisk curl; do
  command -v $tool >/dev/null || { echo "demo: $tool is missing: run tests/install-deps.sh" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/imgfs-demo.XXXXXX")
CLOUD=$WORK/cloud
MNT=$WORK/mnt
mounted=""
cleanup() {
  rc=$?
  if [ -n "$mounted" ]; then "$IMGFS" umount "$MNT" 2>/dev/null || fusermount3 -u "$MNT" 2>/dev/null || true; fi
  tests/cloud/cloud.sh stop "$CLOUD" >/dev/null 2>&1 || true
  [ -d "$WORK/ceph" ] && tests/cloud/ceph.sh stop "$WORK/ceph" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
base=""
for i in $(seq 1 50); do
  b=$(( 20000 + (RANDOM % 3333) * 3 ))
  if port_free $b && port_free $((b + 1)) && port_free $((b + 2)); then base=$b; break; fi
done
[ -n "$base" ] || { echo "demo: no free ports" >&2; exit 1; }

STORE=${DEMO_STORE:-file}
case "$STORE" in file|rbd) ;; *) echo "demo: DEMO_STORE must be file or rbd" >&2; exit 2;; esac
STORE_HDR=()
if [ "$STORE" = rbd ]; then
  cbase=""
  for i in $(seq 1 50); do
    b=$(( 30000 + (RANDOM % 95) * 105 ))
    if port_free $b && port_free $((b + 1)) && port_free $((b + 5)); then cbase=$b; break; fi
  done
  [ -n "$cbase" ] || { echo "demo: no free ports for Ceph" >&2; exit 1; }
  say "starting a single-node Ceph (one mon, one memstore OSD, cephx) on 127.0.0.1:$cbase"
  CEPHL_MON_PORT=$cbase CEPHL_MON_V2_PORT=$((cbase + 1)) CEPHL_BIND_PORTS=$((cbase + 5))-$((cbase + 104)) \
    tests/cloud/ceph.sh start "$WORK/ceph" > "$WORK/ceph.env"
  # shellcheck disable=SC1091
  . "$WORK/ceph.env"
  unset CEPHL_KEY CEPHL_RO_KEY
  export OSL_GLANCE_CEPH=1
  STORE_HDR=(-H 'X-Image-Meta-Store: ceph')
fi

say "starting a local OpenStack cloud (Keystone :$base, Glance :$((base + 1)), Barbican :$((base + 2)))"
OSL_KEYSTONE_PORT=$base OSL_GLANCE_PORT=$((base + 1)) OSL_BARBICAN_PORT=$((base + 2)) \
  tests/cloud/cloud.sh start "$CLOUD" > "$WORK/env"
# shellcheck disable=SC1091
. "$WORK/env"
export OS_CLOUD=loopback-demo OS_CLIENT_CONFIG_FILE=$CLOUD/clouds.yaml

say "a 64 MiB disk with a DOS partition table and two partitions"
truncate -s 64M "$WORK/disk.raw"
printf 'label: dos\nstart=2048, size=40960, type=83\nstart=43008, type=83\n' | sfdisk -q "$WORK/disk.raw"
printf 'imgfs demo: hello from partition 1' | dd of="$WORK/disk.raw" bs=512 seek=2048 conv=notrunc status=none
sfdisk -l "$WORK/disk.raw"

say "a 256-bit key in Barbican (type symmetric); its lowercase hex is the LUKS passphrase (OpenStack's rule)"
TOKEN=$(curl -s -D - -o /dev/null -X POST "$OS_AUTH_URL/auth/tokens" -H 'Content-Type: application/json' \
  -d '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"demo","domain":{"id":"default"},"password":"'"$OS_PASSWORD"'"}}},"scope":{"project":{"name":"demo","domain":{"id":"default"}}}}}' \
  | awk -F': ' 'tolower($1)=="x-subject-token"{print $2}' | tr -d '\r')
head -c 32 /dev/urandom > "$WORK/key.bin"
PASS=$(od -An -v -tx1 "$WORK/key.bin" | tr -d ' \n')
SECRET_REF=$(curl -s -X POST "$OSL_BARBICAN_URL/v1/secrets" -H "X-Auth-Token: $TOKEN" -H 'Content-Type: application/json' \
  -d '{"name":"imgfs-demo","secret_type":"symmetric","algorithm":"aes","bit_length":256,"mode":"xts",
       "payload":"'"$(base64 -w0 "$WORK/key.bin")"'","payload_content_type":"application/octet-stream","payload_content_encoding":"base64"}' \
  | json '["secret_ref"]')
SECRET=${SECRET_REF##*/}
rm -f "$WORK/key.bin"
echo "secret $SECRET"

say "qcow2+LUKS with qemu-img"
for i in $(seq 1 40); do  # qemu's PBKDF2 calibration fails intermittently on small VMs
  if err=$(qemu-img convert -q -f raw -O qcow2 --object "secret,id=sec0,data=$PASS" \
      -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 "$WORK/disk.raw" "$WORK/disk.qcow2" 2>&1); then break; fi
  case "$err" in *"accurate CPU usage"*) sleep 0.0$i ;; *) echo "$err" >&2; exit 1 ;; esac
done
unset PASS
qemu-img info "$WORK/disk.qcow2" | sed -n '1,4p'

say "upload to Glance with os_encrypt_format, os_encrypt_key_id, os_encrypt_key_deletion_policy, os_decrypt_size"
ID=$(curl -s -X POST "$OSL_GLANCE_URL/v2/images" -H "X-Auth-Token: $TOKEN" -H 'Content-Type: application/json' \
  -d '{"name":"imgfs-demo-disk","disk_format":"qcow2","container_format":"bare",
       "os_encrypt_format":"luks","os_encrypt_key_id":"'"$SECRET"'",
       "os_encrypt_key_deletion_policy":"on_image_deletion","os_decrypt_size":"67108864"}' | json '["id"]')
curl -sf -X PUT "$OSL_GLANCE_URL/v2/images/$ID/file" -H "X-Auth-Token: $TOKEN" "${STORE_HDR[@]}" \
  -H 'Content-Type: application/octet-stream' --data-binary @"$WORK/disk.qcow2"
if [ "$STORE" = rbd ]; then
  say "Glance's rbd store refuses Range: the direct path is needed"
  echo "direct_url: $(curl -s "$OSL_GLANCE_URL/v2/images/$ID" -H "X-Auth-Token: $TOKEN" | json '["direct_url"]')"
  echo "GET .../file with Range: bytes=0-1023 -> HTTP $(curl -s -o /dev/null -w '%{http_code}' -H 'Range: bytes=0-1023' "$OSL_GLANCE_URL/v2/images/$ID/file" -H "X-Auth-Token: $TOKEN")"
fi
SIZE=$(stat -c %s "$WORK/disk.qcow2")
echo "image $ID ($SIZE bytes stored, 64 MiB virtual)"

say "imgfs info $ID   (no key needed)"
"$IMGFS" info "$ID"

if "$IMGFS" mount --help >/dev/null 2>&1 && [ -e /dev/fuse ]; then
  say "imgfs mount -d $ID $MNT   (key from Barbican, decrypted in user space)"
  mkdir -p "$MNT"
  "$IMGFS" mount -d "$ID" "$MNT"
  mounted=1
  ls -l "$MNT"
  say "the partition table of $MNT/disk"
  sfdisk -d "$MNT/disk"
  say "partition 1 starts with"
  dd if="$MNT/disk" bs=512 skip=2048 count=1 status=none | tr -d '\0'; echo
  "$IMGFS" umount "$MNT"
  mounted=""
  echo "unmounted"
else
  say "imgfs cat --length 1M $ID   (no mount command or /dev/fuse here)"
  "$IMGFS" cat --length 1M -o "$WORK/head.bin" "$ID"
  sfdisk -d "$WORK/head.bin"
  dd if="$WORK/head.bin" bs=512 skip=2048 count=1 status=none | tr -d '\0'; echo
fi

say "bytes fetched to read the first MiB vs the image size"
"$IMGFS" cat --stats --length 1M "$ID" 2>&1 >/dev/null | sed 's/^imgfs: //'
echo "stored image: $SIZE bytes"

if [ "$STORE" = rbd ]; then
  say "a sparse 100 GiB qcow2 in the rbd store: 4 KiB read 90 GiB into it"
  qemu-img create -q -f qcow2 "$WORK/big.qcow2" 100G
  qemu-io -f qcow2 -c "write -P 0x42 90G 64k" "$WORK/big.qcow2" >/dev/null
  BIG=$(curl -s -X POST "$OSL_GLANCE_URL/v2/images" -H "X-Auth-Token: $TOKEN" -H 'Content-Type: application/json' \
    -d '{"name":"imgfs-demo-big","disk_format":"qcow2","container_format":"bare"}' | json '["id"]')
  curl -sf -X PUT "$OSL_GLANCE_URL/v2/images/$BIG/file" -H "X-Auth-Token: $TOKEN" "${STORE_HDR[@]}" \
    -H 'Content-Type: application/octet-stream' --data-binary @"$WORK/big.qcow2"
  echo "image $BIG ($(stat -c %s "$WORK/big.qcow2") bytes stored, 100 GiB virtual)"
  t0=$(date +%s.%N)
  "$IMGFS" cat --stats --offset 90G --length 4096 "$BIG" 2>"$WORK/stats" | od -An -tx1 | head -1
  t1=$(date +%s.%N)
  sed 's/^imgfs: //' "$WORK/stats"
  printf 'took %.2f s\n' "$(echo "$t1 - $t0" | bc)"
  say "the same read forced through Glance's API (--no-direct): Glance refuses Range, so sequential mode"
  "$IMGFS" cat --no-direct --stats --offset 90G --length 4096 "$BIG" 2>&1 >/dev/null | sed 's/^imgfs: //'
  echo "(cheap here only because this qcow2 stores just $(stat -c %s "$WORK/big.qcow2") bytes: sequential mode streams the"
  echo " stored image up to the offset read, so for a full disk every byte before it)"
  "$IMGFS" info --no-direct "$BIG" | grep -E '^  (mode|direct):'
fi

say "done: stopping the cloud"
