#!/usr/bin/env bash
# ceph.sh — imgfs's test Ceph: a real single-node Ceph 16 (Pacific, Debian 12 packages) on
# 127.0.0.1: one mon, one OSD (memstore by default: no disk needed), optionally one mgr,
# cephx on, a pool `images` (application rbd, `rbd pool init` done), a client.glance key
# for it (the caps the OpenStack docs give Glance) and a read-only client.glance-ro key
# (osd 'profile rbd-read-only'). No systemd. Everything a run writes (ceph.conf, keyrings,
# mon store, OSD data, logs, pid files) lives under DIR.
#
# Usage:
#   ceph.sh install          apt-get install the packages (idempotent)
#   ceph.sh start DIR        install if needed, create the cluster in DIR (first time only),
#                            start the daemons, wait until client.glance can write and read
#                            the pool, print env lines
#   ceph.sh stop DIR         stop what start DIR started (by PID; idempotent)
#   ceph.sh restart-osd DIR  stop osd.0 (SIGTERM) and start it again; waits for client I/O
#   ceph.sh kill-osd DIR     SIGKILL osd.0 (bluestore only: memstore loses its data)
#   ceph.sh stop-mon DIR     stop the mon (new clients then time out: client_mount_timeout)
#   ceph.sh stop-osd DIR     stop osd.0 (SIGTERM; I/O then times out: rados_osd_op_timeout)
#   ceph.sh resume DIR       start the mon and osd.0 again where stopped; waits for I/O
#   ceph.sh status DIR       PIDs, `ceph health`, pool listing (rc 1 if a daemon is down)
#   ceph.sh env DIR          print the env lines again
#   ceph.sh smoke DIR        rbd import / snap / export round trip as client.glance
#
#   eval "$(tests/cloud/ceph.sh start /tmp/ceph1)"
#   rbd ls "$CEPHL_POOL"                          # CEPH_CONF is set: admin key by default
#   rbd --id "$CEPHL_USER" ls "$CEPHL_POOL"       # as client.glance
#
# Env lines printed by start/env (stdout, `export NAME=VALUE`):
#   CEPHL_DIR, CEPH_CONF (DIR/ceph.conf: mon host, cephx, keyring = DIR/$cluster.$name.keyring),
#   CEPHL_FSID, CEPHL_MON_HOST, CEPHL_POOL, CEPHL_STORE,
#   CEPHL_USER / CEPHL_KEYRING / CEPHL_KEY           client.glance (rbd profile on the pool)
#   CEPHL_RO_USER / CEPHL_RO_KEYRING / CEPHL_RO_KEY  client.glance-ro (rbd-read-only profile)
#   CEPHL_BADKEY_CONF  a ceph.conf like CEPH_CONF whose keyrings (admin, glance, glance-ro)
#                      hold freshly generated keys the cluster does not know: cephx rejects them
#
# Environment knobs (read when DIR is first created, then kept in DIR/cephl.env):
#   CEPHL_MON_PORT=16789      mon msgr v1 port      CEPHL_MON_V2_PORT=13300  mon msgr v2 port
#   CEPHL_BIND_PORTS=16800-16899   port range the OSD (8 ports) and mgr (2) bind on 127.0.0.1
#   CEPHL_STORE=memstore|bluestore  default memstore (data in the OSD's RAM; written to
#                             DIR/osd on a clean stop, lost if the OSD is killed).
#                             bluestore: sparse file DIR/osd/ceph-0/block (use it for tests
#                             that kill an OSD)
#   CEPHL_STORE_SIZE=4G       memstore capacity / bluestore block file size
#   CEPHL_MGR=0|1             default 0: no ceph-mgr (I/O works; `ceph -s`/`ceph df` show
#                             no PG or usage statistics). 1: start one (+~320 MiB RSS, +8 s)
#   CEPHL_POOL=images  CEPHL_CLIENT=glance  CEPHL_PG_NUM=8
# CEPH_STORE is accepted as a synonym of CEPHL_STORE.
# Read at every start: CEPHL_START_TIMEOUT=60 (seconds per wait)
# Logs: DIR/log/. Messages go to stderr; stdout carries only 'export' lines.
#
# Adapted from a recipe measured on a 2-core Debian 12 VM (Ceph 16.2.15): install ~35-50 s;
# fresh start 11-12 s (memstore) / 14 s (bluestore); restart ~4 s; RSS mon ~40 MiB, OSD
# ~45 MiB plus, with memstore, the data stored.
# Pitfalls: memstore needs `osd fast shutdown = false` (else a restarted OSD finds an empty
# store and I/O hangs); librados clients wait client_mount_timeout (default 300 s) for a
# dead mon: every CLI call here bounds it.
set -euo pipefail

HOST=127.0.0.1
PKGS=(ceph-mon ceph-osd ceph-common librbd-dev librados-dev uuid-runtime)
[ "${CEPHL_MGR:-0}" = 1 ] && PKGS+=(ceph-mgr)
CEPHL_STORE=${CEPHL_STORE:-${CEPH_STORE:-}}

log() { printf '[ceph.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# CEPHL_DIR in a daemon's environment is how stop/status recognise our own PIDs.
clean_env() { env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV -u PYTHONSTARTUP -u CEPH_ARGS \
  PATH=/usr/sbin:/usr/bin:/sbin:/bin CEPHL_DIR="${D:-}" "$@"; }

# ---------------------------------------------------------------- install
do_install() {
  local missing=() p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then log "packages already installed"; return 0; fi
  [ "$(id -u)" = 0 ] || die "need root to apt-get install: ${missing[*]}"
  log "installing: ${missing[*]}"
  # postinsts would try to start ceph services through invoke-rc.d: forbid that (101)
  local made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  if ! apt-cache policy ceph-osd 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >&2 || rc=$?
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  [ $rc -eq 0 ] || die "apt-get install failed ($rc)"
}

# ---------------------------------------------------------------- helpers
port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# admin CLI with bounded waits (client_mount_timeout defaults to 300 s)
CEPH() { clean_env timeout 30 ceph -c "$D/ceph.conf" --connect-timeout 15 "$@"; }
RBD() { clean_env timeout 60 rbd -c "$D/ceph.conf" --client-mount-timeout 15 "$@"; }

# start_bg NAME CMD...: run CMD in its own session; the PID written is the daemon's own
# PID (bash execs into it). Daemons run in the foreground (-f): no fork, no systemd.
start_bg() {
  local name=$1; shift
  local pidf="$D/run/$name.pid"
  rm -f "$pidf"
  # a simple command (not the clean_env function), so that no waiting bash subshell
  # stays behind as the daemon's parent
  env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV -u PYTHONSTARTUP -u CEPH_ARGS \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin CEPHL_DIR="$D" \
    setsid /bin/bash -c 'echo $$ > "$0"; exec "$@"' "$pidf" "$@" \
    </dev/null >>"$D/log/$name.stdout.log" 2>&1 &
  local i
  for i in $(seq 1 50); do [ -s "$pidf" ] && break; sleep 0.1; done
  [ -s "$pidf" ] || die "$name did not start (see $D/log/$name.stdout.log)"
  log "$name started, pid $(cat "$pidf")"
}

# pid_of NAME: PID from the pid file, only if that process is still ours
pid_of() {
  local f="$D/run/$1.pid" p
  [ -s "$f" ] || return 1
  p=$(cat "$f")
  [ -r "/proc/$p/environ" ] || return 1
  { tr '\0' '\n' < "/proc/$p/environ"; } 2>/dev/null | grep -qxF -- "CEPHL_DIR=$D" || return 1
  echo "$p"
}

stop_one() {
  local name=$1 p i
  p=$(pid_of "$name") || { rm -f "$D/run/$name.pid"; return 0; }
  kill -TERM "$p" 2>/dev/null || true
  # memstore OSD writes its whole store to DIR/osd on a clean stop: give it time
  for i in $(seq 1 600); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then log "$name (pid $p) ignored SIGTERM for 60s, SIGKILL"; kill -KILL "$p" 2>/dev/null || true
  elif [ "$name" = osd.0 ]; then touch "$D/run/osd.0.clean-stop"; fi
  rm -f "$D/run/$name.pid"
  log "$name (pid $p) stopped"
}

wait_for() {  # wait_for WHAT NAME CMD...: retry CMD until it succeeds; NAME must stay alive
  local what=$1 name=$2; shift 2
  local deadline=$(( $(date +%s) + ${CEPHL_START_TIMEOUT:-60} ))
  until "$@" >/dev/null 2>&1; do
    pid_of "$name" >/dev/null || die "$name exited while waiting for $what; tail of its log:
$(tail -n 20 "$D/log/$name.log" "$D/log/$name.stdout.log" 2>/dev/null)"
    [ "$(date +%s)" -lt $deadline ] || die "timed out after ${CEPHL_START_TIMEOUT:-60}s waiting for $what"
    sleep 0.3
  done
}

# ---------------------------------------------------------------- configure
load_settings() {
  FSID="" MON_PORT="" MON_V2_PORT="" BIND_PORTS="" STORE="" STORE_SIZE="" MGR="" POOL="" CLIENT="" PG_NUM=""
  # shellcheck disable=SC1091
  if [ -f "$D/cephl.env" ]; then . "$D/cephl.env"; fi
  MON_PORT=${MON_PORT:-${CEPHL_MON_PORT:-16789}}
  MON_V2_PORT=${MON_V2_PORT:-${CEPHL_MON_V2_PORT:-13300}}
  BIND_PORTS=${BIND_PORTS:-${CEPHL_BIND_PORTS:-16800-16899}}
  STORE=${STORE:-${CEPHL_STORE:-memstore}}
  STORE_SIZE=${STORE_SIZE:-${CEPHL_STORE_SIZE:-4G}}
  MGR=${MGR:-${CEPHL_MGR:-0}}
  POOL=${POOL:-${CEPHL_POOL:-images}}
  CLIENT=${CLIENT:-${CEPHL_CLIENT:-glance}}
  PG_NUM=${PG_NUM:-${CEPHL_PG_NUM:-8}}
  case "$STORE" in memstore|bluestore) ;; *) die "CEPHL_STORE must be memstore or bluestore";; esac
  case "$MGR" in 0|1) ;; *) die "CEPHL_MGR must be 0 or 1";; esac
  case "$BIND_PORTS" in *-*) ;; *) die "CEPHL_BIND_PORTS must be MIN-MAX";; esac
  MON_ADDRS="[v2:$HOST:$MON_V2_PORT,v1:$HOST:$MON_PORT]"
}

size_bytes() { numfmt --from=iec "$1"; }

write_config() {
  mkdir -p "$D"/{log,run,mon/ceph-a,osd/ceph-0,mgr/ceph-x}
  FSID=$(uuidgen)
  printf 'FSID=%s\nMON_PORT=%s\nMON_V2_PORT=%s\nBIND_PORTS=%s\nSTORE=%s\nSTORE_SIZE=%s\nMGR=%s\nPOOL=%s\nCLIENT=%s\nPG_NUM=%s\n' \
    "$FSID" "$MON_PORT" "$MON_V2_PORT" "$BIND_PORTS" "$STORE" "$STORE_SIZE" "$MGR" "$POOL" "$CLIENT" "$PG_NUM" > "$D/cephl.env"
  local bytes store_conf
  bytes=$(size_bytes "$STORE_SIZE")
  if [ "$STORE" = memstore ]; then
    # osd_fast_shutdown=false: a SIGTERMed OSD then unmounts the store, which is when
    # memstore saves itself to osd data; with the default (true) a restart finds an
    # empty store and every I/O on the pool hangs.
    store_conf="osd objectstore = memstore
memstore device bytes = $bytes
osd fast shutdown = false"
  else
    store_conf="osd objectstore = bluestore
bluestore block create = true
bluestore block size = $bytes
bluestore fsck on mkfs = false
osd memory target = 939524096"
  fi
  # Only daemon sections get log files and admin sockets, so that client programs
  # (rbd, glance-api, a Go test binary) never write there.
  cat > "$D/ceph.conf" <<EOF
[global]
fsid = $FSID
mon host = $MON_ADDRS
public addr = $HOST
cluster addr = $HOST
public network = 127.0.0.0/8
ms bind port min = ${BIND_PORTS%-*}
ms bind port max = ${BIND_PORTS#*-}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $D/\$cluster.\$name.keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = $PG_NUM
osd pool default pgp num = $PG_NUM
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
# mon data lives on whatever disk DIR is on: no 'low disk space' warning below 30% free
mon data avail warn = 2
mon data avail crit = 1
[mon]
mon data = $D/mon/\$cluster-\$id
keyring = \$mon_data/keyring
log file = $D/log/\$name.log
admin socket = $D/run/\$name.asok
[osd]
osd data = $D/osd/\$cluster-\$id
keyring = \$osd_data/keyring
log file = $D/log/\$name.log
admin socket = $D/run/\$name.asok
$store_conf
[mgr]
mgr data = $D/mgr/\$cluster-\$id
keyring = \$mgr_data/keyring
log file = $D/log/\$name.log
admin socket = $D/run/\$name.asok
EOF
  local A="clean_env ceph-authtool" n
  # the same cluster seen with keys it does not know: cephx must reject them (EACCES)
  mkdir -p "$D/badkey"
  sed "0,/^keyring = /s#^keyring = .*#keyring = $D/badkey/\$cluster.\$name.keyring#" "$D/ceph.conf" > "$D/badkey/ceph.conf"
  for n in admin "$CLIENT" "$CLIENT-ro"; do
    $A --create-keyring "$D/badkey/ceph.client.$n.keyring" --gen-key -n "client.$n" >/dev/null
    chmod 644 "$D/badkey/ceph.client.$n.keyring"
  done
  $A --create-keyring "$D/run/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  $A --create-keyring "$D/ceph.client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
  $A "$D/run/mon.keyring" --import-keyring "$D/ceph.client.admin.keyring" >/dev/null
  clean_env monmaptool --create --addv a "$MON_ADDRS" --fsid "$FSID" "$D/run/monmap" >/dev/null
  clean_env ceph-mon -c "$D/ceph.conf" --mkfs -i a --monmap "$D/run/monmap" \
    --keyring "$D/run/mon.keyring" >>"$D/log/mkfs.log" 2>&1 || die "ceph-mon --mkfs failed, see $D/log/mkfs.log"
  rm -f "$D/run/mon.keyring" "$D/run/monmap"
}

create_osd() {  # registers osd.0 with the mon and formats its store
  local uuid secret id
  uuid=$(uuidgen); secret=$(clean_env ceph-authtool --gen-print-key)
  printf '{"cephx_secret": "%s"}' "$secret" > "$D/run/osd-secret.json"
  id=$(CEPH osd new "$uuid" -i "$D/run/osd-secret.json")
  rm -f "$D/run/osd-secret.json"
  [ "$id" = 0 ] || die "expected osd id 0, got '$id'"
  clean_env ceph-authtool --create-keyring "$D/osd/ceph-0/keyring" --name osd.0 --add-key "$secret" >/dev/null
  clean_env ceph-osd -c "$D/ceph.conf" -i 0 --mkfs --osd-uuid "$uuid" >>"$D/log/mkfs.log" 2>&1 \
    || die "ceph-osd --mkfs failed, see $D/log/mkfs.log"
}

create_pool() {
  CEPH osd pool create "$POOL" "$PG_NUM" "$PG_NUM" >/dev/null 2>&1
  CEPH osd pool application enable "$POOL" rbd >/dev/null 2>&1
  RBD pool init "$POOL"   # returns once the pool's PGs are active
  # the caps the OpenStack docs give Glance; 'profile rbd-read-only' is enough for a reader
  CEPH auth get-or-create "client.$CLIENT" mon 'profile rbd' osd "profile rbd pool=$POOL" \
    mgr "profile rbd pool=$POOL" -o "$D/ceph.client.$CLIENT.keyring" 2>/dev/null
  chmod 644 "$D/ceph.client.$CLIENT.keyring"
  # a reader needs no more than this (opening read-write is refused with EPERM)
  CEPH auth get-or-create "client.$CLIENT-ro" mon 'profile rbd' osd "profile rbd-read-only pool=$POOL" \
    -o "$D/ceph.client.$CLIENT-ro.keyring" 2>/dev/null
  chmod 644 "$D/ceph.client.$CLIENT-ro.keyring"
  # without a mgr the mon raises MGR_DOWN (HEALTH_WARN) 2 minutes after mkfs; I/O is
  # unaffected, the mute only keeps `ceph health` at HEALTH_OK
  if [ "$MGR" = 0 ]; then CEPH health mute MGR_DOWN --sticky >/dev/null 2>&1 || log "could not mute MGR_DOWN"; fi
}

osd_up() { CEPH osd dump 2>/dev/null | grep -q '^osd\.0 up'; }
mgr_available() { CEPH mgr stat 2>/dev/null | grep -q '"available": true'; }
# a write+read+delete through the pool as the client: proves PGs are active
client_io() {
  clean_env timeout 20 rados -c "$D/ceph.conf" --id "$CLIENT" --client-mount-timeout 10 \
    --rados-osd-op-timeout 10 -p "$POOL" put cephl-ready "$D/cephl.env" &&
  clean_env timeout 20 rados -c "$D/ceph.conf" --id "$CLIENT" --client-mount-timeout 10 \
    --rados-osd-op-timeout 10 -p "$POOL" rm cephl-ready
}

key_of() { sed -n 's/^[[:space:]]*key = //p' "$1"; }
print_env() {
  echo "export CEPHL_DIR=$D"
  echo "export CEPH_CONF=$D/ceph.conf"
  echo "export CEPHL_FSID=$FSID"
  echo "export CEPHL_MON_HOST='$MON_ADDRS'"
  echo "export CEPHL_POOL=$POOL"
  echo "export CEPHL_STORE=$STORE"
  echo "export CEPHL_USER=$CLIENT"
  echo "export CEPHL_KEYRING=$D/ceph.client.$CLIENT.keyring"
  echo "export CEPHL_KEY=$(key_of "$D/ceph.client.$CLIENT.keyring")"
  echo "export CEPHL_RO_USER=$CLIENT-ro"
  echo "export CEPHL_RO_KEYRING=$D/ceph.client.$CLIENT-ro.keyring"
  echo "export CEPHL_RO_KEY=$(key_of "$D/ceph.client.$CLIENT-ro.keyring")"
  echo "export CEPHL_BADKEY_CONF=$D/badkey/ceph.conf"
}

# ---------------------------------------------------------------- start / stop
do_start() {
  local t0; t0=$(date +%s%N)
  do_install
  mkdir -p "$D"; D=$(cd "$D" && pwd)
  load_settings
  local name
  for name in mon.a osd.0 mgr.x; do
    if pid_of $name >/dev/null; then die "$name already running for $D (stop it first)"; fi
  done
  local p
  for p in "$MON_PORT" "$MON_V2_PORT"; do port_free "$p" || die "port $HOST:$p is already in use"; done

  trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed, stopping what was started"; do_stop; fi' EXIT
  local fresh=""
  if [ ! -f "$D/.initialised" ]; then
    [ -e "$D/ceph.conf" ] && die "$D holds a half-created cluster (start failed before); remove it and start again"
    fresh=1
    write_config
  elif [ "$STORE" = memstore ] && [ ! -e "$D/run/osd.0.clean-stop" ]; then
    # a memstore OSD that was killed (or crashed) restarts with an empty store and then
    # every I/O on the pool hangs: refuse instead
    die "memstore data in $D is gone (osd.0 was not stopped by '$0 stop'); remove $D and start again"
  fi
  rm -f "$D/run/osd.0.clean-stop"

  start_bg mon.a ceph-mon -c "$D/ceph.conf" -i a -f
  wait_for "the mon" mon.a CEPH mon stat
  if [ -n "$fresh" ]; then create_osd; fi
  start_bg osd.0 ceph-osd -c "$D/ceph.conf" -i 0 -f
  if [ "$MGR" = 1 ]; then
    if [ -n "$fresh" ]; then
      CEPH auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
        -o "$D/mgr/ceph-x/keyring" 2>/dev/null
    fi
    start_bg mgr.x ceph-mgr -c "$D/ceph.conf" -i x -f
  fi
  wait_for "osd.0 up" osd.0 osd_up
  if [ -n "$fresh" ]; then create_pool; fi
  wait_for "client.$CLIENT I/O on pool $POOL" osd.0 client_io
  if [ "$MGR" = 1 ]; then wait_for "the mgr" mgr.x mgr_available; fi
  touch "$D/.initialised"
  trap - EXIT
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  log "ceph up ($STORE, mgr=$MGR) in $((ms / 1000)).$(( (ms % 1000) / 100 ))s; fsid $FSID"
  print_env
}

do_stop() {
  [ -d "$D" ] || { log "$D does not exist"; return 0; }
  D=$(cd "$D" && pwd)
  local name
  for name in mgr.x osd.0 mon.a; do stop_one $name; done
}

do_status() {
  D=$(cd "$D" && pwd); load_settings
  local name p rc=0 names="mon.a osd.0"
  [ "$MGR" = 1 ] && names="$names mgr.x"
  for name in $names; do
    if p=$(pid_of $name); then
      echo "$name: running, pid $p, rss $(awk '/^VmRSS/{print $2, $3}' "/proc/$p/status")"
    else echo "$name: stopped"; rc=1; fi
  done
  if pid_of mon.a >/dev/null; then
    echo "health: $(CEPH health 2>&1 | head -n 1)"
    echo "osd: $(CEPH osd stat 2>&1 | head -n 1)"
    echo "rbd ls $POOL: $(RBD --id "$CLIENT" ls "$POOL" 2>&1 | tr '\n' ' ')"
  fi
  return $rc
}

do_smoke() {  # rbd import, snapshot, export as client.$CLIENT; export as the read-only key
  D=$(cd "$D" && pwd); load_settings
  local tmp; tmp=$(mktemp -d)
  head -c 8388608 /dev/urandom > "$tmp/data"
  local img=cephl-smoke-$$
  RBD --id "$CLIENT" import --no-progress "$tmp/data" "$POOL/$img"
  RBD --id "$CLIENT" snap create --no-progress "$POOL/$img@snap"
  RBD --id "$CLIENT" export --no-progress "$POOL/$img@snap" "$tmp/back"
  cmp -s "$tmp/data" "$tmp/back" && echo "rbd export: ok" || echo "rbd export: MISMATCH"
  RBD --id "$CLIENT-ro" export --no-progress "$POOL/$img@snap" "$tmp/back-ro"
  cmp -s "$tmp/data" "$tmp/back-ro" && echo "rbd export (read-only key): ok" || echo "rbd export (read-only key): MISMATCH"
  RBD --id "$CLIENT" snap rm --no-progress "$POOL/$img@snap" >/dev/null 2>&1
  RBD --id "$CLIENT" rm --no-progress "$POOL/$img" >/dev/null 2>&1 && echo "rbd rm: ok"
  rm -rf "$tmp"
}

# ---------------------------------------------------------------- single daemons (fault tests)
attach() {  # DIR of a started cluster: canonical path and settings
  [ -f "$D/.initialised" ] || die "$D holds no started cluster"
  D=$(cd "$D" && pwd); load_settings
}

do_restart_osd() {
  attach
  stop_one osd.0
  start_osd_and_wait
}

start_osd_and_wait() {
  if [ "$STORE" = memstore ] && [ ! -e "$D/run/osd.0.clean-stop" ]; then
    die "memstore data in $D is gone (osd.0 was not stopped cleanly)"
  fi
  rm -f "$D/run/osd.0.clean-stop"
  local t0; t0=$(date +%s%N)
  start_bg osd.0 ceph-osd -c "$D/ceph.conf" -i 0 -f
  wait_for "osd.0 up" osd.0 osd_up
  wait_for "client.$CLIENT I/O on pool $POOL" osd.0 client_io
  log "osd.0 serving I/O after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

do_kill_osd() {
  attach
  [ "$STORE" = bluestore ] || die "kill-osd: memstore loses its data when killed; create DIR with CEPHL_STORE=bluestore"
  local p; p=$(pid_of osd.0) || die "osd.0 is not running"
  kill -KILL "$p"; rm -f "$D/run/osd.0.pid" "$D/run/osd.0.clean-stop"
  log "osd.0 (pid $p) killed"
}

do_stop_mon() { attach; stop_one mon.a; }
do_stop_osd() { attach; stop_one osd.0; }

do_resume() {
  attach
  if ! pid_of mon.a >/dev/null; then
    start_bg mon.a ceph-mon -c "$D/ceph.conf" -i a -f
    wait_for "the mon" mon.a CEPH mon stat
  fi
  if ! pid_of osd.0 >/dev/null; then
    [ "$STORE" = bluestore ] && touch "$D/run/osd.0.clean-stop"  # bluestore survives a kill
    start_osd_and_wait
  else
    wait_for "client.$CLIENT I/O on pool $POOL" osd.0 client_io
  fi
}

cmd=${1:-}; D=${2:-}
case "$cmd" in
  install) do_install ;;
  start|stop|status|env|smoke|restart-osd|kill-osd|stop-mon|stop-osd|resume)
    [ -n "$D" ] || die "usage: $0 $cmd DIR"
    case "$cmd" in
      start) do_start ;;
      stop) do_stop ;;
      status) do_status ;;
      env) D=$(cd "$D" && pwd); load_settings; print_env ;;
      smoke) do_smoke ;;
      restart-osd) do_restart_osd ;;
      kill-osd) do_kill_osd ;;
      stop-mon) do_stop_mon ;;
      stop-osd) do_stop_osd ;;
      resume) do_resume ;;
    esac ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
