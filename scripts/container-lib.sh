# Container helpers for scripts/build-image.sh, scripts/container-bases.sh and
# tests/container/. Sourced, not executed (after scripts/lib.sh).
#
# ENGINE: docker or podman, whichever is present (CONTAINER_ENGINE to choose).
# With podman, CONTAINERS_CONF defaults to deploy/podman/containers.conf (runc,
# cgroupfs, no default ulimits: what podman needs on our CI machines).
container_engine() {
  local e="${CONTAINER_ENGINE:-}"
  if [ -z "$e" ]; then
    if command -v podman >/dev/null; then e=podman
    elif command -v docker >/dev/null; then e=docker
    else return 1; fi
  fi
  if [ "$(basename "$e")" = podman ] && [ -z "${CONTAINERS_CONF:-}" ]; then
    export CONTAINERS_CONF="$REPO_ROOT/deploy/podman/containers.conf"
  fi
  echo "$e"
}

# Install podman where the package manager allows it (Debian/Ubuntu as root).
install_container_engine() {
  command -v podman >/dev/null || command -v docker >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing podman, buildah, runc and debootstrap (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah runc debootstrap >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah runc debootstrap >&2; }
  fi
  command -v podman >/dev/null || command -v docker >/dev/null
}
