#!/usr/bin/env bash
# Every route of a running distilserve, with curl and readable output.
#   make run            # in another terminal (or any deployment)
#   demo/curl.sh [BASE_URL]        default http://localhost:8080
# With an API key: DISTILSERVE_API_KEY=... demo/curl.sh
set -euo pipefail
BASE="${1:-http://localhost:8080}"
AUTH=()
[ -n "${DISTILSERVE_API_KEY:-}" ] && AUTH=(-H "authorization: Bearer $DISTILSERVE_API_KEY")
if command -v jq >/dev/null; then pretty() { jq "${1:-.}"; }; else pretty() { python3 -m json.tool; }; fi

step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "$2"; }
get() { curl -sS "${AUTH[@]}" "$BASE$1"; }
post() { curl -sS "${AUTH[@]}" -H 'content-type: application/json' "$BASE$1" -d "$2"; }

step "liveness and readiness" "curl $BASE/health/live; curl $BASE/health/ready"
get /health/live; echo; get /health/ready; echo

step "what is served" "curl $BASE/info"
get /info | pretty

step "classification heads" "curl $BASE/heads"
get /heads | pretty '.heads[] | {name, kind, labels, pooling, test_accuracy}'

step "classify" "curl $BASE/classify -d '{\"inputs\": [...]}'"
post /classify '{"inputs": ["a gripping, funny film", "a dull, lifeless plot"]}' | pretty

step "embed, mean pooled and normalised (first 5 of each vector)" "curl $BASE/embed -d '{\"inputs\": [...], \"pooling\": \"mean\", \"normalize\": true}'"
post /embed '{"inputs": ["a gripping, funny film", "dull"], "pooling": "mean", "normalize": true}' \
  | pretty '{model, pooling, dimensions, token_counts, first_values: [.embeddings[] | .[0:5]]}' 2>/dev/null \
  || post /embed '{"inputs": ["dull"], "pooling": "mean"}' | head -c 300

step "embed, one vector per token, as a NumPy array" "curl $BASE/embed -H 'accept: application/x-npy' -d '{..., \"pooling\": \"none\"}' -o hidden.npy"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
curl -sS "${AUTH[@]}" -D "$tmp/headers" -o "$tmp/hidden.npy" -H 'content-type: application/json' \
  -H 'accept: application/x-npy' "$BASE/embed" -d '{"inputs": ["a gripping, funny film"], "pooling": "none"}'
grep -i -E '^(content-type|x-token-counts|x-inference-time-ms)' "$tmp/headers"
PY_NUMPY="${DISTILSERVE_PYTHON:-$HOME/.cache/distilserve/venv/bin/python}"
[ -x "$PY_NUMPY" ] || PY_NUMPY=python3
"$PY_NUMPY" - "$tmp/hidden.npy" <<'PY' 2>/dev/null || echo "(python3 with numpy reads it: numpy.load('hidden.npy'))"
import sys, numpy
a = numpy.load(sys.argv[1]); print("numpy.load:", a.dtype, a.shape)
PY

step "tokenize" "curl $BASE/tokenize -d '{\"inputs\": \"a gripping, funny film\"}'"
post /tokenize '{"inputs": "a gripping, funny film"}' | pretty '.tokens[0] | map(.text) | join(" ")' 2>/dev/null || true

step "OpenAI-compatible embeddings" "curl $BASE/v1/embeddings -d '{\"input\": \"...\"}'"
post /v1/embeddings '{"input": "a gripping, funny film", "model": "all-minilm-l6-v2"}' \
  | pretty '{object, model, usage, dims: (.data[0].embedding | length)}' 2>/dev/null || true

step "a bad request gets a JSON error" "curl $BASE/classify -d '{\"inputs\": '"
curl -sS "${AUTH[@]}" -w '  (HTTP %{http_code})\n' -H 'content-type: application/json' "$BASE/classify" -d '{"inputs": '

step "metrics (a few lines)" "curl $BASE/metrics"
get /metrics | grep -E '^distilserve_(http_requests_total|batches_total|sequences_total|tokens_total|padded_tokens_total|queue_depth)' | head -14

step "the API contract" "curl $BASE/openapi.json"
get /openapi.json | pretty '{title: .info.title, version: .info.version, paths: (.paths | keys)}' 2>/dev/null || true

printf '\nPlayground: %s/   API docs: %s/docs\n' "$BASE" "$BASE"
