"""Schooner's Redis store: apps, models, links, replica records and desired deployments.

Every key it writes is named by :class:`schooner.keys.Keys`; every write publishes
an event (:mod:`management.store.events`) that frontends follow.
"""

from management.store.events import EventKind, changes_state
from management.store.frontends import FrontendDirectory
from management.store.registry import Store

__all__ = ["EventKind", "FrontendDirectory", "Store", "changes_state"]
