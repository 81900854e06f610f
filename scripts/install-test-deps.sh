#!/usr/bin/env bash
# System packages the test suite drives for real: nginx (tests/suite/topology.rs,
# the load-balancer topology), Chromium and Node (tests/suite/playground.rs, the
# page at /, driven through tests/browser/cdp.mjs).
# Installs the missing ones with apt (Debian packages) when run as root;
# otherwise says what to install. Idempotent.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
if [ ${#missing[@]} -eq 0 ]; then
  log "test dependencies present: nginx, chromium, node"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  die "missing ${missing[*]}: install them (Debian: sudo apt-get install ${missing[*]})"
fi
log "installing ${missing[*]} with apt"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2 || log "apt-get update failed; trying the package lists we have"
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
# The package may start a system nginx on port 80; the tests start their own.
if command -v service >/dev/null 2>&1; then service nginx stop >/dev/null 2>&1 || true; fi
log "installed ${missing[*]}"
