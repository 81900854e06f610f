#!/usr/bin/env bash
# Startup time to ready and single-request /embed and /classify latency (median
# of 50) of the release binary on the default model, over loopback. Run on a quiet machine:
#   cargo build --release && bench/latency.sh [extra serve flags]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/distilserve
PORT="${PORT:-18181}"
N="${N:-50}"
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }

start=$(date +%s.%N)
"$BIN" serve --host 127.0.0.1 --port "$PORT" --log-format json "$@" 2>/tmp/distilserve-latency.log &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
  kill -0 $pid 2>/dev/null || { cat /tmp/distilserve-latency.log >&2; exit 1; }
  sleep 0.01
done
ready=$(date +%s.%N)
awk -v a="$start" -v b="$ready" 'BEGIN { printf "startup to ready: %.2f s\n", b - a }'

measure() {  # measure NAME PATH BODY
  local name="$1" path="$2" body="$3"
  # Warm-up (first calls allocate ONNX Runtime buffers).
  for _ in 1 2 3 4 5; do curl -sf "http://127.0.0.1:$PORT$path" -H 'content-type: application/json' -d "$body" >/dev/null; done
  for _ in $(seq "$N"); do
    curl -sf -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$PORT$path" -H 'content-type: application/json' -d "$body"
  done | sort -n | awk -v name="$name" '{a[NR]=$1} END {printf "%s, %d sequential requests: median %.1f ms, min %.1f ms, max %.1f ms\n", name, NR, a[int((NR+1)/2)]*1000, a[1]*1000, a[NR]*1000}'
}
measure "POST /embed (1 short sentence, pooling=mean)" /embed '{"inputs": "a gripping, funny film", "pooling": "mean"}'
if curl -sf "http://127.0.0.1:$PORT/heads" | grep -q '"name"'; then
  measure "POST /classify (1 short sentence, default head)" /classify '{"inputs": "a gripping, funny film"}'
fi
