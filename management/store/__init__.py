"""Schooner's Redis store: apps, models, links, replica records and desired deployments.

:class:`Store` is what the management service and the frontend's follower use:
the :class:`~management.store.registry.Registry` (apps, models, links,
versions) and the :class:`~management.store.replicas.ReplicaTable` (replica
records, desired counts) over one :class:`~management.store.connection.Connection`.
Every key it writes is named by :class:`schooner.keys.Keys`; every write
publishes an event (:mod:`management.store.events`) that frontends follow.
"""

from management.store.deployment import Store
from management.store.events import EventKind, changes_state
from management.store.frontends import FrontendDirectory
from management.store.replicas import ReplicaRecord, ReplicaTable

__all__ = ["EventKind", "FrontendDirectory", "ReplicaRecord", "ReplicaTable", "Store", "changes_state"]
