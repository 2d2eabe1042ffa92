"""Models a replica can serve: the zoo, format loaders and user plugins, found from a ``launcher``.

``import containers.models`` needs only numpy: each loader imports its module
(and torch, scikit-learn, lightgbm...) when it is called. A loader (factory)
takes ``(model_path="", num_threads=1, gpu=None, **opts)`` and returns a
:class:`~containers.models.base.Model`. ``gpu`` is the CUDA device index inside
the process (the replica makes its one gpu visible as device 0), None for cpu.

Built-in plugins are the nine zoo models (``LOADERS``) and the format loaders
(``sklearn``, ``lightgbm``, ``torchscript``, ``onnx``, ``python-closure``, see
:mod:`containers.models.formats`). User models come as a model directory, an
import path or an entry point (:mod:`containers.models.plugins`).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from containers.errors import ModelLoadError, UnknownModel  # noqa: F401 - re-exported
from containers.models import plugins
from containers.models.base import Model
from containers.models.plugins import Plugin

Loader = Callable[..., Model]


def _lazy(module: str, attr: str) -> Loader:
    """A loader that imports ``module`` only when called."""

    def load(model_path: str = "", num_threads: int = 1, gpu: int | None = None, **opts: Any) -> Model:
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            raise ModelLoadError(f"model module {module} cannot be imported ({err}); "
                                 "install the extra it needs, e.g. pip install schooner[torch] "
                                 "or schooner[classic]") from err
        return getattr(mod, attr)(model_path=model_path, num_threads=num_threads, gpu=gpu, **opts)

    load.__name__ = attr
    load.__doc__ = f"Lazy loader for {module}.{attr}."
    return load


LOADERS: dict[str, Loader] = {
    "noop": _lazy("containers.models.noop", "load_noop"),
    "sleep": _lazy("containers.models.sleep", "load_sleep"),
    "vgg": _lazy("containers.models.cnn", "load_vgg"),
    "inception": _lazy("containers.models.cnn", "load_inception"),
    "resnet18": _lazy("containers.models.cnn", "load_resnet18"),
    "lgbm": _lazy("containers.models.classic", "load_lgbm"),
    "kpca-svm": _lazy("containers.models.classic", "load_kpca_svm"),
    "kernel-svm": _lazy("containers.models.classic", "load_kernel_svm"),
    "elastic-net": _lazy("containers.models.classic", "load_elastic_net"),
}

MODEL_NAMES: tuple[str, ...] = tuple(LOADERS)  # the zoo

FORMATS: dict[str, Loader] = {name: _lazy("containers.models.formats", f"load_{name.replace('-', '_')}")
                              for name in ("sklearn", "lightgbm", "torchscript", "onnx", "python-closure")}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)
BUILTINS: dict[str, Loader] = {**LOADERS, **FORMATS}


def find_plugin(launcher: str, model_path: str = "") -> Plugin:
    """What ``launcher`` names, without importing it; UnknownModel naming everything tried."""
    return plugins.find(launcher, BUILTINS, model_path)


def load_model(name: str, model_path: str = "", num_threads: int = 1, gpu: int | None = None,
               **opts: Any) -> Model:
    """Load the model ``name`` (any launcher); UnknownModel if it names nothing, ModelLoadError if it fails."""
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
    plugin = find_plugin(name, model_path)
    factory = plugins.loader(plugin, BUILTINS)
    try:
        model = factory(model_path=model_path, num_threads=num_threads, gpu=gpu, **opts)
    except TypeError as err:
        raise ModelLoadError(f"model {name!r} rejected its options {sorted(opts)}: {err}") from err
    except ImportError as err:
        raise ModelLoadError(f"model {name!r}: {err}") from err
    except ModelLoadError:
        raise
    except Exception as err:
        if plugin.kind == "builtin":
            raise
        raise ModelLoadError(f"model {name!r} ({plugin.kind} {plugin.target}): load failed: "
                             f"{type(err).__name__}: {err}") from err
    from containers.models.formats import as_model

    return as_model(model, name)


__all__ = ["BUILTINS", "FORMAT_NAMES", "LOADERS", "MODEL_NAMES", "Loader", "Model", "Plugin", "find_plugin",
           "load_model"]
