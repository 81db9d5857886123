#!/usr/bin/env bash
# Sequential read of the same image through `imgfs mount` (dd bs=1M of
# MOUNT/disk) versus `imgfs cat`, for raw LUKS1 and qcow2+LUKS images made by
# qemu-img. Runs alternate (cat, mount, cat, mount...) so that a busy machine
# slows both alike; the table shows the median of BENCH_ROUNDS runs.
# "mount cold" is a fresh mount (empty page cache); "mount warm" re-reads the
# same mount, served from the page cache that FOPEN_KEEP_CACHE keeps.
# Knobs: BENCH_SIZE (default 512M), BENCH_ROUNDS (default 5), BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${BENCH_SIZE:-512M}
ROUNDS=${BENCH_ROUNDS:-5}
IMGFS=${IMGFS:-$PWD/bin/imgfs}
[ -x "$IMGFS" ] || go build -o bin/imgfs ./cmd/imgfs
base=${BENCH_DIR:-}
if [ -z "$base" ]; then
  if [ -d /dev/shm ] && [ "$(df -k --output=avail /dev/shm | tail -1)" -gt 3000000 ]; then base=/dev/shm; else base=${TMPDIR:-/tmp}; fi
fi
D=$(mktemp -d "$base/imgfs-bench-mount.XXXXXX")
M=$(mktemp -d "${TMPDIR:-/tmp}/imgfs-bench-mnt.XXXXXX")
cleanup() { fusermount3 -u -z "$M" 2>/dev/null || true; rmdir "$M" 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
PASS=benchpass
printf '%s\n' "$PASS" > "$D/pass"

retry() { for _ in $(seq 1 60); do "$@" 2>"$D/err" && return 0; grep -q 'accurate CPU usage' "$D/err" || { cat "$D/err" >&2; return 1; }; done; return 1; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mbps() { echo "scale=0; $1 / 1048576 / $2" | bc -l; }

echo "# imgfs mount bench — $(date -u +%Y-%m-%dT%H:%MZ) — $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
head -c "$SIZE" /dev/urandom > "$D/plain.raw"
BYTES=$(stat -c %s "$D/plain.raw")
retry qemu-img convert -f raw -O luks --object secret,id=s,data=$PASS -o key-secret=s,iter-time=10 "$D/plain.raw" "$D/luks1.img"
retry qemu-img convert -f raw -O qcow2 --object secret,id=s,data=$PASS \
  -o encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10 "$D/plain.raw" "$D/qcow2luks.img"
mv "$D/plain.raw" "$D/plain.img"
echo "image size $SIZE ($BYTES bytes), $ROUNDS rounds, images in $D"

TCK=$(getconf CLK_TCK)
# cpu CMD...: user+sys CPU seconds of CMD (stdout to /dev/null)
cpu() { /usr/bin/time -f '%U %S' -o "$D/cpu" "$@" > /dev/null; awk '{print $1 + $2}' "$D/cpu"; }
# pidcpu PID: user+sys CPU seconds a running process has used
pidcpu() { awk -v t="$TCK" '{print ($14 + $15) / t}' "/proc/$1/stat"; }

printf '\n| image | imgfs cat MB/s | mount cold dd MB/s | mount warm dd MB/s | cold/cat | cat CPU s | mount CPU s (daemon + dd) |\n'
printf '|---|---|---|---|---|---|---|\n'
# "plain" is the same bytes as an unencrypted raw image: no decryption, so its
# row is the cost of the FUSE path itself (kernel page cache, /dev/fuse round
# trips, dd's copy) against reading the file.
for img in luks1 qcow2luks plain; do
  key=(--passphrase-file "$D/pass")
  [ "$img" = plain ] && key=()
  : > "$D/t_cat"; : > "$D/t_cold"; : > "$D/t_warm"; : > "$D/c_cat"; : > "$D/c_mount"
  for _ in $(seq 1 "$ROUNDS"); do
    s=$(now); cpu "$IMGFS" cat "${key[@]}" "$D/$img.img" >> "$D/c_cat"; e=$(now)
    echo "$e - $s" | bc -l >> "$D/t_cat"
    # The mount's unlock is timed too, as cat's is.
    s=$(now)
    pid=$("$IMGFS" mount -d "${key[@]}" "$D/$img.img" "$M" 2>&1 | sed -n 's/.*daemon pid \([0-9]*\).*/\1/p')
    ddcpu=$(cpu dd if="$M/disk" bs=1M status=none)
    e=$(now)
    echo "$e - $s" | bc -l >> "$D/t_cold"
    echo "$(pidcpu "$pid") + $ddcpu" | bc -l >> "$D/c_mount"
    s=$(now); dd if="$M/disk" of=/dev/null bs=1M status=none; e=$(now)
    echo "$e - $s" | bc -l >> "$D/t_warm"
    "$IMGFS" umount "$M"
  done
  c=$(median < "$D/t_cat"); m=$(median < "$D/t_cold"); w=$(median < "$D/t_warm")
  printf '| %s | %s | %s | %s | %.2f | %.2f | %.2f |\n' "$img" "$(mbps "$BYTES" "$c")" "$(mbps "$BYTES" "$m")" "$(mbps "$BYTES" "$w")" \
    "$(echo "$c / $m" | bc -l)" "$(median < "$D/c_cat")" "$(median < "$D/c_mount")"
done
echo
echo "cold/cat = imgfs cat seconds / mount seconds (1.00 = the mount reads as fast as cat)."
echo "CPU seconds (medians) are steadier than wall time on a shared machine: they show what the FUSE path costs."
