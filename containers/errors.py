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


# The replica writes this marker then a JSON object {"error": ...} as one line to stderr when its model
# does not load, and exits LOAD_FAILED_EXIT; the manager reads the line from the replica's log.
LOAD_ERROR_MARKER = "SCHOONER_LOAD_ERROR "
LOAD_FAILED_EXIT = 3
