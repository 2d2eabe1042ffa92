#!/bin/sh
# Install with pip only the Python packages the image's python3 cannot import yet.
# Arguments are MODULE=PIP_REQUIREMENT pairs, e.g. numpy=numpy zmq=pyzmq.
# On a python:3.11-slim base everything comes from pip; on the Debian base
# (schooner/base-debian) the distribution packages are already there and pip is
# only asked for what Debian lacks (lightgbm).
set -eu
missing=""
for pair in "$@"; do
    module="${pair%%=*}"
    requirement="${pair#*=}"
    if python3 -c "import $module" >/dev/null 2>&1; then
        echo "have $module"
    else
        missing="$missing $requirement"
    fi
done
if [ -z "$missing" ]; then
    exit 0
fi
echo "pip installing:$missing"
# Debian marks its python3 as externally managed (PEP 668); installing next to the
# distribution packages is what we want inside an image.
flags="--no-cache-dir --disable-pip-version-check"
if python3 -m pip install --help 2>/dev/null | grep -q -- --break-system-packages; then
    flags="$flags --break-system-packages"
fi
# A wheelhouse staged by bin/build_docker_images.sh (wheels downloaded on the host,
# whose network and certificates pip already trusts) is tried first, offline.
wheels="$(dirname "$0")/wheels"
if [ -d "$wheels" ] && [ -n "$(ls -A "$wheels" 2>/dev/null)" ]; then
    # shellcheck disable=SC2086
    if python3 -m pip install $flags --no-index --find-links "$wheels" $missing; then
        exit 0
    fi
    echo "the wheelhouse lacks some of:$missing; trying the package index"
    flags="$flags --find-links $wheels"
fi
# shellcheck disable=SC2086
python3 -m pip install $flags $missing
