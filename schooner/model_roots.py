"""Model roots: the only directories model files (pickles, ``model.py``, weights) load from.

Model files are code: unpickling one runs whatever it says. So a path that
reaches a loader, through the management API or a replica's flags, must lie
inside one of the operator's model roots (``--model-root DIR``, repeatable;
default ``<state-dir>/models``). The check resolves symlinks and ``..`` first
(``os.path.realpath``), so neither can lead out of a root; a root itself is
resolved the same way. Shared by the management service (which answers 400)
and the replica (which refuses to load, in case something else started it).
"""

from __future__ import annotations

import os
from typing import Iterable

ENV = "SCHOONER_MODEL_ROOTS"
# A model path inside a replica image (``schooner build-image``), e.g. ``image:/model``: not on the host,
# so not checked against the roots; a replica takes it only inside such an image (IN_IMAGE_ENV set).
IMAGE_PREFIX = "image:"
IN_IMAGE_ENV = "SCHOONER_MODEL_IN_IMAGE"  # os.pathsep-joined roots, as the manager passes them to replicas
# Model options that name a file or directory: they are checked like model_data_path.
PATH_OPTION_SUFFIXES = ("_dir", "_path", "_file")


class UnsafeModelPath(ValueError):
    """A model path outside every model root (or through a symlink or ``..`` that leads out)."""


def default_root(state_dir: str) -> str:
    """``<state_dir>/models``."""
    return os.path.join(state_dir, "models")


def ensure_root(root: str) -> str:
    """Create ``root`` (mode 0700) if missing; return its resolved path."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    return os.path.realpath(root)


def parse(text: str) -> list[str]:
    """Roots from ``SCHOONER_MODEL_ROOTS`` text (os.pathsep-joined); empty entries dropped."""
    return [r for r in (text or "").split(os.pathsep) if r.strip()]


def from_env(environ: dict | None = None) -> list[str] | None:
    """The roots the environment names, or None when ``SCHOONER_MODEL_ROOTS`` is not set."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV)
    return None if raw is None else parse(raw)


def inside(path: str, roots: Iterable[str]) -> str:
    """``path`` resolved, if it lies in one of ``roots``; UnsafeModelPath otherwise.

    Relative paths are taken relative to the first root, so a client can name a
    model by the name it was uploaded under.
    """
    roots = [os.path.realpath(r) for r in roots]
    if not isinstance(path, str) or not path:
        raise UnsafeModelPath("model path must be a non-empty string")
    if "\0" in path:
        raise UnsafeModelPath("model path must not contain NUL")
    if not roots:
        raise UnsafeModelPath(f"model path {path!r} refused: no model roots are configured "
                              "(start the management service with --model-root DIR)")
    joined = path if os.path.isabs(path) else os.path.join(roots[0], path)
    real = os.path.realpath(joined)
    for root in roots:
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return real
    how = " (through a symlink or '..')" if os.path.abspath(joined) != real or ".." in path.split(os.sep) else ""
    raise UnsafeModelPath(f"model path {path!r} is outside the model roots {roots}{how}; "
                          "put the model under a model root or upload it")


def is_path_option(name: str) -> bool:
    """Whether a model option names a file or directory (``cache_dir``, ``weights_path``...)."""
    return isinstance(name, str) and name.endswith(PATH_OPTION_SUFFIXES)


def check_options(opts: dict, roots: Iterable[str]) -> dict:
    """``opts`` with every path option resolved inside ``roots``; UnsafeModelPath otherwise."""
    roots = list(roots)
    out = dict(opts)
    for name, value in opts.items():
        if is_path_option(name):
            if not isinstance(value, str):
                raise UnsafeModelPath(f"model option {name!r} must be a path string, got {value!r}")
            try:
                out[name] = inside(value, roots)
            except UnsafeModelPath as err:
                raise UnsafeModelPath(f"model option {name!r}: {err}") from err
    return out
