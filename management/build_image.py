"""``schooner build-image MODEL_DIR``: a replica image holding a model directory and its requirements.

The image is built on a Schooner runtime image (``schooner/replica-classic`` by
default, ``--base`` to choose), with the directory copied to ``/model``
(readable by the non-root user replicas run as) and its ``requirements.txt``
installed, tagged ``schooner/model-<name>:<version>``. Deploy it with the Docker
backend: ``add_model`` with ``image`` = that tag, ``launcher`` = ``model-dir``
(or a format loader) and ``model_data_path`` = ``image:/model``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile

DEFAULT_BASE = "schooner/replica-classic:latest"
MODEL_PATH = "/model"
_TAG_UNSAFE = re.compile(r"[^a-z0-9_.-]+")

DOCKERFILE = """\
FROM {base}
USER root
COPY model {path}
RUN if [ -f {path}/requirements.txt ]; then python3 -m pip install --no-cache-dir -r {path}/requirements.txt; fi \\
    && chmod -R a+rX {path}
ENV SCHOONER_MODEL_IN_IMAGE=1
LABEL schooner.model.name="{name}" schooner.model.version="{version}" schooner.model.path="image:{path}"
USER 65534:65534
"""


def image_tag(name: str, version: str) -> str:
    """``schooner/model-<name>:<version>``, Docker-safe."""
    return f"schooner/model-{_TAG_UNSAFE.sub('-', name.lower())}:{_TAG_UNSAFE.sub('-', str(version).lower())}"


def build(model_dir: str, name: str = "", version: str = "1", base: str = DEFAULT_BASE,
          docker: str = "docker") -> str:
    """Build the image of ``model_dir``; its tag. RuntimeError with the build's output when it fails."""
    if not os.path.isdir(model_dir):
        raise ValueError(f"{model_dir!r} is not a directory")
    name = name or os.path.basename(os.path.normpath(model_dir))
    tag = image_tag(name, version)
    context = tempfile.mkdtemp(prefix="schooner-model-image-")
    try:
        shutil.copytree(model_dir, os.path.join(context, "model"), symlinks=False)
        with open(os.path.join(context, "Dockerfile"), "w", encoding="utf-8") as fh:
            fh.write(DOCKERFILE.format(base=base, path=MODEL_PATH, name=name, version=version))
        env = dict(os.environ)
        if subprocess.run([docker, "buildx", "version"], capture_output=True).returncode != 0:
            env["DOCKER_BUILDKIT"] = "0"  # without buildx the CLI needs the classic builder asked for
        done = subprocess.run([docker, "build", "--network", "host", "-t", tag, context], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"docker build of {tag} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return tag


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``build-image`` to ``schooner``'s subparsers."""
    p = sub.add_parser("build-image", help="build a replica image of a model directory (for --backend docker)")
    p.add_argument("model_dir", help="directory with model.py (or a model file) and optionally requirements.txt")
    p.add_argument("--name", default="", help="model name for the tag (default: the directory's name)")
    p.add_argument("--version", default="1", help="model version for the tag (default 1)")
    p.add_argument("--base", default=DEFAULT_BASE, help=f"runtime image to build on (default {DEFAULT_BASE})")


def run(args: argparse.Namespace) -> int:
    """Build and print the tag; exit 1 with the reason when the build fails."""
    try:
        tag = build(args.model_dir, args.name, args.version, args.base)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"schooner build-image: {err}")
        return 1
    print(tag)
    return 0
