#!/usr/bin/env bash
# bench-glance.sh: imgfs against the real loopback Glance (Keystone + Glance + Barbican
# from tests/cloud/cloud.sh), side by side with curl and today's `openstack image save` +
# `qemu-img convert`, directly and through tests/delayproxy at 5 ms and 20 ms of added
# round-trip time. Prints a Markdown table: each row is BENCH_ROUNDS runs (default 3),
# shown as min / median / max seconds, MB/s of the median, the largest peak RSS, and
# the ratio of curl's median to the row's median (>= 0.9: the issue #14 target).
# Knobs: BENCH_GLANCE_SIZE (default 512M), BENCH_ROUNDS, BENCH_DIR, BENCH_RTTS ("5 20").
# BENCH_FIRST_ONLY=1 runs only the first-MiB rows (time to first byte); BENCH_IMGFS_BASE=BIN
# then adds the same rows for another build (e.g. the commit before a change), interleaved.
# A cloud already running (IMGFS_TEST_CLOUD=1 with OSL_DIR, as tests/with-cloud.sh and
# cloud.sh start print) is reused; else one is started in the bench directory and stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$PWD/tests
SIZE=${BENCH_GLANCE_SIZE:-512M}
ROUNDS=${BENCH_ROUNDS:-3}
RTTS=${BENCH_RTTS:-5 20}
IMGFS=${BENCH_IMGFS:-$PWD/bin/imgfs}   # BENCH_IMGFS: another build, e.g. the baseline
FIRST_ONLY=${BENCH_FIRST_ONLY:-} BASE=${BENCH_IMGFS_BASE:-}
[ -n "${BENCH_IMGFS:-}" ] || go build -o bin/imgfs ./cmd/imgfs
go build -o bin/delayproxy ./tests/delayproxy
base=${BENCH_DIR:-}
if [ -z "$base" ]; then
  if [ -d /dev/shm ] && [ "$(df -k --output=avail /dev/shm | tail -1)" -gt 3000000 ]; then base=/dev/shm; else base=${TMPDIR:-/tmp}; fi
fi
D=$(mktemp -d "$base/imgfs-bench-glance.XXXXXX")
M="$D/mnt"; mkdir -p "$M"
PROXIES=() CLOUD_DIR="" OWN_CLOUD=""
ID=""
cleanup() {
  fusermount3 -u -z "$M" 2>/dev/null || true
  if [ -n "$ID" ]; then curl -s -o /dev/null -X DELETE -H "X-Auth-Token: $(token)" "$OSL_GLANCE_URL/v2/images/$ID" || true; fi
  local p; for p in "${PROXIES[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$OWN_CLOUD" ]; then "$HERE/cloud/cloud.sh" stop "$CLOUD_DIR" >/dev/null 2>&1 || true; rm -rf "$CLOUD_DIR"; fi
  rm -rf "$D"
}
trap cleanup EXIT

# ---------------------------------------------------------------- the cloud
if [ "${IMGFS_TEST_CLOUD:-}" = 1 ] && [ -n "${OSL_DIR:-${IMGFS_TEST_CLOUD_DIR:-}}" ]; then
  CLOUD_DIR=${OSL_DIR:-$IMGFS_TEST_CLOUD_DIR}
  eval "$("$HERE/cloud/cloud.sh" env "$CLOUD_DIR")"
else
  port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
  for _ in $(seq 1 50); do
    b=$(( 20000 + (RANDOM % 3333) * 3 ))
    port_free $b && port_free $((b + 1)) && port_free $((b + 2)) && break
  done
  CLOUD_DIR=$(mktemp -d "${TMPDIR:-/tmp}/imgfs-bench-cloud.XXXXXX"); OWN_CLOUD=1
  echo "starting the loopback cloud on 127.0.0.1:$b-$((b + 2)) (logs: $CLOUD_DIR/log)" >&2
  env OSL_KEYSTONE_PORT=$b OSL_GLANCE_PORT=$((b + 1)) OSL_BARBICAN_PORT=$((b + 2)) \
    "$HERE/cloud/cloud.sh" start "$CLOUD_DIR" > "$D/cloud.env" 2> "$D/cloud.log" || { tail -20 "$D/cloud.log" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$D/cloud.env"
fi
KEYSTONE_URL=$OS_AUTH_URL
# Only clouds.yaml from here on: OS_* variables (OS_REGION_NAME, OS_AUTH_URL ...)
# would override the entries of the delayed clouds.
for v in $(env | sed -n 's/^\(OS_[A-Z_]*\)=.*/\1/p'); do unset "$v"; done
export OS_CLOUD=loopback-demo OS_CLIENT_CONFIG_FILE="$CLOUD_DIR/clouds.yaml"
KPORT=${KEYSTONE_URL##*:}; KPORT=${KPORT%%/*}
GPORT=${OSL_GLANCE_URL##*:} BPORT=${OSL_BARBICAN_URL##*:}

token() {  # a fresh demo token
  curl -s -m 30 -D - -o /dev/null -X POST "$KEYSTONE_URL/auth/tokens" -H 'Content-Type: application/json' \
    -d '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"demo","domain":{"id":"default"},"password":"demopw"}}},"scope":{"project":{"name":"demo","domain":{"id":"default"}}}}}' \
    | awk -F': ' 'tolower($1)=="x-subject-token"{print $2}' | tr -d '\r'
}

# ---------------------------------------------------------------- the image
PASS=benchpass-glance
printf '%s\n' "$PASS" > "$D/pass"
head -c "$SIZE" /dev/urandom > "$D/plain.raw"
BYTES=$(stat -c %s "$D/plain.raw")
ID=$("$IMGFS" upload --progress off --pbkdf-iterations 1000 --passphrase-file "$D/pass" --name imgfs-bench "$D/plain.raw" 2>"$D/upload.log")
rm -f "$D/plain.raw"
[ -n "$ID" ] || { cat "$D/upload.log" >&2; exit 1; }
STORED=$(curl -s -H "X-Auth-Token: $(token)" "$OSL_GLANCE_URL/v2/images/$ID" | python3 -c 'import json,sys;print(json.load(sys.stdin)["size"])')

# ---------------------------------------------------------------- delayed clouds
# For each RTT, a delaying proxy in front of Keystone, Glance and Barbican, a region
# RegionRTT<ms> whose catalog points at the proxies, and a clouds.yaml entry for it.
proxy() {  # proxy TARGETPORT RTTms: sets ADDR to its 127.0.0.1:PORT (not in a subshell: PROXIES)
  local out="$D/proxy.$1.$2"
  bin/delayproxy -target "127.0.0.1:$1" -rtt "${2}ms" > "$out" 2>>"$D/proxy.log" &
  PROXIES+=($!)
  for _ in $(seq 1 50); do [ -s "$out" ] && break; sleep 0.1; done
  ADDR=$(cat "$out")
}
ADMIN=(env -u OS_CLOUD -u OS_CLIENT_CONFIG_FILE bash -c ". $CLOUD_DIR/openrc-admin; exec \"\$@\"" --)
cp "$CLOUD_DIR/clouds.yaml" "$D/clouds.yaml"
for rtt in $RTTS; do
  proxy "$KPORT" "$rtt"; kp=$ADDR; proxy "$GPORT" "$rtt"; gp=$ADDR; proxy "$BPORT" "$rtt"; bp=$ADDR
  region=RegionRTT$rtt
  "${ADMIN[@]}" openstack region show "$region" >/dev/null 2>&1 || "${ADMIN[@]}" openstack region create "$region" >/dev/null
  for svc in glance:image:$gp barbican:key-manager:$bp; do
    IFS=: read -r name typ addr port <<< "$svc"
    for e in $("${ADMIN[@]}" openstack endpoint list --region "$region" --service "$typ" -f value -c ID); do
      "${ADMIN[@]}" openstack endpoint delete "$e" >/dev/null
    done
    "${ADMIN[@]}" openstack endpoint create --region "$region" "$typ" public "http://$addr:$port" >/dev/null
  done
  cat >> "$D/clouds.yaml" <<EOF
  rtt$rtt:
    auth:
      auth_url: http://$kp/v3
      username: demo
      password: demopw
      project_name: demo
      user_domain_name: Default
      project_domain_name: Default
    region_name: $region
    interface: public
    identity_api_version: 3
EOF
  eval "GLANCE_RTT$rtt=http://$gp"
done
export OS_CLIENT_CONFIG_FILE="$D/clouds.yaml"

# ---------------------------------------------------------------- runs
declare -A TIMES RSS NOTE DRSS
now() { date +%s.%N; }
# run NAME CMD...: one timed run (stdout discarded); wall seconds and peak RSS.
run() {
  local name=$1; shift
  /usr/bin/time -f '%e %M' -o "$D/time" "$@" > /dev/null 2> "$D/err.$name" || { cat "$D/err.$name" >&2; return 1; }
  local t r; read -r t r < "$D/time"
  TIMES[$name]+="$t "; RSS[$name]=$(( ${RSS[$name]:-0} > r ? ${RSS[$name]:-0} : r ))
}
firstbyte() {  # the first_byte/token/unlocked figures of an imgfs --stats line, then metadata/header/key if shown
  sed -n 's/.*first byte at \([0-9]*\) ms (token at \([0-9]*\) ms, unlocked at \([0-9]*\) ms\([^)]*\)).*/\1 \2 \3\4/p' "$1" |
    sed 's/; metadata at \([0-9]*\) ms/ m\1/; s/, header at \([0-9]*\) ms/ h\1/; s/, key at \([0-9]*\) ms/ k\1/'
}
curl_whole() { curl -s -o /dev/null -H "X-Auth-Token: $T" "$1/v2/images/$ID/file"; }  # token taken before
curl_sha() { curl -s -H "X-Auth-Token: $T" "$1/v2/images/$ID/file" | sha512sum > /dev/null; }  # download + integrity check
save_convert() {  # today's way: openstack image save, then qemu-img convert (decrypt) to null-co
  local cloud=$1
  env OS_CLOUD="$cloud" openstack image save --file "$D/saved.img" "$ID"
  qemu-img convert --object "secret,id=s,data=$PASS" --image-opts "driver=luks,key-secret=s,file.filename=$D/saved.img" \
    -n --target-image-opts "driver=null-co,size=$BYTES"
  rm -f "$D/saved.img"
}
mount_dd() {  # mount (unlock included), dd the disk, unmount
  local cloud=$1
  env OS_CLOUD="$cloud" "$IMGFS" mount -d "$ID" "$M" > /dev/null 2>&1
  dd if="$M/disk" of=/dev/null bs=1M status=none
  "$IMGFS" umount "$M"
}
export -f save_convert mount_dd token curl_whole curl_sha
export D ID PASS BYTES IMGFS M KEYSTONE_URL

echo "# imgfs against the loopback Glance — $(date -u +%Y-%m-%dT%H:%MZ) — $(nproc) cores — load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "raw LUKS1 image of $SIZE ($BYTES bytes plaintext, $STORED stored), image $ID; $ROUNDS rounds per row, interleaved"
for round in $(seq 1 "$ROUNDS"); do
  for rtt in 0 $RTTS; do
    if [ "$rtt" = 0 ]; then cloud=loopback-demo; g=$OSL_GLANCE_URL; else cloud=rtt$rtt; g=$(eval echo "\$GLANCE_RTT$rtt"); fi
    if [ -n "$FIRST_ONLY" ]; then
      run "first$rtt" env OS_CLOUD=$cloud "$IMGFS" cat --stats --length 1M "$ID"
      firstbyte "$D/err.first$rtt" >> "$D/fb.first$rtt"
      if [ -n "$BASE" ]; then
        run "firstbase$rtt" env OS_CLOUD=$cloud "$BASE" cat --stats --length 1M "$ID"
        firstbyte "$D/err.firstbase$rtt" >> "$D/fb.firstbase$rtt"
      fi
      continue
    fi
    T=$(token); export T
    run "curl$rtt" bash -c "curl_whole $g"
    run "curlsha$rtt" bash -c "curl_sha $g"
    run "cat$rtt" env OS_CLOUD=$cloud "$IMGFS" cat --stats "$ID"
    firstbyte "$D/err.cat$rtt" >> "$D/fb.cat$rtt"
    # the data phase alone: from the first byte to the last (the "wrote ... in" line)
    TIMES[data$rtt]+="$(sed -n 's/.*wrote .* in \([0-9.]*\)\(m\{0,1\}\)s .*/\1 \2/p' "$D/err.cat$rtt" | awk '{print ($2=="m") ? $1/1000 : $1}') "
    RSS[data$rtt]=${RSS[cat$rtt]}
    run "first$rtt" env OS_CLOUD=$cloud "$IMGFS" cat --stats --length 1M "$ID"
    firstbyte "$D/err.first$rtt" >> "$D/fb.first$rtt"
    if [ "$rtt" = 0 ] || [ "$rtt" = "${RTTS##* }" ]; then
      run "mount$rtt" bash -c "mount_dd $cloud"
      # dd alone: a fresh mount (cold page cache), its open and unlock not timed
      env OS_CLOUD="$cloud" "$IMGFS" mount -d "$ID" "$M" > /dev/null 2> "$D/mount.err"
      run "dd$rtt" dd if="$M/disk" of=/dev/null bs=1M status=none
      # the row's RSS is the mount daemon's peak, not dd's
      dpid=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' "$D/mount.err")
      hwm=$(awk '/^VmHWM/{print $2}' "/proc/$dpid/status" 2>/dev/null || echo 0)
      [ "${hwm:-0}" -gt "${DRSS[$rtt]:-0}" ] && DRSS[$rtt]=$hwm
      "$IMGFS" umount "$M"
      if command -v openstack > /dev/null; then run "save$rtt" bash -c "save_convert $cloud"; fi
    fi
  done
done

for rtt in 0 $RTTS; do [ -n "${DRSS[$rtt]:-}" ] && RSS[dd$rtt]=${DRSS[$rtt]}; done
stats() {  # min median max of the numbers on stdin
  tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {printf "%.2f %.2f %.2f", a[1], a[int((NR+1)/2)], a[NR]}'
}
printf '\n| run | RTT added | seconds min / median / max | MB/s (median) | peak RSS MiB | vs curl (curl s / run s) |\n|---|---|---|---|---|---|\n'
for rtt in 0 $RTTS; do
  read -r _ cmed _ <<< "$(stats <<< "${TIMES[curl$rtt]:-}")"
  for row in "curl$rtt:curl GET /v2/images/ID/file (single stream, no decryption)" \
             "curlsha$rtt:curl ... | sha512sum (download and Glance's integrity check, no decryption)" \
             "save$rtt:openstack image save + qemu-img convert (luks → null-co)" \
             "cat$rtt:imgfs cat ID > /dev/null (whole image, decrypted, sha512 checked; token, metadata, key included)" \
             "data$rtt:the same, data phase only (\"wrote ... in\" of --stats)" \
             "mount$rtt:imgfs mount -d ID + dd bs=1M of disk + umount" \
             "dd$rtt:dd bs=1M of a fresh mount's disk (open and unlock not timed; RSS: the mount daemon's)" \
             "first$rtt:imgfs cat --length 1M ID (first MiB, everything from the token on)" \
             "firstbase$rtt:the same, BENCH_IMGFS_BASE build"; do
    name=${row%%:*} label=${row#*:}
    [ -n "${TIMES[$name]:-}" ] || continue
    read -r mn md mx <<< "$(stats <<< "${TIMES[$name]}")"
    bytes=$BYTES; [[ $name == first* ]] && bytes=1048576
    ratio=–; [ -z "${TIMES[curl$rtt]:-}" ] || ratio=$(printf '%.2f' "$(echo "$cmed / $md" | bc -l)")
    printf '| %s | %s ms | %s / %s / %s | %.0f | %d | %s |\n' "$label" "$rtt" "$mn" "$md" "$mx" \
      "$(echo "$bytes / 1000000 / $md" | bc -l)" "$(( ${RSS[$name]} / 1024 ))" "$ratio"
  done
done
echo
echo "Time to first byte from \`imgfs cat --stats\` (ms from the start of Open; first byte / token / unlocked, then m = metadata, h = header, k = key in hand when shown, each run):"
for rtt in 0 $RTTS; do
  for k in first firstbase cat; do
    [ -s "$D/fb.$k$rtt" ] || continue
    printf -- '- %s, RTT %s ms: %s' "$k" "$rtt" "$(tr '\n' ';' < "$D/fb.$k$rtt" | sed 's/;$//; s/;/; /g')"
    if [ "$rtt" != 0 ]; then
      printf ' → round trips after the token: %s' "$(awk -v r="$rtt" '{printf "%.1f ", ($1-$2)/r}' "$D/fb.$k$rtt")"
    fi
    echo
  done
done
echo "Proxy: tests/delayproxy (every byte forwarded RTT/2 later in each direction, 64 MiB in flight per direction)."
