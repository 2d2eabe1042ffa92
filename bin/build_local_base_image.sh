#!/usr/bin/env bash
# Build schooner/base-debian, a minimal Debian bookworm root file system with the
# Python packages a replica needs, from the Debian mirror (no registry pull needed).
# Idempotent: does nothing when the image already exists (pass --force to rebuild).
set -euo pipefail

#
# --minimal builds schooner/base-debian-min instead: python3, numpy, pyzmq and
# msgpack only (no scikit-learn/scipy), the base of the numpy-only replica image
# and of the control-plane image (bin/build_docker_images.sh --control).
IMAGE="${SCHOONER_BASE_IMAGE:-schooner/base-debian}"
SUITE="${SCHOONER_DEBIAN_SUITE:-bookworm}"
MIRROR="${SCHOONER_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-numpy,python3-zmq,python3-cffi-backend,python3-msgpack,python3-sklearn,python3-pip,ca-certificates"
FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --minimal) IMAGE="${SCHOONER_MIN_BASE_IMAGE:-schooner/base-debian-min}"
                   PACKAGES="python3,python3-numpy,python3-zmq,python3-cffi-backend,python3-msgpack,python3-pip,ca-certificates" ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if [[ $FORCE -eq 0 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE already exists; skipping (use --force to rebuild)"
    exit 0
fi

for tool in debootstrap docker; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool not found" >&2; exit 1; }
done

ROOTFS="$(mktemp -d /tmp/schooner-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT

start=$(date +%s)
echo "debootstrap $SUITE into $ROOTFS"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR"

# Slim the image: apt caches, docs and man pages are not needed at run time.
# C/C++ headers come in only as build dependencies of scipy's pythran; nothing
# compiles inside a replica.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* \
       "$ROOTFS"/usr/include/boost "$ROOTFS"/usr/include/xsimd

tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PYTHONUNBUFFERED=1' \
    --change 'CMD ["python3"]' \
    - "$IMAGE"
echo "built $IMAGE in $(( $(date +%s) - start ))s"
