#!/usr/bin/env bash
# The compose topology on loopback, without Docker: N distilserve replicas behind
# a real nginx (Debian package `nginx`) with deploy/nginx/proxy.conf.
#
#   deploy/local/topology.sh run [DIR]          start, wait for Ctrl-C, stop (try it by hand)
#   deploy/local/topology.sh up DIR             start in the background, state in DIR
#   deploy/local/topology.sh kill DIR I         SIGKILL replica I (1-based)
#   deploy/local/topology.sh start DIR I        start replica I again, wait until ready
#   deploy/local/topology.sh down DIR           stop everything
#   deploy/local/topology.sh nginx DIR          only nginx, in front of replicas
#                                               started otherwise (tests/container/)
#
# Environment: REPLICAS (3), NGINX_PORT (18080), BASE_PORT (18081: replica I on
# BASE_PORT+I-1), DISTILSERVE_BIN (target/release/distilserve), SERVE_FLAGS
# (extra `distilserve serve` flags, e.g. "--model-dir tests/fixtures/tiny-distilbert").
# tests/suite/topology.rs drives up/kill/start/down under load.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
REPLICAS="${REPLICAS:-3}"
NGINX_PORT="${NGINX_PORT:-18080}"
BASE_PORT="${BASE_PORT:-18081}"
BIN="${DISTILSERVE_BIN:-$REPO/target/release/distilserve}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

die() { echo "topology: $*" >&2; exit 1; }

wait_ready() {  # wait_ready PORT PID
  for _ in $(seq 600); do
    kill -0 "$2" 2>/dev/null || return 1
    "$BIN" healthcheck --port "$1" --timeout-ms 500 >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

start_replica() {  # start_replica DIR I
  local dir="$1" i="$2" port=$((BASE_PORT + $2 - 1))
  # shellcheck disable=SC2086 # SERVE_FLAGS is a list of flags
  (cd "$REPO" && exec "$BIN" serve --host 127.0.0.1 --port "$port" --log-format json $(cat "$dir/serve-flags") \
    >>"$dir/replica-$i.log" 2>&1) &
  echo $! >"$dir/replica-$i.pid"
  wait_ready "$port" "$(cat "$dir/replica-$i.pid")" || die "replica $i did not become ready; see $dir/replica-$i.log"
  echo "replica $i ready on 127.0.0.1:$port (pid $(cat "$dir/replica-$i.pid"))"
}

write_nginx_conf() {  # write_nginx_conf DIR
  local dir="$1"
  mkdir -p "$dir/nginx"
  {
    [ "$(id -u)" = 0 ] && echo "user root;"  # workers read DIR; as root nginx would switch to nobody
    cat <<EOF
worker_processes 1;
daemon on;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log $dir/nginx/access.log;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    include $REPO/deploy/nginx/limits.conf;
    upstream distilserve {
        zone distilserve 64k;
EOF
    for i in $(seq "$REPLICAS"); do
      echo "        server 127.0.0.1:$((BASE_PORT + i - 1)) max_fails=1 fail_timeout=2s;"
    done
    cat <<EOF
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        include $REPO/deploy/nginx/proxy.conf;
    }
}
EOF
  } >"$dir/nginx/nginx.conf"
}

up() {
  local dir="$1"
  [ -x "$BIN" ] || die "no binary at $BIN (cargo build --release, or set DISTILSERVE_BIN)"
  [ -x "$NGINX" ] || die "nginx is not installed (apt-get install nginx-light; scripts/install-test-deps.sh)"
  mkdir -p "$dir"
  echo "${SERVE_FLAGS:-}" >"$dir/serve-flags"
  for i in $(seq "$REPLICAS"); do start_replica "$dir" "$i"; done
  start_nginx "$dir"
}

down() {
  local dir="$1"
  [ -f "$dir/nginx/nginx.pid" ] && kill "$(cat "$dir/nginx/nginx.pid")" 2>/dev/null || true
  for pidfile in "$dir"/replica-*.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}

start_nginx() {  # start_nginx DIR
  local dir="$1"
  [ -x "$NGINX" ] || die "nginx is not installed (apt-get install nginx-light; scripts/install-test-deps.sh)"
  write_nginx_conf "$dir"
  "$NGINX" -t -q -p "$dir/nginx" -c "$dir/nginx/nginx.conf" || die "nginx rejected $dir/nginx/nginx.conf"
  "$NGINX" -p "$dir/nginx" -c "$dir/nginx/nginx.conf"
  echo "nginx on http://127.0.0.1:$NGINX_PORT -> $REPLICAS replicas"
}

cmd="${1:-}"
case "$cmd" in
  up) up "${2:?DIR}" ;;
  nginx) mkdir -p "${2:?DIR}"; start_nginx "$2" ;;
  down) down "${2:?DIR}" ;;
  kill) kill -9 "$(cat "${2:?DIR}/replica-${3:?I}.pid")"; echo "replica $3 killed" ;;
  start) start_replica "${2:?DIR}" "${3:?I}" ;;
  run)
    dir="${2:-$(mktemp -d)}"
    trap 'down "$dir"' EXIT INT TERM
    up "$dir"
    echo "logs in $dir; Ctrl-C to stop"
    while true; do sleep 3600; done
    ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
