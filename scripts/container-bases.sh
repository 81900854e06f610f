#!/usr/bin/env bash
# Local base images for the Dockerfile, for machines that cannot pull registry
# images (ours: no registry, no rustup host; ../shared/PLATFORM.md "Containers").
# Debian's own packages only:
#   RUNTIME base  localhost/distilserve-base:bookworm-slim
#                 debootstrap --variant=minbase bookworm, then trimmed as
#                 debian:bookworm-slim is (no apt lists or .deb cache, docs,
#                 man pages or locales): ~80 MB.
#   BUILD base    localhost/distilserve-build:rust-<version>
#                 the same minbase plus gcc, libc6-dev and python3 (venv, pip)
#                 from apt, and this machine's Rust toolchain (rustc --print
#                 sysroot, docs left out) in /usr/local/rust, cargo home in
#                 /usr/local/cargo as in the official rust image.
# Each is made once and reused (delete the image to make it again). Prints the
# two --build-arg flags for the Dockerfile.
#
#   scripts/container-bases.sh            # make what is missing, print the flags
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$REPO_ROOT/scripts/container-lib.sh"
ENGINE="$(container_engine)" || die "no container engine (podman or docker)"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
rust_version="$(rustc --version | awk '{print $2}')"
RUNTIME_IMAGE="localhost/distilserve-base:$SUITE-slim"
BUILD_IMAGE="localhost/distilserve-build:rust-$rust_version"

exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
minbase() {  # a copy of one minbase root file system (debootstrap runs once) in $work/$1
  if [ ! -d "$work/minbase" ]; then
    command -v debootstrap >/dev/null || apt_install debootstrap || die "debootstrap is needed (apt-get install debootstrap)"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    local t=$SECONDS
    debootstrap --variant=minbase "$SUITE" "$work/minbase" "$MIRROR" >"$work/minbase.log" 2>&1 \
      || { tail -20 "$work/minbase.log" >&2; die "debootstrap failed"; }
    log "debootstrap $SUITE minbase in $((SECONDS - t)) s"
  fi
  cp -a "$work/minbase" "$work/$1"
}
slim() {  # what debian:*-slim leaves out
  rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/* \
    "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/* "$1"/usr/share/locale/* \
    "$1"/var/log/*.log "$1"/var/log/apt/* "$1"/tmp/* "$1"/var/tmp/*
}

if ! exists "$RUNTIME_IMAGE"; then
  minbase runtime
  slim "$work/runtime"
  tar -C "$work/runtime" -c . | "$ENGINE" import -q --change 'CMD ["/bin/bash"]' - "$RUNTIME_IMAGE" >/dev/null
  log "made $RUNTIME_IMAGE ($(du -sh --apparent-size "$work/runtime" | cut -f1))"
  rm -rf "$work/runtime"
fi

if ! exists "$BUILD_IMAGE"; then
  minbase build
  root="$work/build"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  chroot "$root" /bin/sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      gcc libc6-dev python3 python3-venv python3-pip ca-certificates' >"$work/apt.log" 2>&1 \
    || { tail -20 "$work/apt.log" >&2; die "apt-get in the build base failed"; }
  sysroot="$(rustc --print sysroot)"
  mkdir -p "$root/usr/local/rust" "$root/usr/local/cargo"
  for d in bin lib libexec etc; do
    [ -d "$sysroot/$d" ] && cp -a "$sysroot/$d" "$root/usr/local/rust/"
  done
  slim "$root"
  tar -C "$root" -c . | "$ENGINE" import -q \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'CMD ["/bin/bash"]' - "$BUILD_IMAGE" >/dev/null
  log "made $BUILD_IMAGE (rustc $rust_version from $sysroot)"
fi
echo "--build-arg RUNTIME_BASE=$RUNTIME_IMAGE --build-arg BUILD_BASE=$BUILD_IMAGE"
