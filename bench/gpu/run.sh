#!/usr/bin/env bash
# The CUDA execution provider measured on a GPU machine (the `device` tool's
# H200; see BENCHMARKS.md "On a GPU"), against the same machine's CPU in the
# same run. Runs there, from the repository root, with in .gpu/ (ignored, carried):
#   ortgpu.tar.xz.part-*   libonnxruntime.so.1.31.1 + its CUDA provider, from
#                          the onnxruntime-gpu==1.31.1 wheel (CUDA 13), in parts
#                          (earlier calls may have moved parts to $PARTS already)
#   distilserve-cuda.xz    `cargo build --release --features cuda`, stripped
#   models/NAME/           bench/gpu/skeleton.py strip output (no weights)
#   sentences.json         sentences from data/rotten_tomatoes
# Prints one JSON line per (model, provider, load) and copies them to $OUT.
# INT8=1 adds the export's int8 graph (made there from the filled graph) as
# model.file on the CPU and on CUDA; VARIANTS=0 leaves out the CUDA variants
# (reduced precision, basic optimisation).
set -euo pipefail
PARTS=${PARTS:-/root/ortgpu}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$PARTS" "$OUT" /root/ort
mv .gpu/ortgpu.tar.xz.part-* "$PARTS"/ 2>/dev/null || true
nvidia-smi -L || echo "nvidia-smi: none"
cat "$PARTS"/ortgpu.tar.xz.part-* | python3 -c "import lzma,sys; sys.stdout.buffer.write(lzma.decompress(sys.stdin.buffer.read()))" | tar x -C /root/ort
python3 -c "import lzma,sys; sys.stdout.buffer.write(lzma.decompress(open('.gpu/distilserve-cuda.xz','rb').read()))" > /root/distilserve
chmod +x /root/distilserve
# The CUDA 13 libraries the provider links (cuBLAS, cudart, cuRAND) come with
# the machine's PyTorch wheels.
libdirs=$(python3 - <<'PY'
import pathlib, site
want = ["libcublasLt.so.13", "libcublas.so.13", "libcudart.so.13", "libcurand.so.10", "libcudnn.so.9", "libcufft.so.12"]
roots = [pathlib.Path(p) / "nvidia" for p in site.getsitepackages()] + [pathlib.Path("/usr/local/cuda/lib64")]
dirs = []
for name in want:
    hit = next((p for r in roots if r.exists() for p in r.rglob(name)), None)
    print(f"{name}: {hit}", file=__import__("sys").stderr)
    if hit and str(hit.parent) not in dirs:
        dirs.append(str(hit.parent))
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="$libdirs:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
ORT=/root/ort/libonnxruntime.so.1.31.1
for m in ${MODELS:-distilbert-base-shaped all-minilm-l6-v2 all-mpnet-base-v2}; do
    python3 bench/gpu/skeleton.py fill ".gpu/models/$m" ${INT8:+--int8}
    run() { python3 bench/gpu/load.py /root/distilserve ".gpu/models/$m" "$@" $ORT .gpu/sentences.json \
                --parity "/tmp/parity-$m.json" | tee -a "$OUT/gpu.jsonl"; }
    run cpu
    run cuda
    if [ "${VARIANTS:-1}" = 1 ]; then
      VARIANT=reduced-precision DISTILSERVE_MODEL__CUDA_REDUCED_PRECISION=true run cuda
      VARIANT=optimization-basic DISTILSERVE_MODEL__OPTIMIZATION_LEVEL=basic LOADS=32x1 run cuda
    fi
    if [ -n "${INT8:-}" ]; then
      # Their max_abs_diff_vs_cpu is against the fp32 graph on the CPU: int8's own error, not parity.
      VARIANT=int8-graph DISTILSERVE_MODEL__FILE=model.int8.onnx run cpu
      VARIANT=int8-graph DISTILSERVE_MODEL__FILE=model.int8.onnx run cuda
    fi
    rm -f ".gpu/models/$m/model.onnx" ".gpu/models/$m/model.int8.onnx"
done
