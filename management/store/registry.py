"""The registry: apps, models, links and current versions in Redis.

Every Redis key Schooner uses is built in ``schooner.keys`` and nowhere
else; the replica records and desired counts live in
``management.store.replicas``. Writes that belong together run in one
MULTI/EXEC transaction (with WATCH on the keys their checks read), and each write publishes a JSON
event ``{"kind": ..., ...}`` on the ``schooner:events`` channel inside that
same transaction, so a follower that sees the event also sees the write.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import redis

from schooner.types import AppSpec, DeploymentState, ModelSpec
from management.store.codec import APP_KINDS, MODEL_KINDS, check_name, decode_spec, encode_spec, text, version_order
from management.store.connection import Connection, translated
from management.errors import BadRequest, Conflict, NotFound
from management.store.events import EventKind, changes_state

__all__ = ["EventKind", "Registry", "changes_state"]


class Registry:
    """Reads and writes apps, model versions, links and current versions."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._r = conn.redis
        self._k = conn.keys

    # -- apps ------------------------------------------------------------------------------

    @translated
    def add_app(self, app: AppSpec) -> None:
        """Register an app; Conflict if one of that name exists."""
        if not isinstance(app, AppSpec):
            raise TypeError("app must be an AppSpec")
        check_name(app.name, "name")
        key = self._k.app(app.name)

        def write(pipe: redis.client.Pipeline) -> None:
            if pipe.exists(key):
                raise Conflict(f"application {app.name!r} already exists")
            pipe.multi()
            pipe.hset(key, mapping=encode_spec(app, APP_KINDS))
            pipe.sadd(self._k.apps, app.name)
            self._conn.event(pipe, EventKind.APP_ADDED, name=app.name)

        self._conn.transact(write, key)

    @translated
    def get_app(self, name: str) -> AppSpec | None:
        """The app called ``name``, or None."""
        raw = self._r.hgetall(self._k.app(name))
        return decode_spec(AppSpec, raw, APP_KINDS) if raw else None

    @translated
    def list_apps(self) -> list[AppSpec]:
        """Every app, sorted by name."""
        names = sorted(text(n) for n in self._r.smembers(self._k.apps))
        pipe = self._r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self._k.app(name))
        return [decode_spec(AppSpec, raw, APP_KINDS) for raw in pipe.execute() if raw]

    @translated
    def delete_app(self, name: str) -> None:
        """Remove an app and its links; NotFound if there is none."""
        key = self._k.app(name)

        def write(pipe: redis.client.Pipeline) -> None:
            if not pipe.exists(key):
                raise NotFound(f"application {name!r} does not exist")
            pipe.multi()
            pipe.delete(key, self._k.links(name))
            pipe.srem(self._k.apps, name)
            self._conn.event(pipe, EventKind.APP_DELETED, name=name)

        self._conn.transact(write, key)

    # -- models ----------------------------------------------------------------------------

    @translated
    def add_model(self, model: ModelSpec) -> None:
        """Register a model version; Conflict if it exists. The first version becomes current."""
        if not isinstance(model, ModelSpec):
            raise TypeError("model must be a ModelSpec")
        check_name(model.name, "model_name")
        check_name(model.version, "model_version")
        key = self._k.model(model.name, model.version)
        current = self._k.current_version(model.name)

        def write(pipe: redis.client.Pipeline) -> None:
            if pipe.exists(key):
                raise Conflict(f"model {model.name!r} version {model.version!r} already exists")
            pipe.multi()
            pipe.hset(key, mapping=encode_spec(model, MODEL_KINDS))
            pipe.sadd(self._k.models, f"{model.name}:{model.version}")
            pipe.set(current, model.version, nx=True)
            self._conn.event(pipe, EventKind.MODEL_ADDED, name=model.name, version=model.version)

        self._conn.transact(write, key, current)

    @translated
    def get_model(self, name: str, version: str | None = None) -> ModelSpec | None:
        """A model version (the current one when ``version`` is None), or None."""
        if version is None:
            version = self.get_current_version(name)
            if version is None:
                return None
        raw = self._r.hgetall(self._k.model(name, str(version)))
        return decode_spec(ModelSpec, raw, MODEL_KINDS) if raw else None

    @translated
    def list_models(self) -> list[ModelSpec]:
        """Every model version, sorted by name then version."""
        members = [text(m).split(":", 1) for m in self._r.smembers(self._k.models)]
        members.sort(key=lambda nv: (nv[0], version_order(nv[1])))
        pipe = self._r.pipeline(transaction=False)
        for name, version in members:
            pipe.hgetall(self._k.model(name, version))
        return [decode_spec(ModelSpec, raw, MODEL_KINDS) for raw in pipe.execute() if raw]

    @translated
    def versions(self, name: str) -> list[str]:
        """Every registered version of model ``name``, in version order."""
        found = [v for n, v in (text(m).split(":", 1) for m in self._r.smembers(self._k.models)) if n == name]
        return sorted(found, key=version_order)

    @translated
    def delete_model(self, name: str, version: str) -> None:
        """Remove a model version, its desired count and replica records; NotFound if absent.

        Deleting the current version makes the highest remaining version current.
        """
        version = str(version)
        key = self._k.model(name, version)
        current = self._k.current_version(name)
        replicas = self._k.replicas(name, version)

        def write(pipe: redis.client.Pipeline) -> None:
            if not pipe.exists(key):
                raise NotFound(f"model {name!r} version {version!r} does not exist")
            remaining = [v for n, v in (text(m).split(":", 1) for m in pipe.smembers(self._k.models))
                         if n == name and v != version]
            was_current = text(pipe.get(current)) == version
            replica_ids = [text(r) for r in pipe.smembers(replicas)]
            pipe.multi()
            pipe.delete(key, self._k.desired(name, version), replicas,
                        *(self._k.replica(name, version, r) for r in replica_ids))
            pipe.srem(self._k.models, f"{name}:{version}")
            if was_current and remaining:
                pipe.set(current, max(remaining, key=version_order))
            elif not remaining:
                pipe.delete(current)
            self._conn.event(pipe, EventKind.MODEL_DELETED, name=name, version=version)

        self._conn.transact(write, key, current, replicas, self._k.models)

    @translated
    def set_current_version(self, name: str, version: str) -> None:
        """Route model ``name``'s queries to ``version``; NotFound if that version is absent."""
        version = str(version)
        key = self._k.model(name, version)

        def write(pipe: redis.client.Pipeline) -> None:
            if not pipe.exists(key):
                raise NotFound(f"model {name!r} version {version!r} does not exist")
            pipe.multi()
            pipe.set(self._k.current_version(name), version)
            self._conn.event(pipe, EventKind.VERSION_SET, name=name, version=version)

        self._conn.transact(write, key)

    @translated
    def get_current_version(self, name: str) -> str | None:
        """The version model ``name``'s queries go to, or None."""
        value = self._r.get(self._k.current_version(name))
        return text(value) if value is not None else None

    @translated
    def update_model_batching(self, name: str, version: str, batch_size: int,
                              max_batch_size: int | None = None,
                              batch_wait_timeout_micros: int | None = None) -> ModelSpec:
        """Change a model version's batching; NotFound if absent, BadRequest if invalid."""
        changes: dict[str, Any] = {"batch_size": batch_size}
        if max_batch_size is not None:
            changes["max_batch_size"] = max_batch_size
        if batch_wait_timeout_micros is not None:
            changes["batch_wait_timeout_micros"] = batch_wait_timeout_micros
        return self._update_model(name, version, changes)

    @translated
    def update_model_cache(self, name: str, version: str, enabled: bool,
                           size_bytes: int | None = None) -> ModelSpec:
        """Turn a model version's prediction cache on or off (and set its bound); NotFound if absent."""
        changes: dict[str, Any] = {"cache_enabled": enabled}
        if size_bytes is not None:
            changes["cache_size_bytes"] = size_bytes
        return self._update_model(name, version, changes)

    def _update_model(self, name: str, version: str, changes: dict[str, Any]) -> ModelSpec:
        version = str(version)
        key = self._k.model(name, version)

        def write(pipe: redis.client.Pipeline) -> ModelSpec:
            raw = pipe.hgetall(key)
            if not raw:
                raise NotFound(f"model {name!r} version {version!r} does not exist")
            spec = decode_spec(ModelSpec, raw, MODEL_KINDS)
            try:
                spec = dataclasses.replace(spec, **changes)
            except (TypeError, ValueError) as err:
                raise BadRequest(str(err)) from err
            pipe.multi()
            pipe.hset(key, mapping=encode_spec(spec, MODEL_KINDS))
            self._conn.event(pipe, EventKind.MODEL_UPDATED, name=name, version=version)
            return spec

        return self._conn.transact(write, key)

    # -- links -----------------------------------------------------------------------------

    @translated
    def add_links(self, app: str, model_names: Iterable[str]) -> None:
        """Link ``app`` to a model (Clipper allows exactly one).

        NotFound for an unknown app or model, Conflict when the input types differ
        or the app is already linked to another model, BadRequest for more than one name.
        """
        names = list(dict.fromkeys(model_names))
        if len(names) != 1:
            raise BadRequest(f"an application links to exactly one model, got {len(names)} model names")
        model = names[0]
        app_key, links_key, current = self._k.app(app), self._k.links(app), self._k.current_version(model)

        def write(pipe: redis.client.Pipeline) -> None:
            raw_app = pipe.hgetall(app_key)
            if not raw_app:
                raise NotFound(f"application {app!r} does not exist")
            version = pipe.get(current)
            raw_model = pipe.hgetall(self._k.model(model, text(version))) if version is not None else None
            if not raw_model:
                raise NotFound(f"model {model!r} does not exist")
            app_type = decode_spec(AppSpec, raw_app, APP_KINDS).input_type
            model_spec = decode_spec(ModelSpec, raw_model, MODEL_KINDS)
            if model_spec.input_type != app_type:
                raise Conflict(f"model {model!r} takes {model_spec.input_type.value} but application "
                               f"{app!r} takes {app_type.value}")
            linked = {text(m) for m in pipe.smembers(links_key)}
            if linked - {model}:
                raise Conflict(f"application {app!r} is already linked to model {sorted(linked)[0]!r}; "
                               "an application links to one model")
            pipe.multi()
            pipe.sadd(links_key, model)
            self._conn.event(pipe, EventKind.LINKS_ADDED, app=app, model_names=[model])

        self._conn.transact(write, app_key, links_key, current)

    @translated
    def get_links(self, app: str) -> list[str]:
        """The model names linked to ``app`` (sorted; empty if none or no such app)."""
        return sorted(text(m) for m in self._r.smembers(self._k.links(app)))

    @translated
    def delete_links(self, app: str, model_names: Iterable[str]) -> None:
        """Unlink models from ``app``; NotFound for an unknown app or a model not linked."""
        names = list(dict.fromkeys(model_names))
        app_key, links_key = self._k.app(app), self._k.links(app)

        def write(pipe: redis.client.Pipeline) -> None:
            if not pipe.exists(app_key):
                raise NotFound(f"application {app!r} does not exist")
            linked = {text(m) for m in pipe.smembers(links_key)}
            missing = [n for n in names if n not in linked]
            if missing:
                raise NotFound(f"model {missing[0]!r} is not linked to application {app!r}")
            pipe.multi()
            if names:
                pipe.srem(links_key, *names)
            self._conn.event(pipe, EventKind.LINKS_DELETED, app=app, model_names=names)

        self._conn.transact(write, app_key, links_key)

    # -- the whole deployment --------------------------------------------------------------

    @translated
    def load_state(self) -> DeploymentState:
        """Apps, model versions, links and current versions, read as one MULTI snapshot."""
        pipe = self._r.pipeline(transaction=True)
        pipe.smembers(self._k.apps)
        pipe.smembers(self._k.models)
        app_names, members = pipe.execute()
        app_names = sorted(text(a) for a in app_names)
        model_keys = sorted(tuple(text(m).split(":", 1)) for m in members)
        model_names = sorted({name for name, _ in model_keys})
        pipe = self._r.pipeline(transaction=True)
        for app in app_names:
            pipe.hgetall(self._k.app(app))
            pipe.smembers(self._k.links(app))
        for name, version in model_keys:
            pipe.hgetall(self._k.model(name, version))
        for name in model_names:
            pipe.get(self._k.current_version(name))
        results = iter(pipe.execute())
        state = DeploymentState()
        for app in app_names:
            raw_app, linked = next(results), next(results)
            if raw_app:
                state.apps[app] = decode_spec(AppSpec, raw_app, APP_KINDS)
                state.links[app] = sorted(text(m) for m in linked)
        for name, version in model_keys:
            raw = next(results)
            if raw:
                state.models[(name, version)] = decode_spec(ModelSpec, raw, MODEL_KINDS)
        for name in model_names:
            current = next(results)
            if current is not None:
                state.current_versions[name] = text(current)
        return state
