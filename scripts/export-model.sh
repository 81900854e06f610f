#!/usr/bin/env bash
# Exports any Hugging Face encoder (local directory, or hub id where a hub is
# reachable) to ONNX for distilserve, e.g.
#   scripts/export-model.sh distilbert-base-uncased models/distilbert-base-uncased
# Extra arguments go to scripts/export_model.py (--task, --no-int8, --name, ...).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -ge 2 ] || die "usage: scripts/export-model.sh SOURCE OUT_DIR [export_model.py options]"
py="$("$REPO_ROOT/scripts/python-env.sh")"
log "exporting $1 to $2"
"$py" "$REPO_ROOT/scripts/export_model.py" "$@"
