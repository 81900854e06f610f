#!/usr/bin/env bash
# Checks a model directory against its manifest (sizes and sha256). Exit 0 when
# every listed file is present and intact.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
dir="${1:?usage: scripts/verify-model.sh MODEL_DIR}"
python3 - "$dir" <<'PY'
import hashlib, json, sys
from pathlib import Path
d = Path(sys.argv[1])
try:
    m = json.loads((d / "manifest.json").read_text())
except (OSError, ValueError) as e:
    sys.exit(f"{d}/manifest.json: {e}")
for name, meta in m["files"].items():
    p = d / name
    if not p.is_file() or p.stat().st_size != meta["bytes"]:
        sys.exit(f"{p}: missing or wrong size")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != meta["sha256"]:
        sys.exit(f"{p}: sha256 mismatch")
print(f"{d}: ok ({len(m['files'])} files)")
PY
