"""The store's plumbing: the Redis client, transactions, events and error translation."""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, TypeVar

import redis

from schooner import defaults
from schooner.keys import Keys
from management.errors import BadRequest, StoreUnavailable
from management.store.events import EventKind

F = TypeVar("F", bound=Callable[..., Any])


def translated(method: F) -> F:
    """Turn redis-py errors into StoreUnavailable at the edge of our code."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as err:
            raise StoreUnavailable(f"Redis is unreachable: {err}") from err
        except redis.RedisError as err:
            raise StoreUnavailable(f"Redis error: {err}") from err

    return wrapper  # type: ignore[return-value]


class Connection:
    """A Redis client and the key builder under one prefix, shared by the store's parts."""

    def __init__(self, client: redis.Redis, *, prefix: str = defaults.REDIS_KEY_PREFIX) -> None:
        if not isinstance(client, redis.Redis):
            raise TypeError(f"client must be a redis.Redis, got {type(client).__name__}")
        if not isinstance(prefix, str) or not prefix or ":" in prefix:
            raise ValueError("prefix must be a non-empty string without ':'")
        self.redis = client
        self.keys = Keys(prefix)

    def transact(self, fn: Callable[[redis.client.Pipeline], Any], *watch: str) -> Any:
        """Run ``fn`` under WATCH ``watch``; it reads, calls pipe.multi(), queues writes."""
        return self.redis.transaction(fn, *watch, value_from_callable=True)

    def event(self, pipe: redis.client.Pipeline, kind: EventKind, **fields: Any) -> None:
        """Queue the event of a write on ``pipe``, so it publishes in the write's transaction."""
        pipe.publish(self.keys.events, json.dumps({"kind": kind.value, **fields}))

    @translated
    def publish(self, event: dict) -> None:
        """Publish ``event`` (a dict with a ``kind``) on the events channel."""
        if not isinstance(event, dict) or not isinstance(event.get("kind"), str):
            raise BadRequest("event must be a dict with a string 'kind'")
        self.redis.publish(self.keys.events, json.dumps(event))

    @translated
    def ping(self) -> bool:
        """Whether Redis answers."""
        return bool(self.redis.ping())
