#!/usr/bin/env bash
# Every route of a running distilserve, with curl and readable output.
#   make run            # in another terminal (or any deployment)
#   demo/curl.sh [BASE_URL]        default http://localhost:8080
# With an API key: DISTILSERVE_SECURITY__API_KEY=... demo/curl.sh (the variables the service reads)
# With the admin key (DISTILSERVE_SECURITY__ADMIN_KEY=..., the value the service was
# started with) it also trains a head from a CSV, watches it, classifies with
# it and deletes it.
set -euo pipefail
BASE="${1:-http://localhost:8080}"
AUTH=()
[ -n "${DISTILSERVE_SECURITY__API_KEY:-}" ] && AUTH=(-H "authorization: Bearer $DISTILSERVE_SECURITY__API_KEY")
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

step "why: each token's part of the answer" "curl $BASE/classify -d '{\"inputs\": \"...\", \"explain\": true}'"
post /classify '{"inputs": "a gripping, funny film", "explain": true}' \
  | pretty '.predictions[0] | {label: .label, exact: .explanation.exact, tokens: [.explanation.tokens[] | "\(.text) \(.parts | map_values(. * 100 | round / 100) | tostring)"]}' 2>/dev/null || true

if [ -n "${DISTILSERVE_SECURITY__ADMIN_KEY:-}" ]; then
  ADMIN=(-H "authorization: Bearer $DISTILSERVE_SECURITY__ADMIN_KEY")
  csv="$(mktemp)"
  # 300 labelled sentences: the first 150 of each label of the validation split.
  python3 - "$csv" <<'PY'
import csv, json, sys
rows = [json.loads(l) for l in open("data/rotten_tomatoes/validation.jsonl")]
names = json.load(open("data/rotten_tomatoes/meta.json"))["labels"]
picked = [r for r in rows if r["label"] == 0][:150] + [r for r in rows if r["label"] == 1][:150]
with open(sys.argv[1], "w", newline="") as f:
    w = csv.writer(f); w.writerow(["text", "label"])
    for r in picked: w.writerow([r["text"], names[r["label"]]])
PY
  step "bring your own labels: a head from a CSV (admin key)" "curl -X POST '$BASE/heads?name=demo&replace=true' -H 'content-type: text/csv' --data-binary @labels.csv"
  curl -sS "${AUTH[@]}" "${ADMIN[@]}" -H 'content-type: text/csv' -X POST "$BASE/heads?name=demo&replace=true" --data-binary @"$csv" \
    | pretty '{name, location, state: .job.state, examples: .job.examples}'
  rm -f "$csv"
  step "watch it train" "curl $BASE/heads/demo"
  for _ in $(seq 120); do
    detail="$(get /heads/demo)"
    state="$(printf '%s' "$detail" | python3 -c 'import json,sys; d=json.load(sys.stdin); j=d.get("job") or {}; print(j.get("state") or d.get("status"), j.get("phase") or "", j.get("done", ""), j.get("total", ""))')"
    echo "  $state"
    case "$state" in ready*|failed*) break ;; esac
    sleep 1
  done
  printf '%s' "$detail" | pretty '{status, version, pooling, held_out: {accuracy: .metrics.test.accuracy, macro_f1: .metrics.test.macro_f1}}'
  step "classify with it" "curl $BASE/classify -d '{\"inputs\": [...], \"head\": \"demo\"}'"
  post /classify '{"inputs": ["a gripping, funny film"], "head": "demo"}' | pretty '{head, head_version, prediction: .predictions[0].label}'
  step "delete it" "curl -X DELETE $BASE/heads/demo"
  curl -sS "${AUTH[@]}" "${ADMIN[@]}" -X DELETE -w 'HTTP %{http_code}\n' "$BASE/heads/demo"
fi

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
