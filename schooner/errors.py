"""Every error Schooner names on purpose, and the one table of code, HTTP status and class.

A query-path error (:class:`SchoonerError`) travels under its code in a ZMQ
ERROR reply or an HTTP error body, and the client library raises the same class
again (:func:`from_code`). A management error (:class:`ManagementError`) is
answered by the REST API with its status and code. :data:`ERROR_TABLE` is the
only place a code, its HTTP status and its class are tied together; each class
gets ``code`` and ``http_status`` (``status`` for management errors) from it.
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    """Names of the errors a peer can be told about (wire, HTTP bodies, REST bodies)."""

    # query path: frontend, replicas, clients
    UNKNOWN_APP = "unknown_app"
    NO_MODEL = "no_model"
    BAD_INPUT = "bad_input"
    OVERLOADED = "overloaded"
    MODEL_ERROR = "model_error"
    REPLICA_LOST = "replica_lost"
    PROTOCOL_ERROR = "protocol_error"
    SHUTTING_DOWN = "shutting_down"
    NOT_READY = "not_ready"  # the frontend has not loaded its apps and models yet (503 + Retry-After)
    INTERNAL = "internal"
    TIMEOUT = "timeout"  # raised by the client library, never sent
    # management REST API
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNAUTHORIZED = "unauthorized"
    STORE_UNAVAILABLE = "store_unavailable"
    ALLOCATION_ERROR = "allocation_error"
    BACKEND_ERROR = "backend_error"
    NO_MANAGER = "no_manager"
    REPLICAS_NOT_READY = "replicas_not_ready"
    MODEL_FAILED = "model_failed"


class SchoonerError(Exception):
    """Base of every error Schooner raises on purpose on the query path."""

    code = ErrorCode.INTERNAL.value
    http_status = 500


class ProtocolError(SchoonerError):
    """A message that does not follow the wire protocol."""


class UnknownApp(SchoonerError):
    """The query names an app that does not exist."""


class NoModel(SchoonerError):
    """The app has no linked model (or the model has no current version)."""


class BadInput(SchoonerError):
    """The input has the wrong type, shape or size, or could not be decoded."""


class Overloaded(SchoonerError):
    """The model's queue is full; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelError(SchoonerError):
    """The model raised while running the batch holding this query."""


class ReplicaLost(SchoonerError):
    """Every replica that took this query's batch died (retries exhausted)."""


class ShuttingDown(SchoonerError):
    """The frontend is stopping and did not run this query."""


class NotReady(SchoonerError):
    """The frontend has not loaded its apps and models yet; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueryTimeout(SchoonerError, TimeoutError):
    """No answer came within the client's timeout (raised by the client library, never sent)."""


class ManagementError(Exception):
    """Base of every error the management service raises on purpose (answered with ``status``)."""

    status = 500
    code = ErrorCode.INTERNAL.value


class BadRequest(ManagementError, ValueError):
    """A request or argument that is malformed or names an impossible setting."""


class NotFound(ManagementError, LookupError):
    """The named app, model, version or replica does not exist."""


class Conflict(ManagementError):
    """The thing exists already, or the change contradicts what exists."""


class Unauthorized(ManagementError):
    """A write without the admin token."""


class StoreUnavailable(ManagementError):
    """Redis cannot be reached (or answered with an error)."""


class AllocationError(BadRequest):
    """The requested CPUs or GPUs cannot be allocated (not enough, or do not exist)."""


class BackendError(ManagementError):
    """A replica backend (processes, Docker) failed to start or stop a replica."""


class ManagerUnavailable(ManagementError):
    """The service runs without a replica manager (registry-only)."""


class ReplicasNotReady(ManagementError, TimeoutError):
    """``wait_s`` passed before every replica registered with the frontend; they keep starting."""


class ModelFailed(ManagementError):
    """The model version is marked failed: its replicas exit before serving (the message says why)."""


# code -> (HTTP status, class). New error codes go here (and in ErrorCode), nowhere else.
ERROR_TABLE: dict[ErrorCode, tuple[int, type[Exception]]] = {
    ErrorCode.UNKNOWN_APP: (404, UnknownApp),
    ErrorCode.NO_MODEL: (503, NoModel),
    ErrorCode.BAD_INPUT: (400, BadInput),
    ErrorCode.OVERLOADED: (429, Overloaded),  # with Retry-After
    ErrorCode.MODEL_ERROR: (500, ModelError),
    ErrorCode.REPLICA_LOST: (502, ReplicaLost),
    ErrorCode.PROTOCOL_ERROR: (400, ProtocolError),
    ErrorCode.SHUTTING_DOWN: (503, ShuttingDown),
    ErrorCode.NOT_READY: (503, NotReady),  # with Retry-After
    ErrorCode.INTERNAL: (500, SchoonerError),
    ErrorCode.TIMEOUT: (504, QueryTimeout),
    ErrorCode.BAD_REQUEST: (400, BadRequest),
    ErrorCode.NOT_FOUND: (404, NotFound),
    ErrorCode.CONFLICT: (409, Conflict),
    ErrorCode.UNAUTHORIZED: (401, Unauthorized),
    ErrorCode.STORE_UNAVAILABLE: (503, StoreUnavailable),
    ErrorCode.ALLOCATION_ERROR: (400, AllocationError),
    ErrorCode.BACKEND_ERROR: (500, BackendError),
    ErrorCode.NO_MANAGER: (503, ManagerUnavailable),
    ErrorCode.REPLICAS_NOT_READY: (504, ReplicasNotReady),
    ErrorCode.MODEL_FAILED: (422, ModelFailed),
}

for _code, (_status, _cls) in ERROR_TABLE.items():
    _cls.code = _code.value  # type: ignore[attr-defined]
    if issubclass(_cls, SchoonerError):
        _cls.http_status = _status
    else:
        _cls.status = _status  # type: ignore[attr-defined]
ManagementError.status, ManagementError.code = 500, ErrorCode.INTERNAL.value

_BY_CODE: dict[str, type[SchoonerError]] = {
    code.value: cls for code, (_, cls) in ERROR_TABLE.items()
    if issubclass(cls, SchoonerError) and cls is not QueryTimeout}


def error_body(code: str, message: str) -> dict:
    """The JSON body of an error answer: the code, and the message as Clipper's ``cause``.

    ``message`` carries the same text under the name earlier Schooner clients read.
    """
    return {"error": code, "cause": message, "message": message}


def http_status(code: str) -> int:
    """The HTTP status an error ``code`` is answered with (500 for an unknown code)."""
    try:
        return ERROR_TABLE[ErrorCode(code)][0]
    except ValueError:
        return 500


def from_code(code: str, message: str) -> SchoonerError:
    """The query-path error class named by ``code`` (SchoonerError for others), built with ``message``."""
    return _BY_CODE.get(code, SchoonerError)(message)
