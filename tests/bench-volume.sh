#!/usr/bin/env bash
# tests/bench-volume.sh (run by make bench / tests/bench.sh; needs root for losetup):
# a qcow2+LUKS image becomes raw LUKS on a block device, the Cinder job of issue #16.
#   Cinder's way: qemu-img convert -O luks to a temporary file, then dd onto the device
#                 (bs=1M oflag=direct conv=fsync, as cinder's copy_volume does it)
#   imgfs:        imgfs export --to luks -o /dev/loopN (streaming, fsync before exit)
# The device is a loop device backed by a file in BENCH_DIR (default /dev/shm), the
# temporary file of Cinder's way lives there too. Knobs: BENCH_SIZE (default 1G),
# BENCH_ROUNDS (default 3; the median is reported), BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${BENCH_SIZE:-1G}
ROUNDS=${BENCH_ROUNDS:-3}
IMGFS=$PWD/bin/imgfs
[ -x "$IMGFS" ] || go build -o bin/imgfs ./cmd/imgfs
command -v losetup > /dev/null || { echo "bench-volume: SKIP: no losetup" >&2; exit 0; }
base=${BENCH_DIR:-/dev/shm}
D=$(mktemp -d "$base/imgfs-bench-vol.XXXXXX")
DEV=""
cleanup() { [ -n "$DEV" ] && losetup -d "$DEV"; rm -rf "$D"; }
trap cleanup EXIT
PASS=benchpass
printf '%s\n' "$PASS" > "$D/pass"

retry() { local i; for i in $(seq 1 60); do "$@" 2>"$D/err" && return 0; grep -q 'accurate CPU usage' "$D/err" || { cat "$D/err" >&2; return 1; }; done; return 1; }
# timed FILE CMD...: appends "seconds peakRSS-KiB" of CMD to FILE.
timed() { local f=$1; shift; /usr/bin/time -f '%e %M' -a -o "$f" "$@" > /dev/null; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "## volume bench — $(date -u +%Y-%m-%dT%H:%MZ) — $(nproc) cores — load $(cut -d' ' -f1 /proc/loadavg)"
head -c "$SIZE" /dev/urandom > "$D/plain.raw"
BYTES=$(stat -c %s "$D/plain.raw")
retry qemu-img convert -f raw -O qcow2 --object secret,id=s,data=$PASS \
  -o cluster_size=65536,encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10 "$D/plain.raw" "$D/src.qcow2"
rm -f "$D/plain.raw"
truncate -s $((BYTES + 16 * 1048576)) "$D/backing"
DEV=$(losetup -f --show "$D/backing")
echo "source: ${SIZE} qcow2+LUKS (random data, iter-time 10 ms) in $base; target: $DEV on $D/backing"

for r in $(seq 1 "$ROUNDS"); do
  # Cinder's way: convert to a temporary raw LUKS file, then dd it onto the device.
  rm -f "$D/tmp.luks"
  timed "$D/conv" qemu-img convert --object secret,id=s,data=$PASS --image-opts \
    "driver=qcow2,encrypt.key-secret=s,file.filename=$D/src.qcow2" -O luks \
    -o key-secret=s,iter-time=10 "$D/tmp.luks"
  timed "$D/dd" dd if="$D/tmp.luks" of="$DEV" bs=1M oflag=direct conv=fsync status=none
  rm -f "$D/tmp.luks"
  # imgfs: one pass, straight onto the device.
  timed "$D/imgfs" "$IMGFS" export --to luks --passphrase-file "$D/pass" -o "$DEV" "$D/src.qcow2"
  timed "$D/imgfsv" "$IMGFS" export --to luks --passphrase-file "$D/pass" --verify -o "$DEV" "$D/src.qcow2"
done
"$IMGFS" cat --passphrase-file "$D/pass" --length 1M "$DEV" | cmp -s - <(head -c 1M /dev/zero) && { echo "bench-volume: the device does not hold the image" >&2; exit 1; }

conv=$(cut -d' ' -f1 "$D/conv" | median); dd=$(cut -d' ' -f1 "$D/dd" | median)
cinder=$(paste -d+ <(cut -d' ' -f1 "$D/conv") <(cut -d' ' -f1 "$D/dd") | bc | median)
im=$(cut -d' ' -f1 "$D/imgfs" | median); imv=$(cut -d' ' -f1 "$D/imgfsv" | median)
rss() { awk '{print $2}' "$1" | sort -n | tail -1; }
mb() { echo "scale=0; $BYTES / 1048576 / $1" | bc -l; }
printf '\n| run (median of %d) | seconds | MB/s | peak RSS MiB | speed-up vs Cinder |\n|---|---|---|---|---|\n' "$ROUNDS"
printf '| qemu-img convert qcow2+luks → luks temp file | %s | %s | %s | |\n' "$conv" "$(mb "$conv")" $(( $(rss "$D/conv") / 1024 ))
printf '| dd bs=1M oflag=direct conv=fsync onto the device | %s | %s | %s | |\n' "$dd" "$(mb "$dd")" $(( $(rss "$D/dd") / 1024 ))
printf '| **Cinder'"'"'s way: both (base)** | %s | %s | %s | |\n' "$cinder" "$(mb "$cinder")" $(( $(rss "$D/conv") / 1024 ))
printf '| imgfs export --to luks -o %s | %s | %s | %s | **%s** |\n' "$DEV" "$im" "$(mb "$im")" $(( $(rss "$D/imgfs") / 1024 )) "$(echo "scale=2; $cinder / $im" | bc -l)"
printf '| imgfs export --to luks --verify -o %s | %s | %s | %s | %s |\n' "$DEV" "$imv" "$(mb "$imv")" $(( $(rss "$D/imgfsv") / 1024 )) "$(echo "scale=2; $cinder / $imv" | bc -l)"
echo "peak RSS is the largest of the rounds; Cinder's way also needs ${SIZE} of temporary space."
