"""Schooner's management service: Redis store, REST admin API, replica manager, follower.

Importing the package is cheap; submodules (``management.api`` needs aiohttp,
``management.manager`` the backends) are imported where they are used.
"""

from management.errors import (AllocationError, BackendError, BadRequest, Conflict, ManagementError, NotFound,
                               StoreUnavailable, Unauthorized)

__all__ = ["ManagementError", "BadRequest", "NotFound", "Conflict", "Unauthorized", "StoreUnavailable",
           "AllocationError", "BackendError"]
