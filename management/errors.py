"""Errors of the management service: the store, the REST API and the replica manager.

They live in :mod:`schooner.errors`, in the one table of code, HTTP status and
class; this module names the ones the management service raises.
"""

from __future__ import annotations

from schooner.errors import (AllocationError, BackendError, BadRequest, Conflict, ManagementError,
                             ManagerUnavailable, ModelFailed, NotFound, ReplicasNotReady, StoreUnavailable, Unauthorized)

__all__ = ["AllocationError", "BackendError", "BadRequest", "Conflict", "ManagementError", "ManagerUnavailable",
           "ModelFailed", "NotFound", "ReplicasNotReady", "StoreUnavailable", "Unauthorized"]
