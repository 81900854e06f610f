#!/usr/bin/env bash
# A corpus of N Rotten Tomatoes sentences (default 5,000) through
# langchain-openai with its default chunks (1,000 texts a request), the openai
# SDK (2,048 a request) and our /embed (256 a request), one after the other,
# against the release binary on the default settings over loopback: no error,
# time and texts/s of each (tests/clients/test_clients.py --corpus N).
#   cargo build --release && bench/clients.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/distilserve
PORT="${PORT:-18182}"
N="${1:-5000}"
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
PY="$(scripts/clients-env.sh)"
"$BIN" serve --host 127.0.0.1 --port "$PORT" --log-format json 2>/tmp/distilserve-clients.log &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
  kill -0 $pid 2>/dev/null || { cat /tmp/distilserve-clients.log >&2; exit 1; }
  sleep 0.1
done
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
"$PY" tests/clients/test_clients.py --url "http://127.0.0.1:$PORT" --corpus "$N"
