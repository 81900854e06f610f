#!/usr/bin/env bash
# Creates (once) the client libraries the tests drive the service with:
# tests/clients/requirements.txt (openai, langchain-openai, huggingface_hub,
# LlamaIndex's and Haystack's embedders) in $DISTILSERVE_CACHE/clients-venv, and
# tests/clients/package.json (the JavaScript openai SDK, with Node's npm) in
# $DISTILSERVE_CACHE/clients-node; each reinstalled only when its pins change.
# Prints the venv's python.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_venv "$CACHE_DIR/clients-venv" "$REPO_ROOT/tests/clients/requirements.txt" "the client libraries' venv"
node_dir="$CACHE_DIR/clients-node"
want="$(sha256sum "$REPO_ROOT/tests/clients/package.json" | cut -d' ' -f1)"
if [ "$(cat "$node_dir/.package.sha256" 2>/dev/null)" != "$want" ]; then
  command -v npm >/dev/null 2>&1 || die "npm missing (Debian: nodejs; scripts/install-test-deps.sh installs it)"
  log "installing the JavaScript client into $node_dir"
  mkdir -p "$node_dir"
  cp "$REPO_ROOT/tests/clients/package.json" "$node_dir/package.json"
  (cd "$node_dir" && npm install --silent --no-audit --no-fund >&2)
  echo "$want" > "$node_dir/.package.sha256"
fi
echo "$CACHE_DIR/clients-venv/bin/python"
