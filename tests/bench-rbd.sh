#!/usr/bin/env bash
# bench-rbd.sh (part of make bench; BENCH_SKIP_RBD=1 skips it): images in Glance's
# rbd store on a single-node Ceph (memstore) started here, with the loopback cloud:
#  1. a whole raw LUKS image (BENCH_RBD_SIZE, default 1G) to a plaintext file:
#     `imgfs cat ID` (direct from RADOS) vs `openstack image save` + `qemu-img convert`
#     vs `rbd export` + `qemu-img convert`, same run;
#  2. 100 random 4 KiB reads through `imgfs mount`: direct (mode rbd) vs --no-direct
#     (Glance refuses Range for the rbd store: sequential mode);
#  3. the first MiB of a 1 TiB-virtual sparse qcow2+LUKS in the rbd store;
#  4. peak RSS of the whole-image cat against --cache-size + 64 MiB.
# Prints Markdown. Needs the packages of tests/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${BENCH_RBD_SIZE:-1G}
IMGFS=${IMGFS:-$PWD/bin/imgfs}
[ -x "$IMGFS" ] || go build -o bin/imgfs ./cmd/imgfs
base=${BENCH_DIR:-}
if [ -z "$base" ]; then
  if [ -d /dev/shm ] && [ "$(df -k --output=avail /dev/shm | tail -1)" -gt 6000000 ]; then base=/dev/shm; else base=${TMPDIR:-/tmp}; fi
fi
D=$(mktemp -d "$base/imgfs-bench-rbd.XXXXXX")
M=$(mktemp -d "${TMPDIR:-/tmp}/imgfs-bench-rbd-mnt.XXXXXX")
cleanup() {
  fusermount3 -u -z "$M" 2>/dev/null || true; rmdir "$M" 2>/dev/null || true
  tests/cloud/cloud.sh stop "$D/cloud" >/dev/null 2>&1 || true
  tests/cloud/ceph.sh stop "$D/ceph" >/dev/null 2>&1 || true
  rm -rf "$D"
}
trap cleanup EXIT
PASS=benchpass
printf '%s\n' "$PASS" > "$D/pass"
retry() { local i; for i in $(seq 1 60); do "$@" 2>"$D/err" && return 0; grep -q 'accurate CPU usage' "$D/err" || { cat "$D/err" >&2; return 1; }; done; return 1; }
now() { date +%s.%N; }
secs() { echo "scale=3; ($2 - $1) / 1" | bc -l; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
json() { /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

echo "# imgfs RBD bench — $(date -u +%Y-%m-%dT%H:%MZ) — $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
cbase=""; gbase=""
for _ in $(seq 1 50); do
  b=$(( 30000 + (RANDOM % 95) * 105 ))
  if port_free $b && port_free $((b + 1)) && port_free $((b + 5)); then cbase=$b; break; fi
done
for _ in $(seq 1 50); do
  b=$(( 20000 + (RANDOM % 3333) * 3 ))
  if port_free $b && port_free $((b + 1)) && port_free $((b + 2)); then gbase=$b; break; fi
done
[ -n "$cbase" ] && [ -n "$gbase" ] || { echo "bench-rbd: no free ports" >&2; exit 1; }
t0=$(now)
CEPHL_STORE_SIZE=6G CEPHL_MON_PORT=$cbase CEPHL_MON_V2_PORT=$((cbase + 1)) CEPHL_BIND_PORTS=$((cbase + 5))-$((cbase + 104)) \
  tests/cloud/ceph.sh start "$D/ceph" > "$D/ceph.env" 2> "$D/ceph.log" || { tail -20 "$D/ceph.log" >&2; exit 1; }
# shellcheck disable=SC1091
. "$D/ceph.env"
unset CEPHL_KEY CEPHL_RO_KEY
OSL_GLANCE_CEPH=1 OSL_KEYSTONE_PORT=$gbase OSL_GLANCE_PORT=$((gbase + 1)) OSL_BARBICAN_PORT=$((gbase + 2)) \
  tests/cloud/cloud.sh start "$D/cloud" > "$D/cloud.env" 2> "$D/cloud.log" || { tail -20 "$D/cloud.log" >&2; exit 1; }
# shellcheck disable=SC1091
. "$D/cloud.env"
export OS_CLOUD=loopback-demo OS_CLIENT_CONFIG_FILE=$D/cloud/clouds.yaml
echo "Ceph (memstore) and the cloud up in $(secs "$t0" "$(now)") s"
TOKEN=$(curl -s -D - -o /dev/null -X POST "$OS_AUTH_URL/auth/tokens" -H 'Content-Type: application/json' \
  -d '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"demo","domain":{"id":"default"},"password":"'"$OS_PASSWORD"'"}}},"scope":{"project":{"name":"demo","domain":{"id":"default"}}}}}' \
  | awk -F': ' 'tolower($1)=="x-subject-token"{print $2}' | tr -d '\r')
upload() { # upload NAME DISK_FORMAT FILE -> id (rbd store)
  local id
  id=$(curl -s -X POST "$OSL_GLANCE_URL/v2/images" -H "X-Auth-Token: $TOKEN" -H 'Content-Type: application/json' \
    -d '{"name":"'"$1"'","disk_format":"'"$2"'","container_format":"bare"}' | json '["id"]')
  curl -sf -X PUT "$OSL_GLANCE_URL/v2/images/$id/file" -H "X-Auth-Token: $TOKEN" -H 'X-Image-Meta-Store: ceph' \
    -H 'Content-Type: application/octet-stream' -T "$3" >&2
  echo "$id"
}

head -c "$SIZE" /dev/urandom > "$D/plain.raw"
BYTES=$(stat -c %s "$D/plain.raw")
retry qemu-img convert -f raw -O luks --object secret,id=s,data=$PASS \
  -o key-secret=s,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,iter-time=10 "$D/plain.raw" "$D/luks1.img"
ID=$(upload bench-luks luks "$D/luks1.img")
rm -f "$D/luks1.img"
echo "raw LUKS image $ID: $BYTES bytes plaintext, in the rbd store"
"$IMGFS" info "$ID" | grep -E '^  (mode|direct):'

# 1. whole image to a plaintext file
QL="driver=luks,key-secret=s,file.filename"
declare -A T
t=$(now); /usr/bin/time -f '%M' -o "$D/rss" "$IMGFS" cat --passphrase-file "$D/pass" -o "$D/out.imgfs" "$ID"; T[imgfs]=$(secs "$t" "$(now)")
RSS=$(cat "$D/rss")
cmp -s "$D/out.imgfs" "$D/plain.raw" && same=yes || same=NO
rm -f "$D/out.imgfs"
t=$(now)
openstack image save --file "$D/dl.luks" "$ID"
retry qemu-img convert --object secret,id=s,data=$PASS --image-opts "$QL=$D/dl.luks" -O raw "$D/out.glance"
T[glance]=$(secs "$t" "$(now)")
rm -f "$D/dl.luks" "$D/out.glance"
t=$(now)
rbd --id "$CEPHL_USER" export --no-progress "$CEPHL_POOL/$ID@snap" "$D/ex.luks"
retry qemu-img convert --object secret,id=s,data=$PASS --image-opts "$QL=$D/ex.luks" -O raw "$D/out.rbd"
T[rbdx]=$(secs "$t" "$(now)")
rm -f "$D/ex.luks" "$D/out.rbd"

# 2. 100 random 4 KiB reads through the mount, direct vs --no-direct (sequential), timed from
#    the mount: the sequential mode streams the whole image into a spool file first
python3 -c "import random; r=random.Random(5); print(' '.join(str(r.randrange($BYTES//4096)) for _ in range(100)))" > "$D/offs"
readmount() { # readmount ARGS... -> seconds from mount to the 100th read (one process: no fork per read)
  local t0; t0=$(now)
  "$IMGFS" mount -d --passphrase-file "$D/pass" "$@" "$ID" "$M" 2>/dev/null
  /usr/bin/python3 -I -c '
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
offs = [int(x) * 4096 for x in open(sys.argv[2]).read().split()]
for o in offs:
    assert len(os.pread(fd, 4096, o)) == 4096
' "$M/disk" "$D/offs"
  secs "$t0" "$(now)"
  grep -o '"bytes_fetched": [0-9]*' "$M/stats" | awk '{print $2}' > "$D/fetched"
  "$IMGFS" umount "$M"
}
T[rnd_rbd]=$(readmount); F_RBD=$(cat "$D/fetched")
T[rnd_seq]=$(readmount --no-direct); F_SEQ=$(cat "$D/fetched")

# 3. first MiB of a 1 TiB sparse qcow2+LUKS in the rbd store
retry qemu-img create -q -f qcow2 --object secret,id=s,data=$PASS \
  -o encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10 "$D/sparse1t.img" 1T
retry qemu-io --object secret,id=s,data=$PASS --image-opts "driver=qcow2,encrypt.key-secret=s,file.filename=$D/sparse1t.img" \
  -c 'write -P 0x5a 0 4M' -c 'write -P 0x33 100G 1M' > /dev/null
SID=$(upload bench-sparse1t qcow2 "$D/sparse1t.img")
STORED=$(stat -c %s "$D/sparse1t.img")
t=$(now); "$IMGFS" info "$SID" > /dev/null; T[open_s]=$(secs "$t" "$(now)")
t=$(now); "$IMGFS" cat --passphrase-file "$D/pass" --length 1M --stats "$SID" 2> "$D/stats1m" > /dev/null; T[first_s]=$(secs "$t" "$(now)")
"$IMGFS" cat --passphrase-file "$D/pass" --length 1M "$SID" | cmp -s - <(head -c 1M /dev/zero | tr '\0' 'Z') && ok1=yes || ok1=NO

r() { echo "scale=1; $1 / $2" | bc -l; }
printf '\n| run | seconds | MB/s | ratio |\n|---|---|---|---|\n'
printf '| imgfs cat ID -o file (direct from RBD; bytes equal: %s) | %s | %s | |\n' "$same" "${T[imgfs]}" "$(echo "scale=0; $BYTES/1048576/${T[imgfs]}" | bc -l)"
printf '| openstack image save + qemu-img convert | %s | %s | imgfs %sx faster |\n' "${T[glance]}" "$(echo "scale=0; $BYTES/1048576/${T[glance]}" | bc -l)" "$(r "${T[glance]}" "${T[imgfs]}")"
printf '| rbd export + qemu-img convert | %s | %s | imgfs %sx faster |\n' "${T[rbdx]}" "$(echo "scale=0; $BYTES/1048576/${T[rbdx]}" | bc -l)" "$(r "${T[rbdx]}" "${T[imgfs]}")"
printf '| mount + 100 random 4 KiB reads, direct (fetched %s bytes) | %s | | |\n' "$F_RBD" "${T[rnd_rbd]}"
printf '| same via --no-direct (Glance, sequential; fetched %s bytes) | %s | | direct %sx faster |\n' "$F_SEQ" "${T[rnd_seq]}" "$(r "${T[rnd_seq]}" "${T[rnd_rbd]}")"
printf '| imgfs info of the 1 TiB sparse qcow2+LUKS (%s bytes stored): connect + open, no unlock | %s | | |\n' "$STORED" "${T[open_s]}"
printf '| imgfs cat --length 1M of it (incl. connect, open, unlock; bytes right: %s) | %s | | |\n' "$ok1" "${T[first_s]}"
echo
echo "first MiB: $(sed 's/^imgfs: //' "$D/stats1m" | tr '\n' ' ')"
echo "peak RSS of the whole-image cat: $((RSS / 1024)) MiB (cache 256 MiB + 64 MiB = 320 MiB bound)"
