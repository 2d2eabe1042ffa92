"""Keeps a frontend's deployment in step with Redis: load, apply, follow change events.

The frontend process runs :func:`follow` as a task. It never touches Redis per
query: it applies the whole :class:`~schooner.types.DeploymentState` at start
and again after every change event (a burst of events is applied once). When
Redis goes away the frontend keeps serving its last state; the follower retries
and, once Redis answers again, re-loads everything, since events published
while it was away are lost.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from typing import Any, Callable, Protocol

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from schooner import defaults
from schooner.types import DeploymentState
from schooner.urls import redact
from management.errors import StoreUnavailable
from management.store import EventKind, Store, changes_state

log = logging.getLogger(__name__)

_POLL_S = 0.25  # how often the event wait wakes to notice ``stop``
_COALESCE_S = 0.05  # events arriving this close together are applied once
_SOCKET_TIMEOUT_S = 5.0
_REPLICA_KINDS = frozenset({EventKind.REPLICA_PUT.value, EventKind.REPLICA_DELETED.value})


class StateSink(Protocol):
    """What the follower drives: the frontend (or anything with ``apply_state``)."""

    def apply_state(self, state: DeploymentState) -> Any:
        """Replace the served deployment with ``state`` (may be a coroutine function)."""
        ...


def _no_retry() -> Retry:
    # Without this, redis-py silently reconnects and re-subscribes, and we would
    # never learn that we missed events while Redis was away.
    return Retry(NoBackoff(), 0)


async def _apply(frontend: StateSink, state: DeploymentState) -> None:
    result = frontend.apply_state(state)
    if inspect.isawaitable(result):
        await result


async def _wait(stop: asyncio.Event, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout_s)
    except asyncio.TimeoutError:
        pass


async def follow(frontend: StateSink, redis_url: str, stop: asyncio.Event,
                 retry_s: float = defaults.REDIS_RETRY_INTERVAL_S, *,
                 prefix: str = defaults.REDIS_KEY_PREFIX) -> None:
    """Apply Redis's deployment to ``frontend`` until ``stop`` is set, surviving Redis outages."""
    if not hasattr(frontend, "apply_state"):
        raise TypeError("frontend must have an apply_state(DeploymentState) method")
    if not isinstance(redis_url, str) or not redis_url:
        raise ValueError("redis_url must be a non-empty redis:// URL")
    if retry_s <= 0:
        raise ValueError("retry_s must be > 0")
    down = False

    def synced() -> None:
        nonlocal down
        if down:
            log.info("Redis at %s is back; deployment resynced", redact(redis_url))
            down = False

    while not stop.is_set():
        try:
            await _follow_once(frontend, redis_url, stop, prefix, synced)
        except (redis.RedisError, OSError, StoreUnavailable) as err:
            if not down:
                log.warning("Redis at %s unavailable (%s); serving the last known deployment, retrying "
                            "every %ss", redact(redis_url), err, retry_s)
                down = True
            await _wait(stop, retry_s)


async def _follow_once(frontend: StateSink, redis_url: str, stop: asyncio.Event, prefix: str,
                       synced: Callable[[], None]) -> None:
    """One connection's life: subscribe, full load, then re-load on each state event."""
    sync_client = redis.Redis.from_url(redis_url, decode_responses=True, retry=_no_retry(),
                                       socket_connect_timeout=_SOCKET_TIMEOUT_S,
                                       socket_timeout=_SOCKET_TIMEOUT_S)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True, retry=_no_retry(),
                                     socket_connect_timeout=_SOCKET_TIMEOUT_S)
    store = Store(sync_client, prefix=prefix)
    pubsub = client.pubsub()
    try:
        # Subscribe before loading, so a change made between the two is not missed.
        await pubsub.subscribe(store.events_channel)
        keys = _KeySync(frontend, store)
        await _reload(frontend, store, "initial sync")
        await keys.reload()
        if hasattr(frontend, "set_ready"):
            frontend.set_ready()
        synced()
        while not stop.is_set():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_S)
            if message is None:
                continue
            if _is_replica_event(message):
                await keys.reload()  # at once: the replica it names is about to connect
                continue
            if not _is_state_event(message):
                continue
            await asyncio.sleep(_COALESCE_S)
            replica_events = False
            while (more := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)) is not None:
                replica_events = replica_events or _is_replica_event(more)  # the reload covers the rest
            await _reload(frontend, store, "change event")
            if replica_events:
                await keys.reload()
    finally:
        if getattr(frontend, "key_lookup", None) is not None:
            frontend.key_lookup = None  # type: ignore[attr-defined]  # its Redis client closes below
        await _close(pubsub, client, sync_client)


class _KeySync:
    """Keeps a CURVE frontend's registered replica keys in step with the manager's records."""

    def __init__(self, frontend: Any, store: Store) -> None:
        self.frontend = frontend if getattr(frontend, "auth", None) is not None else None
        self.store = store
        if self.frontend is not None:
            frontend.key_lookup = store.replicas.replica_for_key

    async def reload(self) -> None:
        if self.frontend is not None:
            self.frontend.set_replica_keys(await asyncio.to_thread(self.store.replicas.curve_keys))


def _is_replica_event(message: dict) -> bool:
    try:
        event = json.loads(message["data"])
    except (TypeError, ValueError):
        return False
    return isinstance(event, dict) and event.get("kind") in _REPLICA_KINDS


def _is_state_event(message: dict) -> bool:
    try:
        event = json.loads(message["data"])
    except (TypeError, ValueError):
        log.warning("ignoring malformed event %r", message.get("data"))
        return False
    return isinstance(event, dict) and changes_state(event)


async def _reload(frontend: StateSink, store: Store, why: str) -> None:
    state = await asyncio.to_thread(store.load_state)
    try:
        await _apply(frontend, state)
    except Exception:  # noqa: BLE001 - a bad state must not stop the follower; the next event retries
        log.exception("frontend rejected the deployment (%s)", why)
        return
    log.debug("applied deployment (%s): %d apps, %d model versions", why, len(state.apps), len(state.models))


async def _close(pubsub: Any, client: aioredis.Redis, sync_client: redis.Redis) -> None:
    for closer in (pubsub.aclose, client.aclose):
        try:
            await closer()
        except (redis.RedisError, OSError):
            pass
    sync_client.close()
