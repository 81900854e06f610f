#!/usr/bin/env bash
# Builds the CPU image (default tag distilserve:latest) from the Dockerfile with
# podman, else docker where its daemon answers; as root with apt, podman is
# installed where neither is (`make image`).
#   - Where the Dockerfile's registry bases (rust:1.95-bookworm,
#     debian:bookworm-slim) cannot be pulled, local ones are made from Debian's
#     packages (scripts/container-bases.sh) and passed as build arguments.
#     BASES=registry or BASES=local forces one; default: local when they exist
#     or the registry does not answer.
#   - The context reuses what `make setup` fetched (the build's set-up skips it).
#   - OCI labels: version from Cargo.toml, revision from git.
#
#   scripts/build-image.sh [TAG] [extra build flags...]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$REPO_ROOT/scripts/container-lib.sh"
tag="${1:-distilserve:latest}"; shift || true
install_container_engine || true
ENGINE="$(container_engine)" || die "no container engine: install podman (apt-get install podman buildah runc) or docker"
cd "$REPO_ROOT"

bases="${BASES:-auto}"
if [ "$bases" = auto ]; then
  rust_version="$(rustc --version 2>/dev/null | awk '{print $2}')"
  if "$ENGINE" image inspect "localhost/distilserve-build:rust-$rust_version" >/dev/null 2>&1; then
    bases=local
  elif timeout 60 "$ENGINE" pull -q docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
    bases=registry
  else
    log "registry images cannot be pulled here: making local bases from Debian packages"
    bases=local
  fi
fi
base_args=()
# shellcheck disable=SC2207 # the script prints flags separated by spaces
[ "$bases" = local ] && base_args=($("$REPO_ROOT/scripts/container-bases.sh"))

flags=(--build-arg "VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
       --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)"
       --build-arg "SOURCE=$(git config --get remote.origin.url 2>/dev/null || echo unknown)")
# podman's default OCI format drops HEALTHCHECK; the docker format keeps it.
[ "$(basename "$ENGINE")" = podman ] && flags+=(--format docker)
# A machine whose TLS is intercepted trusts extra CAs; hand the bundle to the build.
ca="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[ -f "$ca" ] && flags+=(--secret "id=ca,src=$ca")

start=$SECONDS
"$ENGINE" build "${base_args[@]}" "${flags[@]}" -t "$tag" "$@" .
size="$("$ENGINE" image inspect "$tag" --format '{{.Size}}')"
log "built $tag with $ENGINE in $((SECONDS - start)) s ($bases bases): $((size / 1000000)) MB"
