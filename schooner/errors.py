"""Errors of the frontend, the protocol and the client library.

Each carries the :class:`~schooner.protocol.ErrorCode` name it travels under, so
a client gets the same named error the frontend raised.
"""

from __future__ import annotations


class SchoonerError(Exception):
    """Base of every error Schooner raises on purpose."""

    code = "internal"


class ProtocolError(SchoonerError):
    """A message that does not follow the wire protocol."""

    code = "protocol_error"


class UnknownApp(SchoonerError):
    """The query names an app that does not exist."""

    code = "unknown_app"


class NoModel(SchoonerError):
    """The app has no linked model (or the model has no current version)."""

    code = "no_model"


class BadInput(SchoonerError):
    """The input has the wrong type, shape or size, or could not be decoded."""

    code = "bad_input"


class Overloaded(SchoonerError):
    """The model's queue is full; retry after ``retry_after_s``."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelError(SchoonerError):
    """The model raised while running the batch holding this query."""

    code = "model_error"


class ReplicaLost(SchoonerError):
    """Every replica that took this query's batch died (retries exhausted)."""

    code = "replica_lost"


class ShuttingDown(SchoonerError):
    """The frontend is stopping and did not run this query."""

    code = "shutting_down"


class QueryTimeout(SchoonerError, TimeoutError):
    """No answer came within the client's timeout (raised by the client library, never sent)."""

    code = "timeout"


_BY_CODE = {cls.code: cls for cls in (ProtocolError, UnknownApp, NoModel, BadInput, Overloaded,
                                      ModelError, ReplicaLost, ShuttingDown)}


def from_code(code: str, message: str) -> SchoonerError:
    """The error class named by ``code`` (SchoonerError for unknown codes), built with ``message``."""
    return _BY_CODE.get(code, SchoonerError)(message)
