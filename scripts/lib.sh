# Shared helpers for the set-up scripts. Sourced, not executed.
set -euo pipefail

# Repository root, whatever the caller's working directory.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Downloads and the Python venv live outside the source tree so that a fresh
# clone on the same machine reuses them; override with DISTILSERVE_CACHE.
CACHE_DIR="${DISTILSERVE_CACHE:-$HOME/.cache/distilserve}"
DOWNLOADS="$CACHE_DIR/downloads"
VENV="${DISTILSERVE_VENV:-$CACHE_DIR/venv}"
mkdir -p "$DOWNLOADS"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# pip_download SPEC KIND: fetch one distribution (no deps) into the download cache
# once. KIND is "wheel" or "sdist". Prints the path of the file.
pip_download() {
  local spec="$1" kind="$2" name version pattern
  name="${spec%%==*}"; version="${spec##*==}"
  pattern="$(echo "$name" | tr '-' '_' | tr 'A-Z' 'a-z')"
  local found
  found="$(find "$DOWNLOADS" -maxdepth 1 -iname "${pattern}-${version}*" \( -name '*.whl' -o -name '*.tar.gz' \) | head -n1)"
  if [ -z "$found" ]; then
    log "downloading $spec ($kind) from PyPI"
    if [ "$kind" = wheel ]; then
      python3 -m pip download -q --no-deps --only-binary=:all: -d "$DOWNLOADS" "$spec" >&2
    else
      python3 -m pip download -q --no-deps --no-binary=:all: -d "$DOWNLOADS" "$spec" >&2
    fi
    found="$(find "$DOWNLOADS" -maxdepth 1 -iname "${pattern}-${version}*" \( -name '*.whl' -o -name '*.tar.gz' \) | head -n1)"
  fi
  [ -n "$found" ] || die "could not download $spec"
  echo "$found"
}

# Write a file atomically: content on stdin, renamed into place when complete.
atomic_write() { local dest="$1"; cat > "$dest.tmp.$$" && mv -f "$dest.tmp.$$" "$dest"; }

# ensure_venv DIR REQUIREMENTS WHAT: creates (once) a Python venv in DIR with the
# pinned REQUIREMENTS file installed; reinstalls only when that file changes.
ensure_venv() {
  local dir="$1" req="$2" what="$3" stamp want
  stamp="$dir/.requirements.sha256"
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ ! -x "$dir/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "creating $what in $dir"
    python3 -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip >&2
    "$dir/bin/python" -m pip install -q -r "$req" >&2
    echo "$want" > "$stamp"
  fi
}
