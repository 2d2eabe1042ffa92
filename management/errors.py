"""Errors of the management service: the store, the REST API and the replica manager.

Each carries the HTTP status the REST API answers with and a short ``code``
that goes into the JSON error body.
"""

from __future__ import annotations


class ManagementError(Exception):
    """Base of every error the management service raises on purpose."""

    status = 500
    code = "internal"


class BadRequest(ManagementError, ValueError):
    """A request or argument that is malformed or names an impossible setting."""

    status = 400
    code = "bad_request"


class NotFound(ManagementError, LookupError):
    """The named app, model, version or replica does not exist."""

    status = 404
    code = "not_found"


class Conflict(ManagementError):
    """The thing exists already, or the change contradicts what exists."""

    status = 409
    code = "conflict"


class Unauthorized(ManagementError):
    """A write without the admin token."""

    status = 401
    code = "unauthorized"


class StoreUnavailable(ManagementError):
    """Redis cannot be reached (or answered with an error)."""

    status = 503
    code = "store_unavailable"


class AllocationError(BadRequest):
    """The requested CPUs or GPUs cannot be allocated (not enough, or do not exist)."""

    code = "allocation_error"


class BackendError(ManagementError):
    """A replica backend (processes, Docker) failed to start or stop a replica."""

    status = 500
    code = "backend_error"


class ManagerUnavailable(ManagementError):
    """The service runs without a replica manager (registry-only)."""

    status = 503
    code = "no_manager"


class ReplicasNotReady(ManagementError, TimeoutError):
    """``wait_s`` passed before every replica registered with the frontend; they keep starting."""

    status = 504
    code = "replicas_not_ready"
