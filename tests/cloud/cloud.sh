#!/usr/bin/env bash
# cloud.sh — imgfs's test cloud: real Keystone 22 + Glance 25 + Barbican 15 (Debian 12
# packages) on 127.0.0.1 only: sqlite databases, Glance file store, no systemd. Everything a run
# writes (configs, databases, images, keys, logs, pid files) lives under DIR.
#
# Usage:
#   cloud.sh install        apt-get install the services (idempotent)
#   cloud.sh start DIR      install if needed, configure DIR (first time
#                                        only), start in background, wait until every
#                                        API answers an authenticated call, print env
#   cloud.sh stop DIR       stop what start DIR started (by PID; idempotent)
#   cloud.sh status DIR     PIDs and HTTP status of each API (rc 1 if down)
#   cloud.sh env DIR        print the env lines again
#   cloud.sh smoke DIR      quick upload/Range/secret round trip with curl
#   cloud.sh short-keystone DIR PORT SECONDS
#                           start a second Keystone for DIR on PORT whose tokens live
#                           SECONDS: same database and fernet keys, so the running
#                           Keystone (which Glance and Barbican ask) validates its
#                           tokens and rejects them once expired; prints its env
#                           (OSL_SHORT_KEYSTONE_URL, _PID)
#   cloud.sh stop-short-keystone DIR PORT   stop it (stop DIR stops it too)
#
#   eval "$(cloud.sh start /tmp/os1)"   # gophercloud / openstack CLI now work
#
# start on an existing, initialised DIR restarts the services on the same data.
# Written for clients: DIR/openrc-demo, DIR/openrc-admin, DIR/clouds.yaml (clouds
# loopback-demo, loopback-admin). Users: admin/adminpw (project admin, role admin),
# demo/demopw (project demo, role member). Region RegionOne, interface public.
#
# Environment knobs (read when DIR is first configured, then kept in DIR/osl.env):
#   OSL_AUTH=keystone|noauth   default keystone. noauth: no Keystone; Glance treats every
#                              request as admin with no project; Barbican requires an
#                              X-Project-Id header on /v1 requests (role defaults to admin)
#   OSL_KEYSTONE_PORT=15000  OSL_GLANCE_PORT=19292  OSL_BARBICAN_PORT=19311
#   OSL_DISK_FORMATS           extra Glance disk_formats; "luks" is always added to
#                              ami,ari,aki,vhd,vhdx,vmdk,raw,qcow2,vdi,iso,ploop
#   OSL_TOKEN_EXPIRATION=14400 Keystone token lifetime in seconds (short values let tests
#                              exercise token renewal)
#   OSL_GLANCE_CEPH=0|1        default 0. 1: Glance gets a second store, backend id 'ceph'
#                              (rbd, 8 MiB objects, snapshot 'snap'), beside the default
#                              'fs' file store, and show_image_direct_url = True. Upload
#                              there with the header 'X-Image-Meta-Store: ceph'; such an
#                              image's direct_url is rbd://FSID/POOL/IMAGE_ID/snap. Needs
#                              python3-rbd and a running cluster, e.g. from tests/cloud/
#                              ceph.sh (its env lines set CEPH_CONF, CEPHL_POOL, CEPHL_USER,
#                              which this reads: ceph.conf naming client.USER's keyring)
# Read at every start:
#   OSL_START_TIMEOUT=90       seconds to wait for each API
#   OSL_KEYSTONE_PROCESSES=1  OSL_BARBICAN_PROCESSES=1   uwsgi worker processes
# Logs: DIR/log/. Messages go to stderr; stdout carries only 'export' lines.
set -euo pipefail

HOST=127.0.0.1
PKGS=(keystone glance-api barbican-api uwsgi-core uwsgi-plugin-python3 curl)
PY=/usr/bin/python3
ADMIN_PW=adminpw DEMO_PW=demopw GLANCE_PW=glancepw BARBICAN_PW=barbicanpw

# uwsgi for Keystone and Barbican. http11-socket: HTTP/1.1 (plain http-socket closes
# after each response without saying so and keep-alive clients then get 'connection
# reset'). threads 1: keystone/barbican with sqlite and threads hit "SQLite objects
# created in a thread..." + "database is locked". "Connection: close": an http11-socket
# worker waits up to its socket timeout (4 s) for the next request on the connection it
# just answered, so with one worker a request on any other connection (Glance's and
# Barbican's token validations, a second client) waited up to 4 s; closing after each
# answer costs a loopback connect instead.
UW=(uwsgi --plugins python3 --master --lazy-apps --die-on-term --need-app
    --threads 1 --buffer-size 65535 --add-header "Connection: close")

log() { printf '[osl %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The services are Debian's /usr/bin/python3 programs: keep pyenv/venv settings away.
# OSL_DIR in a service's environment is how stop/status recognise our own PIDs.
clean_env() { env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV -u PYTHONSTARTUP \
  PATH=/usr/sbin:/usr/bin:/sbin:/bin OSL_DIR="${D:-}" "$@"; }

# ---------------------------------------------------------------- install
do_install() {
  local missing=() p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then log "packages already installed"; return 0; fi
  [ "$(id -u)" = 0 ] || die "need root to apt-get install: ${missing[*]}"
  log "installing: ${missing[*]}"
  # Debian postinsts would try to start the services on 0.0.0.0:5000/9292/9311 via
  # invoke-rc.d; a policy-rc.d that says 101 forbids that. Docker images ship one.
  local made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  if ! apt-cache policy keystone 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >&2 || rc=$?
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  [ $rc -eq 0 ] || die "apt-get install failed ($rc)"
}

# ---------------------------------------------------------------- helpers
http_code() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$@" 2>/dev/null || true; }  # later -m wins

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# start_bg NAME LOGFILE CMD...: run CMD in its own session; the PID written is the
# service's own PID (bash execs into it), whatever setsid does.
start_bg() {
  local name=$1 logf=$2; shift 2
  local pidf="$D/run/$name.pid"
  rm -f "$pidf"
  # shellcheck disable=SC2016  # expanded by the inner bash
  clean_env setsid /bin/bash -c 'echo $$ > "$0"; exec "$@"' "$pidf" "$@" </dev/null >>"$logf" 2>&1 &
  local i
  for i in $(seq 1 50); do [ -s "$pidf" ] && break; sleep 0.1; done
  [ -s "$pidf" ] || die "$name did not start (see $logf)"
  log "$name started, pid $(cat "$pidf")"
}

# pid_of NAME: PID from the pid file, only if that process is still ours
# (its environment holds OSL_DIR=DIR), so a recycled PID is never signalled.
pid_of() {
  local f="$D/run/$1.pid" p
  [ -s "$f" ] || return 1
  p=$(cat "$f")
  [ -r "/proc/$p/environ" ] || return 1
  tr '\0' '\n' < "/proc/$p/environ" | grep -qxF -- "OSL_DIR=$D" || return 1
  echo "$p"
}

stop_one() {
  local name=$1 p i
  p=$(pid_of "$name") || { rm -f "$D/run/$name.pid"; return 0; }
  kill -TERM "$p" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then log "$name (pid $p) ignored SIGTERM, SIGKILL"; kill -KILL "$p" 2>/dev/null || true; fi
  # workers left in the session we created (pgid == pid): end that group only
  if pgrep -g "$p" >/dev/null 2>&1; then
    kill -TERM -- "-$p" 2>/dev/null || true; sleep 0.5; kill -KILL -- "-$p" 2>/dev/null || true
  fi
  rm -f "$D/run/$name.pid"
  log "$name (pid $p) stopped"
}

wal() { clean_env $PY -c 'import sqlite3,sys;sqlite3.connect(sys.argv[1]).execute("PRAGMA journal_mode=WAL")' "$1"; }

# ---------------------------------------------------------------- configure
load_settings() {
  AUTH="" KPORT="" GPORT="" BPORT="" GCEPH="" CEPH_CONF_FILE="" CEPH_POOL="" CEPH_USER=""
  # shellcheck disable=SC1091
  if [ -f "$D/osl.env" ]; then . "$D/osl.env"; fi
  AUTH=${AUTH:-${OSL_AUTH:-keystone}}
  KPORT=${KPORT:-${OSL_KEYSTONE_PORT:-15000}}
  GPORT=${GPORT:-${OSL_GLANCE_PORT:-19292}}
  BPORT=${BPORT:-${OSL_BARBICAN_PORT:-19311}}
  case "$AUTH" in keystone|noauth) ;; *) die "OSL_AUTH must be keystone or noauth";; esac
  GCEPH=${GCEPH:-${OSL_GLANCE_CEPH:-0}}
  case "$GCEPH" in 0|1) ;; *) die "OSL_GLANCE_CEPH must be 0 or 1";; esac
  if [ "$GCEPH" = 1 ]; then
    CEPH_CONF_FILE=${CEPH_CONF_FILE:-${CEPH_CONF:-}}
    CEPH_POOL=${CEPH_POOL:-${CEPHL_POOL:-images}}
    CEPH_USER=${CEPH_USER:-${CEPHL_USER:-glance}}
    [ -n "$CEPH_CONF_FILE" ] && [ -r "$CEPH_CONF_FILE" ] || die "OSL_GLANCE_CEPH=1 needs a readable CEPH_CONF (eval the env lines of tests/cloud/ceph.sh start)"
  fi
  KURL=http://$HOST:$KPORT GURL=http://$HOST:$GPORT BURL=http://$HOST:$BPORT
}

write_configs() {
  mkdir -p "$D"/{log,run,keystone,glance/images,glance/staging,glance/tasks,glance/locks,barbican/.barbican}
  printf 'AUTH=%s\nKPORT=%s\nGPORT=%s\nBPORT=%s\n' "$AUTH" "$KPORT" "$GPORT" "$BPORT" > "$D/osl.env"
  local backends="fs:file" ceph_conf=""
  if [ "$GCEPH" = 1 ]; then
    printf 'GCEPH=1\nCEPH_CONF_FILE=%s\nCEPH_POOL=%s\nCEPH_USER=%s\n' "$CEPH_CONF_FILE" "$CEPH_POOL" "$CEPH_USER" >> "$D/osl.env"
    # rbd_store_chunk_size: MiB, the RBD object size of the images Glance creates (order 23)
    backends="fs:file, ceph:rbd" ceph_conf="show_image_direct_url = True
[ceph]
rbd_store_pool = $CEPH_POOL
rbd_store_user = $CEPH_USER
rbd_store_ceph_conf = $CEPH_CONF_FILE
rbd_store_chunk_size = 8
rbd_thin_provisioning = True"
  fi

  # --- keystone
  cat > "$D/keystone/keystone.conf" <<EOF
[DEFAULT]
log_file = $D/log/keystone.log
use_stderr = false
[database]
connection = sqlite:///$D/keystone/keystone.db
[token]
provider = fernet
expiration = ${OSL_TOKEN_EXPIRATION:-14400}
[fernet_tokens]
key_repository = $D/keystone/fernet-keys
[fernet_receipts]
# default is /etc/keystone/fernet-keys/, which Debian does not create: keystone then
# exits with "/etc/keystone/fernet-keys/ does not exist"
key_repository = $D/keystone/fernet-keys
[credential]
key_repository = $D/keystone/credential-keys
EOF

  # --- glance (eventlet server: HTTP/1.1 keep-alive, streams Range downloads)
  local flavor="" extra_fmt=""
  [ "$AUTH" = keystone ] && flavor=keystone
  local fmts=luks
  [ -n "${OSL_DISK_FORMATS:-}" ] && fmts="luks,${OSL_DISK_FORMATS// /,}"
  extra_fmt="[image_format]
disk_formats = ami,ari,aki,vhd,vhdx,vmdk,raw,qcow2,vdi,iso,ploop,$fmts"
  cat > "$D/glance/glance-api.conf" <<EOF
[DEFAULT]
bind_host = $HOST
bind_port = $GPORT
workers = 0
log_file = $D/log/glance-api.log
use_stderr = false
enabled_backends = $backends
$ceph_conf
[database]
connection = sqlite:///$D/glance/glance.db
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $D/glance/images
[os_glance_staging_store]
filesystem_store_datadir = $D/glance/staging
[os_glance_tasks_store]
filesystem_store_datadir = $D/glance/tasks
[paste_deploy]
flavor = $flavor
config_file = $D/glance/glance-api-paste.ini
[keystone_authtoken]
www_authenticate_uri = $KURL
auth_url = $KURL
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = glance
password = $GLANCE_PW
region_name = RegionOne
[oslo_concurrency]
lock_path = $D/glance/locks
$extra_fmt
EOF
  sed -e "s#^disable_by_file_path = .*#disable_by_file_path = $D/glance/healthcheck_disable#" \
    /etc/glance/glance-api-paste.ini > "$D/glance/glance-api-paste.ini"

  # --- barbican (config is found as \$HOME/.barbican/barbican.conf; HOME=$D/barbican)
  local kek new_defaults=True
  [ "$AUTH" = noauth ] && new_defaults=False
  kek=$(clean_env $PY -c 'import os,base64;print(base64.urlsafe_b64encode(os.urandom(32)).decode())')
  cat > "$D/barbican/.barbican/barbican.conf" <<EOF
[DEFAULT]
host_href = $BURL
sql_connection = sqlite:///$D/barbican/barbican.db
db_auto_create = False
log_file = $D/log/barbican-api.log
use_stderr = false
[keystone_authtoken]
www_authenticate_uri = $KURL
auth_url = $KURL
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = barbican
password = $BARBICAN_PW
region_name = RegionOne
[simple_crypto_plugin]
kek = $kek
[oslo_policy]
# keystone: new (member-role) policies as in current Barbican (the legacy ones need a
# 'creator' role). noauth: legacy ones, since the unauthenticated context's default
# role is just 'admin' (new defaults would want X-Roles: member on every request).
enforce_new_defaults = $new_defaults
[queue]
enable = False
EOF
  local v1=barbican-api-keystone
  [ "$AUTH" = noauth ] && v1=barbican_api
  sed -e "s#^/v1: .*#/v1: $v1#" \
      -e "s#^disable_by_file_path = .*#disable_by_file_path = $D/barbican/healthcheck_disable#" \
      /etc/barbican/barbican-api-paste.ini > "$D/barbican/barbican-api-paste.ini"
}

fernet_key_dir() {  # what keystone-manage fernet_setup writes, without a 3 s Python start
  mkdir -p "$1"; chmod 700 "$1"
  local i
  for i in 0 1; do
    clean_env $PY -c 'import os,base64;print(base64.urlsafe_b64encode(os.urandom(32)).decode(),end="")' > "$1/$i"
    chmod 600 "$1/$i"
  done
}

init_databases() {
  log "initialising databases in $D"
  local pids=() rc=0
  (
    clean_env glance-manage --config-file "$D/glance/glance-api.conf" db_sync >"$D/log/glance-manage.log" 2>&1 \
      && wal "$D/glance/glance.db"
  ) & pids+=($!)
  (
    clean_env HOME="$D/barbican" barbican-manage db upgrade >"$D/log/barbican-manage.log" 2>&1 \
      && wal "$D/barbican/barbican.db"
  ) & pids+=($!)
  if [ "$AUTH" = keystone ]; then
    (
      K="clean_env keystone-manage --config-file $D/keystone/keystone.conf"
      fernet_key_dir "$D/keystone/fernet-keys"
      fernet_key_dir "$D/keystone/credential-keys"
      $K db_sync >"$D/log/keystone-manage.log" 2>&1 &&
      wal "$D/keystone/keystone.db" &&
      $K bootstrap --bootstrap-password "$ADMIN_PW" --bootstrap-username admin \
        --bootstrap-project-name admin --bootstrap-role-name admin \
        --bootstrap-service-name keystone --bootstrap-region-id RegionOne \
        --bootstrap-admin-url "$KURL/v3" --bootstrap-public-url "$KURL/v3" \
        --bootstrap-internal-url "$KURL/v3" >>"$D/log/keystone-manage.log" 2>&1
    ) & pids+=($!)
  fi
  local p
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  [ $rc -eq 0 ] || die "database initialisation failed; see $D/log/*-manage.log"
}

keystone_resources() {  # service users, demo project/user, catalog entries
  log "creating keystone users, projects and catalog"
  clean_env $PY - "$KURL/v3" "$ADMIN_PW" "$GURL" "$BURL" "$GLANCE_PW" "$BARBICAN_PW" "$DEMO_PW" \
    >"$D/run/ids" 2>>"$D/log/keystone-setup.log" <<'EOF'
import sys
from keystoneauth1.identity import v3
from keystoneauth1 import session
from keystoneclient.v3 import client
url, admin_pw, gurl, burl, gpw, bpw, dpw = sys.argv[1:]
auth = v3.Password(auth_url=url, username='admin', password=admin_pw, project_name='admin',
                   user_domain_id='default', project_domain_id='default')
sess = session.Session(auth=auth)
ks = client.Client(session=sess)
roles = {r.name: r for r in ks.roles.list()}
def project(name):
    p = ks.projects.list(name=name, domain='default')
    return p[0] if p else ks.projects.create(name, 'default')
def user(name, pw, proj, role):
    u = ks.users.list(name=name, domain='default')
    u = u[0] if u else ks.users.create(name, domain='default', password=pw, default_project=proj)
    ks.roles.grant(roles[role], user=u, project=proj)
    return u
service, demo = project('service'), project('demo')
user('glance', gpw, service, 'admin'); user('barbican', bpw, service, 'admin')
demo_user = user('demo', dpw, demo, 'member')
for name, typ, u in (('glance', 'image', gurl), ('barbican', 'key-manager', burl)):
    s = ks.services.list(type=typ)
    s = s[0] if s else ks.services.create(name, type=typ)
    have = {e.interface for e in ks.endpoints.list(service=s)}
    for itf in ('public', 'internal', 'admin'):
        if itf not in have:
            ks.endpoints.create(s, u, interface=itf, region='RegionOne')
print('DEMO_PROJECT_ID=%s' % demo.id)
print('ADMIN_PROJECT_ID=%s' % sess.get_project_id())
EOF
}

write_client_files() {
  [ "$AUTH" = keystone ] || return 0
  local who pw proj
  for who in demo admin; do
    pw=$DEMO_PW; proj=demo; [ $who = admin ] && { pw=$ADMIN_PW; proj="admin"; }
    cat > "$D/openrc-$who" <<EOF
export OS_AUTH_URL=$KURL/v3
export OS_AUTH_TYPE=password
export OS_IDENTITY_API_VERSION=3
export OS_USERNAME=$who
export OS_PASSWORD=$pw
export OS_PROJECT_NAME=$proj
export OS_USER_DOMAIN_NAME=Default
export OS_PROJECT_DOMAIN_NAME=Default
export OS_DOMAIN_NAME=Default
export OS_REGION_NAME=RegionOne
export OS_INTERFACE=public
EOF
  done
  cat > "$D/clouds.yaml" <<EOF
clouds:
  loopback-demo:
    auth:
      auth_url: $KURL/v3
      username: demo
      password: $DEMO_PW
      project_name: demo
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
  loopback-admin:
    auth:
      auth_url: $KURL/v3
      username: admin
      password: $ADMIN_PW
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
EOF
}

print_env() {
  echo "export OSL_DIR=$D"
  echo "export OSL_AUTH=$AUTH"
  echo "export OSL_GLANCE_URL=$GURL"
  echo "export OSL_BARBICAN_URL=$BURL"
  [ "$GCEPH" = 1 ] && echo "export OSL_GLANCE_CEPH_STORE=ceph"
  if [ "$AUTH" = keystone ]; then
    # OS_DOMAIN_NAME: gophercloud's AuthOptionsFromEnv ignores OS_USER_DOMAIN_NAME and
    # OS_PROJECT_DOMAIN_NAME; the openstack CLI accepts all three together.
    cat "$D/openrc-demo"
    echo "export OS_CLIENT_CONFIG_FILE=$D/clouds.yaml"
    echo "export OSL_KEYSTONE_URL=$KURL/v3"
    echo "export OSL_PROJECT_ID=$(sed -n 's/^DEMO_PROJECT_ID=//p' "$D/run/ids")"
    echo "export OSL_ADMIN_OPENRC=$D/openrc-admin"
  else
    # Glance (noauth) treats every request as admin with no project (owner null);
    # Barbican (noauth) takes the project from X-Project-Id, which it requires.
    echo "export OSL_PROJECT_ID=00000000000000000000000000000001"
  fi
}

wait_http() {  # wait_http NAME URL CODE...
  local name=$1 url=$2; shift 2
  local deadline=$(( $(date +%s) + ${OSL_START_TIMEOUT:-90} )) c
  while :; do
    c=$(http_code "$url")
    for want in "$@"; do [ "$c" = "$want" ] && return 0; done
    pid_of "$name" >/dev/null || die "$name exited during start-up; tail of its logs:
$(tail -n 30 "$D"/log/"$name"*.log 2>/dev/null)"
    [ "$(date +%s)" -lt $deadline ] || die "$name: $url still answers '$c' after ${OSL_START_TIMEOUT:-90}s"
    sleep 0.2
  done
}

get_token() {  # get_token USER PASSWORD PROJECT -> token on stdout
  curl -s -m 20 -D - -o /dev/null -X POST "$KURL/v3/auth/tokens" -H 'Content-Type: application/json' \
    -d "{\"auth\":{\"identity\":{\"methods\":[\"password\"],\"password\":{\"user\":{\"name\":\"$1\",\"domain\":{\"id\":\"default\"},\"password\":\"$2\"}}},\"scope\":{\"project\":{\"name\":\"$3\",\"domain\":{\"id\":\"default\"}}}}}" \
    | awk -F': ' 'tolower($1)=="x-subject-token"{print $2}' | tr -d '\r'
}

# ---------------------------------------------------------------- start / stop
do_start() {
  local t0; t0=$(date +%s%N)
  do_install
  mkdir -p "$D"; D=$(cd "$D" && pwd)
  load_settings
  local name
  for name in keystone glance barbican; do
    if pid_of $name >/dev/null; then die "$name already running for $D (stop it first)"; fi
  done
  local ports="$GPORT $BPORT"; [ "$AUTH" = keystone ] && ports="$KPORT $ports"
  for p in $ports; do port_free "$p" || die "port $HOST:$p is already in use"; done

  # on any failure from here on, stop whatever this start started
  trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed, stopping what was started"; do_stop; fi' EXIT
  local fresh=""
  if [ ! -f "$D/.initialised" ]; then
    fresh=1
    write_configs
    init_databases
  fi

  if [ "$AUTH" = keystone ]; then
    start_bg keystone "$D/log/keystone-uwsgi.log" env OS_KEYSTONE_CONFIG_FILES="$D/keystone/keystone.conf" \
      "${UW[@]}" --http11-socket "$HOST:$KPORT" --processes "${OSL_KEYSTONE_PROCESSES:-1}" --wsgi-file /usr/bin/keystone-wsgi-public
  fi
  if [ "$GCEPH" = 1 ]; then
    clean_env $PY -c 'import rados, rbd' 2>/dev/null || die "OSL_GLANCE_CEPH=1 needs python3-rbd and python3-rados"
  fi
  # Glance and Barbican need Keystone only per request, so they boot meanwhile
  start_bg glance "$D/log/glance-api.stdout.log" glance-api --config-file "$D/glance/glance-api.conf"
  start_bg barbican "$D/log/barbican-uwsgi.log" env HOME="$D/barbican" \
    "${UW[@]}" --http11-socket "$HOST:$BPORT" --processes "${OSL_BARBICAN_PROCESSES:-1}" --paste "config:$D/barbican/barbican-api-paste.ini"
  if [ "$AUTH" = keystone ]; then
    wait_http keystone "$KURL/v3" 200
    if [ -n "$fresh" ]; then keystone_resources || die "keystone setup failed, see $D/log/keystone-setup.log"; fi
  fi
  wait_http glance "$GURL/healthcheck" 200
  wait_http barbican "$BURL/healthcheck" 200

  # end-to-end readiness: a real (authenticated) call to each API; the first one is slow
  # (token validation, policy loading), so retry with a generous per-request timeout
  local hg=() hb=(-H "X-Project-Id: 00000000000000000000000000000001") c1="" c2=""
  if [ "$AUTH" = keystone ]; then
    write_client_files
    local tok
    tok=$(get_token demo "$DEMO_PW" demo)
    [ -n "$tok" ] || die "could not get a token for demo"
    hg=(-H "X-Auth-Token: $tok"); hb=("${hg[@]}")
  fi
  local deadline=$(( $(date +%s) + ${OSL_START_TIMEOUT:-90} ))
  while :; do
    [ "$c1" = 200 ] || c1=$(http_code -m 30 "${hg[@]}" "$GURL/v2/images")
    [ "$c2" = 200 ] || c2=$(http_code -m 30 "${hb[@]}" "$BURL/v1/secrets")
    [ "$c1" = 200 ] && [ "$c2" = 200 ] && break
    [ "$(date +%s)" -lt $deadline ] || die "readiness check failed: glance $c1, barbican $c2"
    sleep 0.5
  done
  touch "$D/.initialised"
  trap - EXIT
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  log "all APIs up ($AUTH) in $((ms / 1000)).$(( (ms % 1000) / 100 ))s"
  print_env
}

do_stop() {
  [ -d "$D" ] || { log "$D does not exist"; return 0; }
  D=$(cd "$D" && pwd)
  local name f
  for f in "$D"/run/keystone-short-*.pid; do
    [ -e "$f" ] || continue
    name=${f##*/}; stop_one "${name%.pid}"
  done
  for name in barbican glance keystone; do stop_one $name; done
}

# A second Keystone on the same data with a short token lifetime, for token
# renewal tests; the shared cloud keeps its long one. Fernet tokens carry their
# expiry and are not stored, so any Keystone with the same keys validates them.
do_short_keystone() {
  local port=$1 secs=$2
  D=$(cd "$D" && pwd); load_settings
  [ "$AUTH" = keystone ] || die "short-keystone: $D runs without Keystone (OSL_AUTH=$AUTH)"
  [ -f "$D/.initialised" ] || die "short-keystone: $D is not a started cloud"
  pid_of keystone >/dev/null || die "short-keystone: the Keystone of $D is not running (cloud.sh start DIR)"
  if ! [[ $port =~ ^[0-9]{1,5}$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    die "short-keystone: bad port '$port'"
  fi
  if ! [[ $secs =~ ^[0-9]{1,9}$ ]] || [ "$secs" -lt 1 ]; then
    die "short-keystone: lifetime '$secs' is not a whole number of seconds >= 1"
  fi
  local name=keystone-short-$port
  if pid_of "$name" >/dev/null; then die "$name already running for $D"; fi
  port_free "$port" || die "port $HOST:$port is already in use"
  local conf="$D/$name/keystone.conf"
  mkdir -p "$D/$name"
  sed -e "s#^log_file = .*#log_file = $D/log/$name.log#" -e "s#^expiration = .*#expiration = $secs#" \
    "$D/keystone/keystone.conf" > "$conf"
  grep -qx "expiration = $secs" "$conf" || die "short-keystone: no [token] expiration line in $D/keystone/keystone.conf"
  start_bg "$name" "$D/log/$name-uwsgi.log" env OS_KEYSTONE_CONFIG_FILES="$conf" \
    "${UW[@]}" --http11-socket "$HOST:$port" --processes 1 --wsgi-file /usr/bin/keystone-wsgi-public
  if ! (wait_http "$name" "http://$HOST:$port/v3" 200); then
    stop_one "$name"; die "$name did not come up (see $D/log/$name*.log)"
  fi
  log "$name up: tokens live ${secs}s"
  echo "export OSL_SHORT_KEYSTONE_URL=http://$HOST:$port/v3"
  echo "export OSL_SHORT_KEYSTONE_PID=$(pid_of "$name")"
}

do_status() {
  D=$(cd "$D" && pwd); load_settings
  local name p rc=0 names="glance barbican"
  [ "$AUTH" = keystone ] && names="keystone $names"
  for name in $names; do
    if p=$(pid_of "$name"); then echo "$name: running, pid $p"; else echo "$name: stopped"; rc=1; fi
  done
  [ "$AUTH" = keystone ] && echo "keystone GET /v3 -> $(http_code "$KURL/v3")"
  echo "glance GET /healthcheck -> $(http_code "$GURL/healthcheck")"
  echo "barbican GET /healthcheck -> $(http_code "$BURL/healthcheck")"
  return $rc
}

do_smoke() {  # quick round trip; prints status codes
  D=$(cd "$D" && pwd); load_settings
  local H=() HB=()
  if [ "$AUTH" = keystone ]; then
    local tok; tok=$(get_token demo "$DEMO_PW" demo); H=(-H "X-Auth-Token: $tok"); HB=("${H[@]}")
  else
    HB=(-H "X-Project-Id: 00000000000000000000000000000001")
  fi
  local tmp; tmp=$(mktemp -d)
  head -c 1048576 /dev/urandom > "$tmp/data"
  local id
  id=$(curl -s "${H[@]}" -X POST "$GURL/v2/images" -H 'Content-Type: application/json' \
      -d '{"name":"osl-smoke","disk_format":"raw","container_format":"bare","os_encrypt_format":"LUKSv1"}' \
      | $PY -c 'import json,sys;print(json.load(sys.stdin)["id"])')
  echo "glance upload: $(http_code "${H[@]}" -X PUT "$GURL/v2/images/$id/file" -H 'Content-Type: application/octet-stream' --data-binary @"$tmp/data")"
  curl -s "${H[@]}" -H 'Range: bytes=4096-8191' -o "$tmp/part" -w 'glance range: %{http_code}\n' "$GURL/v2/images/$id/file"
  cmp -s "$tmp/part" <(tail -c +4097 "$tmp/data" | head -c 4096) && echo "range bytes: ok" || echo "range bytes: MISMATCH"
  echo "glance delete: $(http_code "${H[@]}" -X DELETE "$GURL/v2/images/$id")"
  local ref
  ref=$(curl -s "${HB[@]}" -X POST "$BURL/v1/secrets" -H 'Content-Type: application/json' \
      -d '{"secret_type":"passphrase","payload":"osl-smoke","payload_content_type":"text/plain"}' \
      | $PY -c 'import json,sys;print(json.load(sys.stdin)["secret_ref"])')
  echo "barbican payload: $(curl -s "${HB[@]}" -H 'Accept: text/plain' "$ref/payload")"
  echo "barbican delete: $(http_code "${HB[@]}" -X DELETE "$ref")"
  rm -rf "$tmp"
}

cmd=${1:-}; D=${2:-}
case "$cmd" in
  install) do_install ;;
  start|stop|status|env|smoke)
    [ -n "$D" ] || die "usage: $0 $cmd DIR"
    case "$cmd" in
      start) do_start ;;
      stop) do_stop ;;
      status) do_status ;;
      env) D=$(cd "$D" && pwd); load_settings; print_env ;;
      smoke) do_smoke ;;
    esac ;;
  short-keystone)
    [ $# -eq 4 ] || die "usage: $0 short-keystone DIR PORT SECONDS"
    do_short_keystone "$3" "$4" ;;
  stop-short-keystone)
    [ $# -eq 3 ] || die "usage: $0 stop-short-keystone DIR PORT"
    [[ $3 =~ ^[0-9]+$ ]] || die "stop-short-keystone: bad port '$3'"
    D=$(cd "$D" && pwd); stop_one "keystone-short-$3" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
