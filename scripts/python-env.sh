#!/usr/bin/env bash
# Creates (once) the Python venv used at set-up time for ONNX export and reference
# outputs. Lives outside the source tree ($DISTILSERVE_CACHE/venv); reinstalls
# only when scripts/requirements-export.txt changes. Prints the venv's python.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REQ="$REPO_ROOT/scripts/requirements-export.txt"
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "creating Python venv in $VENV (torch is large: a few minutes the first time)"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -r "$REQ" >&2
  echo "$want" > "$stamp"
fi
echo "$VENV/bin/python"
