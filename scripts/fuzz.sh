#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 20, as CI
# does); installs cargo-fuzz (crates.io) if missing.
# Prints each target's executions; a crash fails with its input in fuzz/artifacts/.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
seconds="${1:-20}"; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(npy_decode head_file request_json tokenize)
cd "$REPO_ROOT"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
# cargo-fuzz needs nightly rustc flags (-Z sanitizer): the nightly toolchain when
# installed, else the stable one with RUSTC_BOOTSTRAP=1 (checked to work with 1.95).
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz() { cargo +nightly fuzz "$@"; }
else
  log "no nightly toolchain: using stable rustc with RUSTC_BOOTSTRAP=1"
  fuzz() { RUSTC_BOOTSTRAP=1 cargo fuzz "$@"; }
fi
fuzz build >&2
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log="$(mktemp)"
  if ! fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- -max_total_time="$seconds" >"$log" 2>&1; then
    tail -40 "$log" >&2
    die "fuzz target $t crashed; the input is in fuzz/artifacts/$t/"
  fi
  echo "$t: $(grep -E '^Done [0-9]+ runs' "$log" | tail -1), $(grep -E 'DONE' "$log" | tail -1 | grep -oE 'cov: [0-9]+')"
  rm -f "$log"
done
