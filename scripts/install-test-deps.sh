#!/usr/bin/env bash
# System packages the test suite drives for real: nginx (tests/suite/topology.rs,
# the load-balancer topology), Chromium and Node (tests/suite/playground.rs, the
# page at /, driven through tests/browser/cdp.mjs), and promtool
# (tests/suite/monitoring.rs checks deploy/prometheus/alerts.yaml with it): only
# that binary, taken from Debian's `prometheus` package into
# $DISTILSERVE_CACHE/bin, so that no Prometheus server is installed or started.
# Installs the missing ones with apt (Debian packages) when run as root;
# otherwise says what to install. Idempotent.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

promtool="$CACHE_DIR/bin/promtool"
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$promtool" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) \
      || { [ "$(id -u)" = 0 ] && apt-get update -qq >&2 && (cd "$tmp" && apt-get download prometheus >/dev/null); } \
      || die "cannot download Debian's prometheus package (for promtool)"
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    mkdir -p "$CACHE_DIR/bin"
    mv "$tmp/x/usr/bin/promtool" "$promtool.tmp" && mv "$promtool.tmp" "$promtool"
    rm -rf "$tmp"
    log "promtool installed in $promtool"
  else
    die "promtool missing: install Prometheus's promtool (Debian package prometheus)"
  fi
fi

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
# npm installs the JavaScript client tests/suite/clients.rs drives (scripts/clients-env.sh).
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
  log "test dependencies present: nginx, chromium, node, npm, promtool"
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
