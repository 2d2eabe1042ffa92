"""Model plugins: how a ``launcher`` names the code that loads a model.

A launcher is, tried in this order:

1. a built-in plugin: a zoo model (``vgg``, ``noop``...) or a format loader
   (``sklearn``, ``lightgbm``, ``torchscript``, ``onnx``, ``python-closure``);
2. ``model-dir``: the model path is a directory holding ``model.py`` with a
   ``load(model_path, num_threads, gpu, **opts)`` factory (and its artifacts);
3. an import path ``package.module:factory``;
4. the name of an entry point in the group ``schooner.models`` of an installed
   package (``[project.entry-points."schooner.models"] mymodel = "pkg.mod:load"``).

Every factory has the zoo loaders' signature and returns a
:class:`~containers.models.base.Model`. :func:`find` says which kind a launcher
is without importing anything (the management service checks launchers with
it); :func:`loader` imports the plugin (in the replica).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

from containers.errors import ModelLoadError, UnknownModel

ENTRY_POINT_GROUP = "schooner.models"
MODEL_DIR = "model-dir"
MODEL_DIR_FILE = "model.py"
_IMPORT_PATH_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")

Loader = Callable[..., Any]


@dataclass(frozen=True)
class Plugin:
    """What a launcher resolved to: its kind and target (a built-in name, a path, module:attr)."""

    kind: str  # "builtin" | "model-dir" | "import-path" | "entry-point"
    launcher: str
    target: str


def entry_points() -> dict[str, str]:
    """name -> ``module:attr`` of every installed ``schooner.models`` entry point."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def find(launcher: str, builtins: dict[str, Loader], model_path: str = "") -> Plugin:
    """The plugin ``launcher`` names (nothing imported); UnknownModel naming what was tried."""
    if not isinstance(launcher, str) or not launcher:
        raise UnknownModel("launcher must be a non-empty string")
    if launcher in builtins:
        return Plugin("builtin", launcher, launcher)
    if launcher == MODEL_DIR:
        if not model_path:
            raise UnknownModel(f"launcher {MODEL_DIR!r} needs model_data_path: a directory holding "
                               f"{MODEL_DIR_FILE}")
        if not os.path.isfile(os.path.join(model_path, MODEL_DIR_FILE)):
            raise UnknownModel(f"launcher {MODEL_DIR!r}: {model_path!r} is not a directory holding "
                               f"{MODEL_DIR_FILE}")
        return Plugin("model-dir", launcher, model_path)
    if ":" in launcher:
        if not _IMPORT_PATH_RE.match(launcher):
            raise UnknownModel(f"launcher {launcher!r} is not an import path of the form package.module:factory")
        module = launcher.split(":", 1)[0]
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError) as err:
            raise UnknownModel(f"launcher {launcher!r}: module {module!r} cannot be found ({err})") from err
        if spec is None:
            raise UnknownModel(f"launcher {launcher!r}: no module {module!r} on the Python path")
        return Plugin("import-path", launcher, launcher)
    eps = entry_points()
    if launcher in eps:
        return Plugin("entry-point", launcher, eps[launcher])
    raise UnknownModel(
        f"unknown launcher {launcher!r}: tried the built-in models ({', '.join(builtins)}), "
        f"{MODEL_DIR!r} (a directory with {MODEL_DIR_FILE}), an import path 'package.module:factory' "
        f"and the {ENTRY_POINT_GROUP!r} entry points "
        f"({', '.join(sorted(eps)) if eps else 'none installed'})")


def loader(plugin: Plugin, builtins: dict[str, Loader]) -> Loader:
    """Import ``plugin`` and return its factory; ModelLoadError naming what failed."""
    if plugin.kind == "builtin":
        return builtins[plugin.target]
    if plugin.kind == "model-dir":
        return _model_dir_loader(plugin.target)
    return _import_factory(plugin.target, plugin.launcher)


def _import_factory(target: str, launcher: str) -> Loader:
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # an import runs user code: any error is the plugin's
        raise ModelLoadError(f"launcher {launcher!r}: importing {module!r} failed: "
                             f"{type(err).__name__}: {err}") from err
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise ModelLoadError(f"launcher {launcher!r}: {module!r} has no callable {attr!r}")
    return factory


def _model_dir_loader(directory: str) -> Loader:
    """``load`` of ``<directory>/model.py``, imported under a private module name."""
    path = os.path.join(directory, MODEL_DIR_FILE)
    name = "schooner_user_model_" + re.sub(r"\W", "_", os.path.basename(os.path.normpath(directory)))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{MODEL_DIR}: cannot import {path!r}")
    module = importlib.util.module_from_spec(spec)
    # model.py may import helper modules that sit beside it.
    sys.path.insert(0, directory)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # model.py is user code
        sys.modules.pop(name, None)
        raise ModelLoadError(f"{MODEL_DIR}: importing {path!r} failed: {type(err).__name__}: {err}") from err
    factory = getattr(module, "load", None)
    if not callable(factory):
        raise ModelLoadError(f"{MODEL_DIR}: {path!r} defines no load(model_path, num_threads, gpu, **opts)")
    return factory
