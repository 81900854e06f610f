#!/usr/bin/env bash
# Lays out everything the service needs at run time in DEST, as the container
# image's /app (the Dockerfile copies DEST into its runtime stage; tests/suite/deploy.rs
# runs the service from a DEST made by this script, so CI checks the layout):
#   DEST/distilserve, DEST/libonnxruntime.so*   (the library beside the binary)
#   DEST/config/, DEST/vendor/swagger-ui/, DEST/data/rotten_tomatoes/
#   DEST/models/all-minilm-l6-v2/, DEST/models/heads/   (unless --without-model)
# Only the graphs config/default.toml serves are copied (model.file, and the
# heads' graph classify.model_file: "auto" is model.int8.onnx where the export
# wrote one), and the binary's debug line tables are stripped (99 -> 19 MB;
# backtraces keep names).
#
#   scripts/stage-runtime.sh DEST [--without-model] [--bin PATH] [--keep-debug]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
dest="${1:?usage: scripts/stage-runtime.sh DEST [--without-model] [--bin PATH]}"; shift
with_model=1
strip_debug=1
bin="$REPO_ROOT/target/release/distilserve"
while [ $# -gt 0 ]; do
  case "$1" in
    --without-model) with_model=0 ;;
    --bin) bin="$2"; shift ;;
    --keep-debug) strip_debug=0 ;;
    *) die "unknown option $1" ;;
  esac
  shift
done
[ -x "$bin" ] || die "no binary at $bin (cargo build --release)"
[ -f "$REPO_ROOT/vendor/onnxruntime/.complete" ] || die "ONNX Runtime not installed (scripts/setup.sh)"

mkdir -p "$dest/config" "$dest/vendor" "$dest/data" "$dest/models/heads" "$dest/features"
cp "$bin" "$dest/distilserve"
if [ "$strip_debug" = 1 ] && command -v strip >/dev/null; then strip --strip-debug "$dest/distilserve"; fi
cp -P "$REPO_ROOT"/vendor/onnxruntime/libonnxruntime* "$dest/"
cp "$REPO_ROOT/config/default.toml" "$dest/config/"
cp -r "$REPO_ROOT/vendor/swagger-ui" "$dest/vendor/"
cp -r "$REPO_ROOT/data/rotten_tomatoes" "$dest/data/"
if [ "$with_model" = 1 ]; then
  model="$REPO_ROOT/models/all-minilm-l6-v2"
  "$REPO_ROOT/scripts/verify-model.sh" "$model" >/dev/null || die "default model missing or damaged (scripts/setup.sh)"
  mkdir -p "$dest/models/all-minilm-l6-v2"
  # The graphs the configuration serves: model.file for /embed, and the heads'
  # own (classify.model_file), so that the image answers /classify as `make run`
  # does; the others (model.opt.onnx) are left out: mount a models folder to serve them.
  config="$REPO_ROOT/config/default.toml"
  graph="$(sed -n '/^\[model\]/,/^\[/s/^file *= *"\(.*\)"/\1/p' "$config" | head -n1)"
  heads_graph="$(sed -n '/^\[classify\]/,/^\[/s/^model_file *= *"\(.*\)"/\1/p' "$config" | head -n1)"
  if [ "$heads_graph" = auto ]; then
    heads_graph=""
    [ -f "$model/model.int8.onnx" ] && heads_graph=model.int8.onnx
  fi
  for f in manifest.json config.json tokenizer.json "${graph:-model.onnx}" $heads_graph; do
    cp "$model/$f" "$dest/models/all-minilm-l6-v2/"
  done
  if ls "$REPO_ROOT"/models/heads/*.json >/dev/null 2>&1; then
    cp "$REPO_ROOT"/models/heads/*.json "$dest/models/heads/"
  else
    log "no trained heads in models/heads: the service will train them at startup"
  fi
fi
log "runtime layout staged in $dest ($(du -sh "$dest" | cut -f1))"
