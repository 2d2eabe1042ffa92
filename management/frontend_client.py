"""The frontend's view of the replicas (``GET /replicas``), merged into the manager's records."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Callable

import aiohttp

from management.store import ReplicaRecord
from schooner.types import SERVING_REPLICA_STATES, ReplicaState

log = logging.getLogger(__name__)

_GONE = frozenset({"dead", "stopped"})

SERVING = frozenset(s.value for s in SERVING_REPLICA_STATES)


class FrontendView:
    """Reads the frontend's replica table over HTTP; an unreachable frontend reads as empty.

    ``others`` (blocking; run in a thread) names the HTTP URLs of the other frontends of the
    deployment (Redis's frontend directory): when the configured one cannot be reached, the
    first of them that answers is read instead, so the manager keeps its view while one
    frontend is down.
    """

    def __init__(self, frontend_http_url: str, timeout_s: float,
                 others: Callable[[], list[str]] | None = None) -> None:
        self.url = frontend_http_url.rstrip("/")
        self.timeout_s = timeout_s
        self.others = others
        self._http: aiohttp.ClientSession | None = None

    async def rows(self) -> dict[str, dict]:
        """replica_id -> the frontend's row from GET /replicas; empty when no frontend can be reached."""
        if not self.url:
            return {}
        rows = await self._rows(self.url)
        if rows is None and self.others is not None:
            try:
                urls = await asyncio.to_thread(self.others)
            except Exception as err:  # noqa: BLE001 - the directory is a fallback; its failure is not ours
                log.debug("cannot list the other frontends: %s", err)
                urls = []
            for url in urls:
                if url.rstrip("/") != self.url:
                    rows = await self._rows(url.rstrip("/"))
                    if rows is not None:
                        break
        return rows or {}

    async def _rows(self, url: str) -> dict[str, dict] | None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        try:
            async with self._http.get(f"{url}/replicas") as resp:
                if resp.status != 200:
                    log.debug("frontend GET %s/replicas answered %s", url, resp.status)
                    return None
                body = await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError, ValueError) as err:
            log.debug("frontend GET %s/replicas failed: %s", url, err)
            return None
        rows = body.get("replicas", []) if isinstance(body, dict) else body
        out: dict[str, dict] = {}
        for row in rows:
            if not isinstance(row, dict) or "replica_id" not in row:
                continue
            old = out.get(row["replica_id"])
            # A replica that registered again is listed twice: its live registration is the one that counts.
            if old is None or old.get("state") in _GONE or row.get("state") not in _GONE:
                out[row["replica_id"]] = row
        return out

    async def close(self) -> None:
        """Close the HTTP session (a later :meth:`rows` opens a new one)."""
        if self._http is not None:
            await self._http.close()
            self._http = None


def public(record: ReplicaRecord) -> dict:
    """A replica record as the REST API shows it: without the manager's private fields."""
    out = record.to_dict()
    out.pop("seq", None)
    return out


def merge(record: ReplicaRecord, row: dict | None) -> dict:
    """A replica record with the frontend's state, queue depth, batch count and heartbeat."""
    out = public(record)
    if row:
        out["state"] = row.get("state", out["state"])
        out["queue_depth"] = row.get("queue_depth", 0)
        out["batches_done"] = row.get("batches_done", 0)
        if row.get("last_heartbeat_s"):
            out["last_heartbeat"] = wall_time(float(row["last_heartbeat_s"]))
    else:
        out["queue_depth"] = 0
        out["batches_done"] = 0
        if out["state"] in SERVING:  # the frontend no longer knows it
            out["state"] = ReplicaState.STARTING.value
    return out


def wall_time(monotonic_s: float) -> float:
    """A CLOCK_MONOTONIC instant of this host (shared by its processes) as wall-clock seconds."""
    return time.time() - max(0.0, time.monotonic() - monotonic_s)
