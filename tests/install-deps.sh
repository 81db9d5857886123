#!/usr/bin/env bash
# Installs the Debian packages imgfs's tests and demo need, when missing.
# Idempotent; needs root (or sudo) only if something is missing.
set -euo pipefail
PKGS=(qemu-utils cryptsetup-bin fuse3 python3-cryptography fdisk util-linux curl time e2fsprogs xfsprogs dosfstools btrfs-progs ntfs-3g lvm2 genisoimage
      nbdkit libnbd-bin openssl bc
      keystone glance-api barbican-api uwsgi-core uwsgi-plugin-python3
      ceph-mon ceph-osd ceph-common librbd-dev librados-dev uuid-runtime python3-rbd python3-rados)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
echo "install-deps: installing ${missing[*]}" >&2
# Debian's postinst scripts would start the OpenStack and Ceph services system-wide; forbid that.
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d; made_policy=1
fi
cleanup() { [ -n "$made_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d; true; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
for i in 1 2 3; do
  if $SUDO apt-get install -y -q --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >&2; then
    exit 0
  fi
  echo "install-deps: apt-get install failed, retry $i" >&2; sleep 5
done
exit 1
