#!/usr/bin/env bash
# with-cloud.sh CMD...: runs CMD with ONE local OpenStack cloud (real Keystone,
# Glance and Barbican from Debian packages, on 127.0.0.1 and free ports) started
# for the whole run and stopped afterwards. CMD sees:
#   IMGFS_TEST_CLOUD=1, OS_CLOUD=loopback-demo, OS_CLIENT_CONFIG_FILE=<dir>/clouds.yaml
#   (clouds loopback-demo: project member; loopback-admin: admin), the demo OS_* vars,
#   IMGFS_TEST_CLOUD_DIR=<dir> (logs in <dir>/log).
# If the cloud cannot start, CI (CI=true) fails; elsewhere CMD runs anyway and the
# tests that need the cloud skip loudly. CMD's exit code is preserved.
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
  if [ -z "${IMGFS_KEEP_CLOUD_DIR:-}" ]; then rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=""
if base=$(pick_ports); then
  echo "with-cloud: starting Keystone, Glance, Barbican on 127.0.0.1:$base-$((base + 2)) (logs: $DIR/log)" >&2
  if OSL_KEYSTONE_PORT=$base OSL_GLANCE_PORT=$((base + 1)) OSL_BARBICAN_PORT=$((base + 2)) \
      "$HERE/cloud/cloud.sh" start "$DIR" > "$DIR.env" 2> "$DIR.start.log"; then
    started=1
  fi
fi
if [ -n "$started" ]; then
  # shellcheck disable=SC1090
  . "$DIR.env"
  rm -f "$DIR.env" "$DIR.start.log"
  export IMGFS_TEST_CLOUD=1 IMGFS_TEST_CLOUD_DIR="$DIR" OS_CLOUD=loopback-demo OS_CLIENT_CONFIG_FILE="$DIR/clouds.yaml"
  echo "with-cloud: cloud ready" >&2
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
