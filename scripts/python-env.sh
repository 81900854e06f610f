#!/usr/bin/env bash
# Creates (once) the Python venv used at set-up time for ONNX export and reference
# outputs. Lives outside the source tree ($DISTILSERVE_CACHE/venv); reinstalls
# only when scripts/requirements-export.txt changes. Prints the venv's python.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_venv "$VENV" "$REPO_ROOT/scripts/requirements-export.txt" "the Python venv (torch is large: a few minutes the first time)"
echo "$VENV/bin/python"
