"""Checks of a model version at the edge: its launcher resolves, its files lie in the model roots.

``add_model`` runs these before anything is written, so a launcher that names
nothing or a path outside the model roots is a 400 naming what was tried,
not a replica that crash-loops with the reason in its log.
"""

from __future__ import annotations

import dataclasses
import re

from containers.errors import UnknownModel
from containers.models import BUILTINS, find_plugin
from management.errors import BadRequest
from schooner import model_roots
from schooner.types import ModelSpec

# Clipper's model containers, by image name (without registry, tag and "-container"), and the
# Schooner runtime that serves what their deployers save.
_CLIPPER_IMAGES = {"noop": "noop", "python-closure": "python-closure", "python36-closure": "python-closure",
                   "python35-closure": "python-closure", "sklearn": "sklearn", "onnx": "onnx"}


def launcher_for_image(image: str) -> str:
    """The runtime a Clipper or Schooner image name stands for ("" if none): ``clipper/noop-container:0.4``."""
    if not image:
        return ""
    base = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    base = re.sub(r"[-_]container$", "", base)
    if base in BUILTINS:
        return base
    return _CLIPPER_IMAGES.get(base, "")


def resolve(model: ModelSpec, roots: list[str], launcher_given: bool) -> ModelSpec:
    """``model`` with its launcher chosen and its paths resolved; BadRequest naming what is wrong."""
    launcher = model.launcher
    if not launcher_given:
        launcher = launcher_for_image(model.image) or model.name
    changes: dict = {"launcher": launcher}
    in_image = model.model_data_path.startswith(model_roots.IMAGE_PREFIX)
    if in_image and not model.image:
        raise BadRequest(f"model_data_path {model.model_data_path!r} names a path inside an image: "
                         "give the image (built by `schooner build-image`)")
    try:
        if model.model_data_path and not in_image:
            changes["model_data_path"] = model_roots.inside(model.model_data_path, roots)
        changes["model_opts"] = model_roots.check_options(model.model_opts, roots)
    except model_roots.UnsafeModelPath as err:
        raise BadRequest(str(err)) from err
    if in_image and launcher == "model-dir":
        return dataclasses.replace(model, **changes)  # its model.py is in the image, not here
    try:
        find_plugin(launcher, changes.get("model_data_path", ""))
    except UnknownModel as err:
        hint = ""
        if not launcher_given:
            hint = (f" (no launcher was given, so it was taken from the image {model.image!r})" if model.image
                    else " (no launcher was given, so the model name was tried)")
        raise BadRequest(f"{err}{hint}") from err
    return dataclasses.replace(model, **changes)
