#!/usr/bin/env bash
# Creates (once) the venv of client libraries the tests drive the service with
# (tests/clients/requirements.txt: openai, langchain-openai, huggingface_hub,
# LlamaIndex's and Haystack's embedders), in $DISTILSERVE_CACHE/clients-venv;
# reinstalls only when the requirements change. Prints the venv's python.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_venv "$CACHE_DIR/clients-venv" "$REPO_ROOT/tests/clients/requirements.txt" "the client libraries' venv"
echo "$CACHE_DIR/clients-venv/bin/python"
