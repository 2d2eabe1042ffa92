"""The model zoo: name -> loader, with lazy imports.

``import containers.models`` needs only numpy: each loader imports its module
(and torch, scikit-learn, lightgbm...) when it is called. A loader takes
``(model_path="", num_threads=1, gpu=None, **opts)`` and returns a
:class:`~containers.models.base.Model`. ``gpu`` is the CUDA device index inside
the process (the replica makes its one gpu visible as device 0), None for cpu.

To add a model: write ``load_<name>`` in a module here and add one line to
``LOADERS``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from containers.errors import ModelLoadError, UnknownModel
from containers.models.base import Model

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

MODEL_NAMES: tuple[str, ...] = tuple(LOADERS)


def load_model(name: str, model_path: str = "", num_threads: int = 1, gpu: int | None = None,
               **opts: Any) -> Model:
    """Load the zoo model ``name``; UnknownModel for a name not in the zoo, ModelLoadError if it fails."""
    loader = LOADERS.get(name)
    if loader is None:
        raise UnknownModel(f"unknown model {name!r}; the zoo has: {', '.join(MODEL_NAMES)}")
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
    try:
        return loader(model_path=model_path, num_threads=num_threads, gpu=gpu, **opts)
    except TypeError as err:
        raise ModelLoadError(f"model {name!r} rejected its options {sorted(opts)}: {err}") from err


__all__ = ["LOADERS", "MODEL_NAMES", "Loader", "Model", "load_model"]
