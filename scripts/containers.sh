#!/usr/bin/env bash
# Container images for the compose system test (tests/deploy/test_compose.py), built on this
# machine with podman: no Docker daemon and no image registry are reachable here, so every
# image starts from a Debian base made with debootstrap.
#
#   bash scripts/containers.sh setup    # podman, runc, debootstrap (podman-compose: dev extra)
#   bash scripts/containers.sh images   # setup, then build what is missing (and tideflow)
#   bash scripts/containers.sh clean    # remove the images built here
#
# The Debian base is kept between runs (its tag carries BASE_VERSION: change it to make it
# again); every other image is labelled with a hash of its build folder and rebuilt when that
# changes; the tideflow image is rebuilt every time, from layers cached by podman, so only a
# changed layer costs time. Everything is set up here: nothing by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_VERSION=1
PREFIX=localhost/tideflow-test
DEBIAN_IMAGE=$PREFIX/debian:bookworm-$BASE_VERSION
PYTHON_IMAGE=$PREFIX/python:latest
LOCAL=deploy/compose/rooms/local
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/containers.conf}
# pip inside a build reaches PyPI only through this machine's CA bundle (a TLS-inspecting
# proxy); the host's own pip configuration (local indexes, constraints) is not carried in.
# It is mounted beside, not over, the image's /etc/ssl/certs (which its packages write).
HOST_CERTS=/etc/ssl/certs
CERTS=/run/host-certs
PIP_CERT_FILE=$CERTS/ca-certificates.crt

log() { echo "containers: $*" >&2; }

setup() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
      log "cannot install ${missing[*]}: needs root and apt-get"
      return 1
    fi
    log "installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

exists() { podman image exists "$1"; }

# The hash of a build folder's files: an image labelled with another one is out of date.
source_hash() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }

current() {
  local tag=$1 hash=$2
  exists "$tag" && [ "$(podman image inspect --format '{{index .Labels "tideflow.source"}}' "$tag")" = "$hash" ]
}

# build TAG CONTEXT [FILE] [--build-arg ...]: a docker-format image (HEALTHCHECK kept), with
# the host's CA bundle mounted for pip.
build() {
  local tag=$1 context=$2 file=$3
  shift 3
  log "building $tag"
  podman build --quiet --format docker --layers \
    --volume "$HOST_CERTS:$CERTS:ro" --build-arg "PIP_CERT=$PIP_CERT_FILE" \
    -t "$tag" -f "$file" "$@" "$context" >/dev/null
}

debian_base() {
  exists "$DEBIAN_IMAGE" && return 0
  local root
  root=$(mktemp -d /var/tmp/tideflow-debootstrap.XXXXXX)
  # A RETURN trap outlives the function in bash: it clears itself so later returns (with
  # `root` out of scope under `set -u`) do not run it.
  trap 'rm -rf "${root:-}"; trap - RETURN' RETURN
  log "debootstrap bookworm (minbase) into $root"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
  # As in Debian's own images: services are not started at install time, no recommends.
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
  chmod +x "$root/usr/sbin/policy-rc.d"
  echo 'APT::Install-Recommends "false";' > "$root/etc/apt/apt.conf.d/90no-recommends"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
  tar -C "$root" -c . | podman import --quiet - "$DEBIAN_IMAGE" >/dev/null
}

images() {
  setup
  debian_base
  local name base hash
  for name in python postgres prometheus kafka s3; do
    case $name in python | postgres | prometheus) base=$DEBIAN_IMAGE ;; *) base=$PYTHON_IMAGE ;; esac
    hash=$(source_hash "$LOCAL/$name")-$BASE_VERSION
    current "$PREFIX/$name:latest" "$hash" || build "$PREFIX/$name:latest" \
      "$LOCAL/$name" "$LOCAL/$name/Containerfile" --build-arg "BASE=$base" \
      --label "tideflow.source=$hash"
  done
  # The project's own Dockerfile, on the Debian Python instead of python:slim.
  build "$PREFIX/tideflow:latest" . Dockerfile --build-arg "BASE_IMAGE=$PYTHON_IMAGE"
}

clean() {
  podman images --format "{{.Repository}}:{{.Tag}}" | grep "^$PREFIX/" | xargs -r podman rmi -f
  podman image prune -f >/dev/null
}

case ${1:-images} in
  setup) setup ;;
  images) images ;;
  clean) clean ;;
  *)
    echo "usage: $0 [setup|images|clean]" >&2
    exit 2
    ;;
esac
