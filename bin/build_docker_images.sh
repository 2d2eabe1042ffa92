#!/usr/bin/env bash
# Build Schooner's replica images:
#   schooner/replica          (Dockerfile.base:    numpy-only models: noop, sleep)
#   schooner/replica-classic  (Dockerfile.classic: + scikit-learn, lightgbm)
#   schooner/replica-torch    (Dockerfile.torch:   + torch, torchvision; only with --torch)
#   schooner/control          (Dockerfile.control: frontend, management service, Redis; with --control)
# Each is tagged :latest and :<version> (schooner.__version__).
#
# Usage: bin/build_docker_images.sh [--base IMAGE] [--min-base IMAGE] [--torch] [--control]
#                                   [--no-classic] [--no-lightgbm] [--no-cache]
#   --base IMAGE      base image (default $SCHOONER_BASE_IMAGE or python:3.11-slim); with no
#                     registry, build schooner/base-debian first (bin/build_local_base_image.sh)
#                     and pass --base schooner/base-debian
#   --min-base IMAGE  base of the control image (default schooner/base-debian-min when it
#                     exists: bin/build_local_base_image.sh --minimal; else --base)
#   --slim-replica    build the numpy-only replica image on the --min-base too (198 MB
#                     instead of 709 MB on schooner/base-debian)
# The build context is a staged copy of only what a replica needs (the shared core
# package schooner/ and the containers package), so builds are small and the
# engine's layer cache makes an unchanged rebuild take seconds. Builds use the host
# network so pip can reach PyPI where a layer needs it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${SCHOONER_BASE_IMAGE:-python:3.11-slim}"
MIN_BASE=""
SLIM=0
TORCH=0
CONTROL=0
CLASSIC=1
LIGHTGBM=1
CACHE=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --base) BASE="$2"; shift 2 ;;
        --base=*) BASE="${1#*=}"; shift ;;
        --min-base) MIN_BASE="$2"; shift 2 ;;
        --torch) TORCH=1; shift ;;
        --control) CONTROL=1; shift ;;
        --slim-replica) SLIM=1; shift ;;
        --no-classic) CLASSIC=0; shift ;;
        --no-lightgbm) LIGHTGBM=0; shift ;;
        --no-cache) CACHE=(--no-cache); shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

# Without the buildx plugin the CLI needs the classic builder asked for explicitly.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

CONTEXT="$(mktemp -d /tmp/schooner-docker-context.XXXXXX)"
trap 'rm -rf "$CONTEXT"' EXIT
VERSION="$(cd "$REPO" && python3 -c 'import schooner; print(schooner.__version__)')"
if [[ -z "$MIN_BASE" ]]; then
    MIN_BASE="$BASE"
    docker image inspect schooner/base-debian-min >/dev/null 2>&1 && MIN_BASE=schooner/base-debian-min
fi
parts=(schooner containers)
[[ $CONTROL -eq 1 ]] && parts+=(frontend management)
tar -C "$REPO" --exclude='__pycache__' --exclude='*.pyc' -c "${parts[@]}" | tar -C "$CONTEXT" -x
# Fixed mtimes keep the layer cache valid across checkouts of the same content.
find "$CONTEXT" -exec touch -h -d '2000-01-01 00:00:00' {} +

build() {  # build NAME DOCKERFILE BASE [docker build args]: tagged NAME:latest and NAME:$VERSION
    local name="$1" dockerfile="$2" base="$3"; shift 3
    local start; start=$(date +%s)
    echo "building $name:$VERSION from $dockerfile on $base"
    docker build --force-rm "${CACHE[@]}" --network=host --build-arg "BASE_IMAGE=$base" \
        --build-arg "VERSION=$VERSION" "$@" \
        -f "$REPO/containers/docker/$dockerfile" -t "$name:latest" -t "$name:$VERSION" "$CONTEXT"
    echo "built $name:$VERSION in $(( $(date +%s) - start ))s ($(docker image inspect -f '{{.Size}}' "$name:$VERSION" | awk '{printf "%.0f MB", $1/1e6}'))"
}

# Download wheels on the host, whose pip already has network access and trusted
# certificates (a TLS-intercepting proxy's CA is not in the image); the image's pip
# installs from this wheelhouse first. Pinned to the host's version when it has one.
stage_wheels() {
    local wheels="$CONTEXT/containers/docker/wheels" dist version
    mkdir -p "$wheels"
    if [[ "$1" == "-r" ]]; then  # a pinned requirements file, with every dependency
        python3 -m pip download -q --only-binary=:all: -d "$wheels" -r "$2"
        return
    fi
    for dist in "$@"; do
        version="$(python3 -c "import importlib.metadata as m; print(m.version('$dist'))" 2>/dev/null || true)"
        python3 -m pip download -q --no-deps --only-binary=:all: -d "$wheels" "$dist${version:+==$version}" \
            || echo "warning: could not download $dist on the host; the image build will ask the index" >&2
    done
}

if [[ $SLIM -eq 1 ]]; then build schooner/replica Dockerfile.base "$MIN_BASE"; else build schooner/replica Dockerfile.base "$BASE"; fi
if [[ $CLASSIC -eq 1 ]]; then
    [[ $LIGHTGBM -eq 1 ]] && stage_wheels lightgbm narwhals  # lightgbm and its one dependency Debian lacks
    build schooner/replica-classic Dockerfile.classic "$BASE" --build-arg "WITH_LIGHTGBM=$LIGHTGBM"
fi
if [[ $TORCH -eq 1 ]]; then
    build schooner/replica-torch Dockerfile.torch "$BASE"
fi
if [[ $CONTROL -eq 1 ]]; then
    stage_wheels -r "$REPO/containers/docker/control-requirements.txt"
    build schooner/control Dockerfile.control "$MIN_BASE"
fi
