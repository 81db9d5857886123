#!/usr/bin/env bash
# make bench: imgfs against the tools operators use today, measured side by side in
# one run on the same generated images. Prints a Markdown table of times, rates, peak
# RSS and ratios. Knobs: BENCH_SIZE (default 1G), BENCH_DIR (default /dev/shm if it
# fits, so that the disk is not what is measured), BENCH_SKIP_MOUNT=1, BENCH_SKIP_GLANCE=1
# (tests/bench-glance.sh: the loopback Glance, directly and at 5/20 ms RTT;
# BENCH_GLANCE_SIZE, default 512M), BENCH_SKIP_RBD=1 (tests/bench-rbd.sh: Glance's rbd
# store on a local Ceph, direct reads vs the tools).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${BENCH_SIZE:-1G}
IMGFS=$PWD/bin/imgfs
go build -o bin/imgfs ./cmd/imgfs
go build -o bin/fileserver ./tests/fileserver
base=${BENCH_DIR:-}
if [ -z "$base" ]; then
  if [ -d /dev/shm ] && [ "$(df -k --output=avail /dev/shm | tail -1)" -gt 4500000 ]; then base=/dev/shm; else base=${TMPDIR:-/tmp}; fi
fi
D=$(mktemp -d "$base/imgfs-bench.XXXXXX")
SRV=""
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
PASS=benchpass
printf '%s\n' "$PASS" > "$D/pass"

retry() { local i; for i in $(seq 1 60); do "$@" 2>"$D/err" && return 0; grep -q 'accurate CPU usage' "$D/err" || { cat "$D/err" >&2; return 1; }; done; return 1; }
# run NAME CMD...: runs CMD (stdout to /dev/null), records wall seconds and peak RSS KiB.
run() { local name=$1; shift; /usr/bin/time -f '%e %M' -o "$D/time" "$@" > /dev/null; read -r T["$name"] R["$name"] < "$D/time"; }
declare -A T R
row() { # row LABEL NAME BASE-NAME BYTES
  local mb ratio=""
  mb=$(echo "scale=0; $4 / 1048576 / ${T[$2]}" | bc -l 2>/dev/null || echo "-")
  [ -n "$3" ] && ratio=$(echo "scale=2; ${T[$3]} / ${T[$2]}" | bc -l)
  printf '| %s | %s | %s | %s | %s |\n' "$1" "${T[$2]}" "$mb" "$(( ${R[$2]} / 1024 ))" "$ratio"
}

echo "# imgfs bench — $(date -u +%Y-%m-%d) — $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') — $(nproc) cores — load $(cut -d' ' -f1 /proc/loadavg)"
head -c "$SIZE" /dev/urandom > "$D/plain.raw"
BYTES=$(stat -c %s "$D/plain.raw")
echo "images of $SIZE ($BYTES bytes) in $D"
retry qemu-img convert -f raw -O luks --object secret,id=s,data=$PASS \
  -o key-secret=s,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,iter-time=10 "$D/plain.raw" "$D/luks1.img"
retry qemu-img convert -f raw -O qcow2 --object secret,id=s,data=$PASS \
  -o cluster_size=65536,encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10 "$D/plain.raw" "$D/qcow2luks.img"
rm -f "$D/plain.raw"
retry qemu-img create -q -f qcow2 --object secret,id=s,data=$PASS \
  -o encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10 "$D/sparse1t.img" 1T
retry qemu-io --object secret,id=s,data=$PASS --image-opts "driver=qcow2,encrypt.key-secret=s,file.filename=$D/sparse1t.img" \
  -c 'write -P 0x5a 0 4M' -c 'write -P 0x33 100G 1M' > /dev/null
QOPTS_L="driver=luks,key-secret=s,file.filename=$D/luks1.img"
QOPTS_Q="driver=qcow2,encrypt.key-secret=s,file.filename=$D/qcow2luks.img"
QOPTS_S="driver=qcow2,encrypt.key-secret=s,file.filename=$D/sparse1t.img"

# 1. local decrypt: qemu-img convert vs nbdkit vs imgfs cat, same image, output discarded.
run qemu_l qemu-img convert --object secret,id=s,data=$PASS --image-opts "$QOPTS_L" -n \
  --target-image-opts "driver=null-co,size=$BYTES"
run qemu_q qemu-img convert --object secret,id=s,data=$PASS --image-opts "$QOPTS_Q" -n \
  --target-image-opts "driver=null-co,size=$BYTES"
run nbd_l nbdkit -U - file "$D/luks1.img" --filter=luks passphrase=+"$D/pass" --run 'nbdcopy "$uri" null:'
run cat_l "$IMGFS" cat --passphrase-file "$D/pass" "$D/luks1.img"
run cat_q "$IMGFS" cat --passphrase-file "$D/pass" "$D/qcow2luks.img"

# 2. over HTTP on loopback: curl (the network ceiling), nbdkit curl+luks, imgfs cat URL.
"$PWD/bin/fileserver" -dir "$D" > "$D/url" & SRV=$!
for _ in $(seq 1 50); do [ -s "$D/url" ] && break; sleep 0.1; done
URL=$(cat "$D/url")
run curl_l curl -s -o /dev/null "${URL}luks1.img"
run nbdc_l nbdkit -U - curl "${URL}luks1.img" --filter=luks passphrase=+"$D/pass" --run 'nbdcopy "$uri" null:'
run http_l "$IMGFS" cat --passphrase-file "$D/pass" "${URL}luks1.img"

# 5. first MiB of a 1 TiB sparse qcow2+LUKS.
run first_q qemu-io --object secret,id=s,data=$PASS --image-opts "$QOPTS_S" -c 'read 0 1M'
run first_i "$IMGFS" cat --passphrase-file "$D/pass" --length 1M "$D/sparse1t.img"
"$IMGFS" cat --passphrase-file "$D/pass" --length 1M --stats "${URL}sparse1t.img" 2> "$D/stats" > /dev/null
run first_h "$IMGFS" cat --passphrase-file "$D/pass" --length 1M "${URL}sparse1t.img"
run whole_s "$IMGFS" cat --passphrase-file "$D/pass" "$D/sparse1t.img"

printf '\n| run | seconds | MB/s | peak RSS MiB | ratio (base s / run s) |\n|---|---|---|---|---|\n'
row "qemu-img convert luks1 → null-co (base A)" qemu_l "" "$BYTES"
row "nbdkit file --filter=luks + nbdcopy null: (vs A)" nbd_l qemu_l "$BYTES"
row "imgfs cat luks1 > /dev/null (vs A)" cat_l qemu_l "$BYTES"
row "qemu-img convert qcow2+luks → null-co (base B)" qemu_q "" "$BYTES"
row "imgfs cat qcow2+luks > /dev/null (vs B)" cat_q qemu_q "$BYTES"
row "curl -o /dev/null over HTTP (base C)" curl_l "" "$BYTES"
row "nbdkit curl --filter=luks + nbdcopy (vs C)" nbdc_l curl_l "$BYTES"
row "imgfs cat http://…/luks1 (vs C)" http_l curl_l "$BYTES"
row "qemu-io read 0 1M of 1 TiB sparse qcow2+luks (base D)" first_q "" 1048576
row "imgfs cat --length 1M of it, local (vs D)" first_i first_q 1048576
row "imgfs cat --length 1M of it, HTTP (vs D)" first_h first_q 1048576
row "imgfs cat of the whole 1 TiB sparse image > /dev/null" whole_s "" 1099511627776
echo
echo "HTTP first MiB of the 1 TiB image: $(grep -v '^$' "$D/stats" | tr '\n' ' ')"
echo "ratio > 1: faster than the base. Every run includes its own key unlock (iter-time=10 images)."
if [ -z "${BENCH_SKIP_MOUNT:-}" ]; then
  echo; BENCH_SIZE=$SIZE BENCH_ROUNDS=${BENCH_ROUNDS:-3} tests/bench-mount.sh
fi
if [ -z "${BENCH_SKIP_GLANCE:-}" ]; then
  echo; BENCH_ROUNDS=${BENCH_ROUNDS:-3} tests/bench-glance.sh
fi
if [ -z "${BENCH_SKIP_RBD:-}" ]; then
  echo; BENCH_RBD_SIZE=$SIZE tests/bench-rbd.sh
fi
if command -v openssl > /dev/null; then
  echo; echo "## crypto ceiling (one core)"
  openssl speed -elapsed -seconds 2 -evp aes-256-xts -decrypt -bytes 4096 2>/dev/null | tail -1
  go test -run '^$' -bench 'DecryptXTS' -benchtime 2s ./luksio/ | grep -E '^Benchmark' || true
fi
