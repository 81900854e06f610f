# Container helpers for scripts/build-image.sh, scripts/container-bases.sh and
# tests/container/. Sourced, not executed (after scripts/lib.sh).
#
# ENGINE: podman, else docker where its daemon answers (CONTAINER_ENGINE to
# choose). A docker client without a daemon (as on some of our machines) is no
# engine. With podman, CONTAINERS_CONF defaults to deploy/podman/containers.conf
# (runc, cgroupfs, no default ulimits: what podman needs on our CI machines).
docker_daemon() { command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1; }
container_engine() {
  local e="${CONTAINER_ENGINE:-}"
  if [ -z "$e" ]; then
    if command -v podman >/dev/null; then e=podman
    elif docker_daemon; then e=docker
    else return 1; fi
  fi
  if [ "$(basename "$e")" = podman ] && [ -z "${CONTAINERS_CONF:-}" ]; then
    export CONTAINERS_CONF="$REPO_ROOT/deploy/podman/containers.conf"
  fi
  echo "$e"
}

# Install podman, and debootstrap for the local bases, where the package
# manager allows it (Debian/Ubuntu as root); nothing when an engine works.
install_container_engine() {
  container_engine >/dev/null && return 0
  apt_install podman buildah runc debootstrap
  container_engine >/dev/null
}

# apt_install PACKAGE...: as root with apt-get, updating the lists if needed.
apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  log "installing $* (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; }
}
