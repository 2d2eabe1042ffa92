"""Schooner's replica runtime (``python -m containers.replica``), cpu/gpu pinning and model zoo."""

from containers.errors import ContainerError, ModelLoadError, PinningError, UnknownModel
from containers.models import MODEL_NAMES, load_model

__all__ = ["MODEL_NAMES", "ContainerError", "ModelLoadError", "PinningError", "UnknownModel", "load_model"]
