#!/usr/bin/env bash
# Installs the ONNX Runtime shared library into vendor/onnxruntime/ from the PyPI
# wheel (ort's own download uses a CDN that is not reachable everywhere).
# Idempotent: does nothing when the library is already there and intact.
# ORT_PACKAGE=onnxruntime-gpu installs the CUDA build instead (with its CUDA
# provider libraries; the CUDA image of the Dockerfile uses it).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ORT_VERSION="${ORT_VERSION:-1.31.1}"
ORT_PACKAGE="${ORT_PACKAGE:-onnxruntime}"
DEST="$REPO_ROOT/vendor/onnxruntime"
LIB="$DEST/libonnxruntime.so.$ORT_VERSION"

if [ -f "$LIB" ] && [ "$(cat "$DEST/.complete" 2>/dev/null)" = "$ORT_PACKAGE==$ORT_VERSION" ]; then
  log "ONNX Runtime $ORT_VERSION ($ORT_PACKAGE) already in $DEST"
  exit 0
fi
wheel="$(pip_download "$ORT_PACKAGE==$ORT_VERSION" wheel)"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
python3 - "$wheel" "$tmp" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist()
               if m.startswith("onnxruntime/capi/libonnxruntime") and ".so" in m]
    if not members:
        sys.exit(f"no libonnxruntime*.so in {wheel}")
    for m in members:
        z.extract(m, out)
PY
rm -rf "$DEST"; mkdir -p "$DEST"
cp "$tmp"/onnxruntime/capi/libonnxruntime* "$DEST/"
# ort's load-dynamic looks for the unversioned name; keep the SONAME link too.
ln -sf "libonnxruntime.so.$ORT_VERSION" "$DEST/libonnxruntime.so"
ln -sf "libonnxruntime.so.$ORT_VERSION" "$DEST/libonnxruntime.so.1"
echo "$ORT_PACKAGE==$ORT_VERSION" > "$DEST/.complete"
log "ONNX Runtime $ORT_VERSION ($ORT_PACKAGE) installed in $DEST"
