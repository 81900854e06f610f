#!/usr/bin/env bash
# Infinity (michaelfeil/infinity, PyPI infinity-emb 0.0.78) serving the same
# ONNX graph as distilserve, for `cargo bench --bench throughput -- --peers infinity`.
#
#   bench/infinity_peer.sh MODEL_DIR HF_DIR PORT THREADS [int8]
#
# Installs it once into $DISTILSERVE_CACHE/infinity-venv, applies the one-line
# fix it needs with optimum 2.1 (it passes an absolute ONNX path, which optimum
# refuses; ../shared/PLATFORM.md), lays out a sentence-transformers folder with
# the fp32 model.onnx at its top (no quantised file, which it would prefer),
# and serves it on the CPU with batches of 32. With `int8`, the export's
# model.int8.onnx goes beside it as model_quantized.onnx: Infinity picks a file
# named *quantize* on the CPU, its best there.
set -euo pipefail
model_dir="$1" hf_dir="$2" port="$3" threads="$4" variant="${5:-fp32}"
cache="${DISTILSERVE_CACHE:-$HOME/.cache/distilserve}"
venv="$cache/infinity-venv"
if [ ! -x "$venv/bin/infinity_emb" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "infinity-emb[server,optimum]==0.0.78" >&2
fi
optimum_py="$("$venv/bin/python" -c 'import infinity_emb, os; print(os.path.join(os.path.dirname(infinity_emb.__file__), "transformer/embedder/optimum.py"))')"
if ! grep -q "file_name=onnx_file.name" "$optimum_py"; then
  sed -i 's/file_name=onnx_file\.as_posix()/file_name=onnx_file.name/; s/file_name=str(onnx_file)/file_name=onnx_file.name/' "$optimum_py"
  grep -q "file_name=onnx_file.name" "$optimum_py" || { echo "could not patch $optimum_py" >&2; exit 1; }
fi
folder="$(mktemp -d)/$(basename "$model_dir")"
mkdir -p "$folder"
cp -r "$hf_dir"/. "$folder"/
rm -f "$folder"/*.onnx
cp "$model_dir/model.onnx" "$folder/model.onnx"
if [ "$variant" = int8 ]; then
  cp "$model_dir/model.int8.onnx" "$folder/model_quantized.onnx"
fi
export OMP_NUM_THREADS="$threads"
exec "$venv/bin/infinity_emb" v2 --model-id "$folder" --served-model-name peer --engine optimum --device cpu \
  --batch-size 32 --port "$port" --host 127.0.0.1
