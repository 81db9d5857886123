#!/usr/bin/env bash
# make bench: throughput of imgfs against the tools operators use today, measured
# side by side in one run on generated images. Prints a table of ratios.
# Knobs: BENCH_SIZE (default 1G), BENCH_DIR (default a temp dir on /dev/shm when it fits).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${BENCH_SIZE:-1G}
IMGFS=$PWD/bin/imgfs
[ -x "$IMGFS" ] || go build -o bin/imgfs ./cmd/imgfs
base=${BENCH_DIR:-}
if [ -z "$base" ]; then
  if [ -d /dev/shm ] && [ "$(df -k --output=avail /dev/shm | tail -1)" -gt 4500000 ]; then base=/dev/shm; else base=${TMPDIR:-/tmp}; fi
fi
D=$(mktemp -d "$base/imgfs-bench.XXXXXX")
trap 'rm -rf "$D"' EXIT
PASS=benchpass
printf '%s\n' "$PASS" > "$D/pass"

retry() { local i; for i in $(seq 1 60); do "$@" 2>"$D/err" && return 0; grep -q 'accurate CPU usage' "$D/err" || { cat "$D/err" >&2; return 1; }; done; return 1; }
# secs CMD...: wall seconds of CMD (stdout to /dev/null unless redirected inside)
secs() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
mbps() { echo "scale=0; $1 / 1048576 / $2" | bc -l; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }

echo "# imgfs bench — $(date -u +%Y-%m-%d) — $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') — $(nproc) cores"
echo "image size $SIZE in $D"
head -c "$SIZE" /dev/urandom > "$D/plain.raw" 2>/dev/null || dd if=/dev/urandom of="$D/plain.raw" bs=1M count=$(( $(numfmt --from=iec "$SIZE") / 1048576 )) status=none
BYTES=$(stat -c %s "$D/plain.raw")

retry qemu-img convert -f raw -O luks --object secret,id=s,data=$PASS \
  -o key-secret=s,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,iter-time=10 "$D/plain.raw" "$D/luks1.img"
rm -f "$D/plain.raw"   # keep tmpfs use down; the image is what is read

printf '\n| run | seconds | MB/s | ratio to qemu-img |\n|---|---|---|---|\n'
# Both write the plaintext to a file in the same directory, then it is deleted.
t_qemu=$(secs qemu-img convert --object secret,id=s,data=$PASS --image-opts \
  "driver=luks,key-secret=s,file.filename=$D/luks1.img" -O raw "$D/out.raw"); rm -f "$D/out.raw"
t_cat=$(secs "$IMGFS" cat --passphrase-file "$D/pass" -o "$D/out.raw" "$D/luks1.img"); rm -f "$D/out.raw"
t_null=$(secs bash -c "'$IMGFS' cat --passphrase-file '$D/pass' '$D/luks1.img' > /dev/null")
printf '| qemu-img convert -O raw (luks1 aes-256-xts-plain64) | %.2f | %s | 1.00 |\n' "$t_qemu" "$(mbps $BYTES $t_qemu)"
printf '| imgfs cat -o FILE | %.2f | %s | %s |\n' "$t_cat" "$(mbps $BYTES $t_cat)" "$(ratio $t_qemu $t_cat)"
printf '| imgfs cat > /dev/null | %.2f | %s | %s |\n' "$t_null" "$(mbps $BYTES $t_null)" "$(ratio $t_qemu $t_null)"
if command -v nbdkit >/dev/null && command -v nbdcopy >/dev/null; then
  t_nbd=$(secs nbdkit -U - file "$D/luks1.img" --filter=luks passphrase=file:"$D/pass" --run 'nbdcopy "$uri" null:' 2>/dev/null || echo 0)
  if [ "$t_nbd" != 0 ]; then
    printf '| nbdkit file --filter=luks + nbdcopy null: | %.2f | %s | %s |\n' "$t_nbd" "$(mbps $BYTES $t_nbd)" "$(ratio $t_qemu $t_nbd)"
  fi
fi
echo
echo "ratio = qemu-img seconds / run seconds (2.00 = twice as fast as qemu-img)"
echo "Go micro-benchmarks: go test -run '^\$' -bench . ./luksio/"
