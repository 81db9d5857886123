#!/usr/bin/env bash
# with-cloud.sh CMD...: runs CMD with a local OpenStack cloud (Keystone, Glance,
# Barbican on 127.0.0.1) started for the whole run and stopped afterwards.
# (The cloud harness lands with the remote-source work; until then it only runs CMD.)
set -euo pipefail
exec "$@"
