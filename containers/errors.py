"""Errors of the replica runtime and the model zoo."""

from __future__ import annotations

from schooner.errors import SchoonerError


class ContainerError(SchoonerError):
    """Base of the replica runtime's errors."""

    code = "internal"


class PinningError(ContainerError, ValueError):
    """The requested cpus or gpu cannot be used (malformed, absent or not allowed)."""


class UnknownModel(ContainerError, ValueError):
    """No model of that name in the zoo."""


class ModelLoadError(ContainerError):
    """A zoo model could not be loaded (missing dependency, bad model path or options)."""
