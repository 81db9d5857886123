#!/usr/bin/env bash
# with-cloud.sh CMD...: runs CMD with ONE local OpenStack cloud (real Keystone,
# Glance and Barbican from Debian packages, on 127.0.0.1 and free ports) started
# for the whole run and stopped afterwards. CMD sees:
#   IMGFS_TEST_CLOUD=1, OS_CLOUD=loopback-demo, OS_CLIENT_CONFIG_FILE=<dir>/clouds.yaml
#   (clouds loopback-demo: project member; loopback-admin: admin), the demo OS_* vars,
#   IMGFS_TEST_CLOUD_DIR=<dir> (logs in <dir>/log).
# It also starts a single-node Ceph (tests/cloud/ceph.sh, memstore, cephx, 127.0.0.1)
# alongside, and Glance then has two stores: 'fs' (file, the default, so tests that do
# not choose a store are unaffected) and 'ceph' (rbd; upload with the header
# X-Image-Meta-Store: ceph), with show_image_direct_url. CMD then also sees
# IMGFS_TEST_CEPH=1, IMGFS_TEST_CEPH_DIR=<dir>/ceph and ceph.sh's env lines (CEPH_CONF,
# CEPHL_FSID, CEPHL_POOL, CEPHL_USER, CEPHL_RO_USER, CEPHL_BADKEY_CONF, ...).
# IMGFS_TEST_NO_CEPH=1 skips Ceph (Glance then has the file store only).
# If the cloud (or Ceph) cannot start, CI (CI=true) fails; elsewhere CMD runs anyway
# and the tests that need them skip loudly. CMD's exit code is preserved.
# IMGFS_TEST_CLOUD=1 already set (a cloud is running): CMD runs as is.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
[ $# -gt 0 ] || { echo "usage: $0 CMD..." >&2; exit 2; }

if [ "${IMGFS_TEST_CLOUD:-}" = 1 ] && [ -n "${OS_CLIENT_CONFIG_FILE:-}" ]; then
  exec "$@"
fi

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_ports() {  # three consecutive free ports in 20000-29999
  local base i
  for i in $(seq 1 50); do
    base=$(( 20000 + (RANDOM % 3333) * 3 ))
    if port_free $base && port_free $((base + 1)) && port_free $((base + 2)); then
      echo $base; return 0
    fi
  done
  return 1
}

DIR=$(mktemp -d "${TMPDIR:-/tmp}/imgfs-cloud.XXXXXX")
cleanup() {
  "$HERE/cloud/cloud.sh" stop "$DIR" >/dev/null 2>&1 || true
  [ -d "$DIR/ceph" ] && "$HERE/cloud/ceph.sh" stop "$DIR/ceph" >/dev/null 2>&1 || true
  if [ -z "${IMGFS_KEEP_CLOUD_DIR:-}" ]; then rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ceph and the cloud start side by side (Ceph takes ~12-20 s, the cloud longer):
# Glance's rbd store needs only the ceph.conf, which ceph.sh writes first, at start.
ceph="" cephpid="" gceph=0
if [ "${IMGFS_TEST_NO_CEPH:-}" != 1 ]; then
  cbase=""
  for i in $(seq 1 50); do  # mon v1, mon v2, then 100 ports for the OSD in 30000-39999
    b=$(( 30000 + (RANDOM % 95) * 105 ))
    if port_free $b && port_free $((b + 1)) && port_free $((b + 5)) && port_free $((b + 6)); then cbase=$b; break; fi
  done
  if [ -n "$cbase" ]; then
    echo "with-cloud: starting Ceph (mon + memstore OSD) on 127.0.0.1:$cbase (logs: $DIR/ceph/log)" >&2
    CEPHL_MON_PORT=$cbase CEPHL_MON_V2_PORT=$((cbase + 1)) CEPHL_BIND_PORTS=$((cbase + 5))-$((cbase + 104)) \
      "$HERE/cloud/ceph.sh" start "$DIR/ceph" > "$DIR.ceph.env" 2> "$DIR.ceph.log" &
    cephpid=$!
    for i in $(seq 1 300); do  # the ceph.conf appears within a second or two (after install)
      { [ -s "$DIR/ceph/ceph.conf" ] || ! kill -0 "$cephpid" 2>/dev/null; } && break
      sleep 0.1
    done
    [ -s "$DIR/ceph/ceph.conf" ] && gceph=1
  fi
fi

started=""
if base=$(pick_ports); then
  echo "with-cloud: starting Keystone, Glance, Barbican on 127.0.0.1:$base-$((base + 2)) (logs: $DIR/log)" >&2
  if OSL_GLANCE_CEPH=$gceph CEPH_CONF="$DIR/ceph/ceph.conf" CEPHL_POOL=images CEPHL_USER=glance \
      OSL_KEYSTONE_PORT=$base OSL_GLANCE_PORT=$((base + 1)) OSL_BARBICAN_PORT=$((base + 2)) \
      "$HERE/cloud/cloud.sh" start "$DIR" > "$DIR.env" 2> "$DIR.start.log"; then
    started=1
  fi
fi

if [ -n "$cephpid" ]; then
  if wait "$cephpid" && [ "$gceph" = 1 ]; then
    # shellcheck disable=SC1090
    . "$DIR.ceph.env"
    export CEPH_CONF CEPHL_DIR CEPHL_FSID CEPHL_MON_HOST CEPHL_POOL CEPHL_STORE CEPHL_USER CEPHL_KEYRING \
      CEPHL_RO_USER CEPHL_RO_KEYRING CEPHL_BADKEY_CONF
    unset CEPHL_KEY CEPHL_RO_KEY  # the keyrings hold them; keep keys out of the tests' environment
    ceph=1
  fi
fi
if [ -z "$ceph" ] && [ "${IMGFS_TEST_NO_CEPH:-}" != 1 ]; then
  echo "with-cloud: Ceph did not start:" >&2
  tail -n 30 "$DIR.ceph.log" >&2 2>/dev/null || true
  if [ "${CI:-}" = true ]; then
    echo "with-cloud: CI=true: failing (tests/install-deps.sh installs ceph-mon, ceph-osd)" >&2
    exit 1
  fi
  echo "with-cloud: WARNING: running without Ceph; the RBD tests will SKIP" >&2
fi
rm -f "$DIR.ceph.env" "$DIR.ceph.log"
if [ -n "$started" ]; then
  # shellcheck disable=SC1090
  . "$DIR.env"
  rm -f "$DIR.env" "$DIR.start.log"
  export IMGFS_TEST_CLOUD=1 IMGFS_TEST_CLOUD_DIR="$DIR" OS_CLOUD=loopback-demo OS_CLIENT_CONFIG_FILE="$DIR/clouds.yaml"
  if [ -n "$ceph" ]; then export IMGFS_TEST_CEPH=1 IMGFS_TEST_CEPH_DIR="$DIR/ceph"; fi
  echo "with-cloud: cloud ready${ceph:+ (Glance stores: fs, ceph)}" >&2
else
  echo "with-cloud: the local OpenStack cloud did not start:" >&2
  tail -n 40 "$DIR.start.log" >&2 2>/dev/null || true
  rm -f "$DIR.env" "$DIR.start.log"
  if [ "${CI:-}" = true ]; then
    echo "with-cloud: CI=true: failing (tests/install-deps.sh installs the services)" >&2
    exit 1
  fi
  echo "with-cloud: WARNING: running without a cloud; Glance/Barbican tests will SKIP" >&2
  unset IMGFS_TEST_CLOUD
fi

"$@"
rc=$?
exit $rc
