"""The directory of live frontends: each frontend announces itself here; clients, replicas and HAProxy read it.

A frontend writes one hash (id, client/HTTP/replica addresses, host, pid,
``heartbeat_s``) with a TTL and adds its id to a set; it re-announces every
:data:`schooner.defaults.FRONTEND_ANNOUNCE_INTERVAL_S`. A frontend that dies
stops announcing and its hash expires; readers drop ids whose hash is gone.
Nothing here is on the query path: a frontend announces once a second.
"""

from __future__ import annotations

import time

import redis

from schooner import defaults
from management.store.codec import text
from management.store.connection import Connection, translated

FIELDS = ("frontend_id", "client", "http", "replica", "host", "pid", "heartbeat_s", "started_s")


class FrontendDirectory:
    """Announce, withdraw and list frontends."""

    def __init__(self, client: redis.Redis | Connection, *, prefix: str = defaults.REDIS_KEY_PREFIX) -> None:
        conn = client if isinstance(client, Connection) else Connection(client, prefix=prefix)
        self._r = conn.redis
        self._k = conn.keys

    @translated
    def announce(self, record: dict, ttl_s: float) -> None:
        """Create or refresh a frontend's record; it expires ``ttl_s`` after the last call."""
        fid = record.get("frontend_id")
        if not isinstance(fid, str) or not fid:
            raise ValueError("record needs a non-empty string frontend_id")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        row = {k: str(v) for k, v in record.items() if k in FIELDS and v is not None}
        row["heartbeat_s"] = f"{time.time():.3f}"
        key = self._k.frontend(fid)
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(key, mapping=row)
        pipe.pexpire(key, int(ttl_s * 1000))
        pipe.sadd(self._k.frontends, fid)
        pipe.execute()

    @translated
    def withdraw(self, frontend_id: str) -> None:
        """Remove a frontend at once (a clean shutdown)."""
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._k.frontend(frontend_id))
        pipe.srem(self._k.frontends, frontend_id)
        pipe.execute()

    @translated
    def live(self) -> list[dict]:
        """Every frontend whose record has not expired, by id; expired ids are dropped from the set."""
        ids = sorted(text(i) for i in self._r.smembers(self._k.frontends))
        if not ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for fid in ids:
            pipe.hgetall(self._k.frontend(fid))
        rows = pipe.execute()
        live, gone = [], []
        for fid, raw in zip(ids, rows):
            if not raw:
                gone.append(fid)
                continue
            row = {text(k): text(v) for k, v in raw.items()}
            for k in ("pid",):
                if k in row:
                    row[k] = int(row[k])
            for k in ("heartbeat_s", "started_s"):
                if k in row:
                    row[k] = float(row[k])
            live.append(row)
        if gone:
            self._r.srem(self._k.frontends, *gone)
        return live

    def addresses(self, kind: str) -> list[str]:
        """The ``kind`` ("client", "http" or "replica") address of every live frontend."""
        if kind not in ("client", "http", "replica"):
            raise ValueError(f"kind must be client, http or replica, got {kind!r}")
        return [row[kind] for row in self.live() if row.get(kind)]
