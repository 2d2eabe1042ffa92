"""The deployment store: the registry and the replica table over one Redis connection.

Composition, not inheritance: :class:`Store` owns a
:class:`~management.store.connection.Connection`, a
:class:`~management.store.registry.Registry` and a
:class:`~management.store.replicas.ReplicaTable`, and answers the registry's
calls itself (the REST API's handlers use those), so ``store.add_app(...)``
and ``store.replicas.put(record)`` both read as what they do.
"""

from __future__ import annotations

from typing import Iterable

import redis

from schooner import defaults
from schooner.types import AppSpec, DeploymentState, ModelSpec
from management.store.connection import Connection
from management.store.registry import Registry
from management.store.replicas import ReplicaTable


class Store:
    """Reads and writes Schooner's deployment in Redis; the only user of its key names."""

    def __init__(self, client: redis.Redis, *, prefix: str = defaults.REDIS_KEY_PREFIX) -> None:
        self.conn = Connection(client, prefix=prefix)
        self.registry = Registry(self.conn)
        self.replicas = ReplicaTable(self.conn)

    @property
    def client(self) -> redis.Redis:
        """The Redis client this store writes with."""
        return self.conn.redis

    @property
    def events_channel(self) -> str:
        """The pub/sub channel every write publishes on."""
        return self.conn.keys.events

    def publish(self, event: dict) -> None:
        """Publish ``event`` (a dict with a ``kind``) on the events channel."""
        self.conn.publish(event)

    def ping(self) -> bool:
        """Whether Redis answers."""
        return self.conn.ping()

    # -- the registry ----------------------------------------------------------------------

    def add_app(self, app: AppSpec) -> None:
        """Register an app; Conflict if one of that name exists."""
        return self.registry.add_app(app)

    def get_app(self, name: str) -> AppSpec | None:
        """The app called ``name``, or None."""
        return self.registry.get_app(name)

    def list_apps(self) -> list[AppSpec]:
        """Every app, sorted by name."""
        return self.registry.list_apps()

    def delete_app(self, name: str) -> None:
        """Remove an app and its links; NotFound if there is none."""
        return self.registry.delete_app(name)

    def add_model(self, model: ModelSpec) -> None:
        """Register a model version; Conflict if it exists. The first version becomes current."""
        return self.registry.add_model(model)

    def get_model(self, name: str, version: str | None = None) -> ModelSpec | None:
        """A model version (the current one when ``version`` is None), or None."""
        return self.registry.get_model(name, version)

    def list_models(self) -> list[ModelSpec]:
        """Every model version, sorted by name then version."""
        return self.registry.list_models()

    def versions(self, name: str) -> list[str]:
        """Every registered version of model ``name``, in version order."""
        return self.registry.versions(name)

    def delete_model(self, name: str, version: str) -> None:
        """Remove a model version, its desired count and replica records; NotFound if absent."""
        return self.registry.delete_model(name, version)

    def set_current_version(self, name: str, version: str) -> None:
        """Route model ``name``'s queries to ``version``; NotFound if that version is absent."""
        return self.registry.set_current_version(name, version)

    def get_current_version(self, name: str) -> str | None:
        """The version model ``name``'s queries go to, or None."""
        return self.registry.get_current_version(name)

    def update_model_batching(self, name: str, version: str, batch_size: int,
                              max_batch_size: int | None = None,
                              batch_wait_timeout_micros: int | None = None) -> ModelSpec:
        """Change a model version's batching; NotFound if absent, BadRequest if invalid."""
        return self.registry.update_model_batching(name, version, batch_size, max_batch_size, batch_wait_timeout_micros)

    def update_model_cache(self, name: str, version: str, enabled: bool, size_bytes: int | None = None) -> ModelSpec:
        """Turn a model version's prediction cache on or off (and set its bound); NotFound if absent."""
        return self.registry.update_model_cache(name, version, enabled, size_bytes)

    def add_links(self, app: str, model_names: Iterable[str]) -> None:
        """Link ``app`` to a model (Clipper allows exactly one)."""
        return self.registry.add_links(app, model_names)

    def get_links(self, app: str) -> list[str]:
        """The model names linked to ``app`` (sorted; empty if none or no such app)."""
        return self.registry.get_links(app)

    def delete_links(self, app: str, model_names: Iterable[str]) -> None:
        """Unlink models from ``app``; NotFound for an unknown app or a model not linked."""
        return self.registry.delete_links(app, model_names)

    def load_state(self) -> DeploymentState:
        """Apps, model versions, links and current versions, read as one MULTI snapshot."""
        return self.registry.load_state()

