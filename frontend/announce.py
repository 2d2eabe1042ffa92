"""A frontend announces itself in Redis's frontend directory and learns its peers from it.

Run as a task next to the follower (``python -m frontend --redis-url``). Every
``interval_s`` it refreshes this frontend's record (its client, HTTP and replica
addresses; the record expires after ``ttl_s`` without a refresh) and reads the
live frontends; their replica addresses go to :meth:`Frontend.set_peers`, which
tells every replica (WELCOME and heartbeats carry the list), so replicas connect
to frontends that join and let go of those that leave. While Redis is down the
frontend keeps its last list. On a clean stop the record is withdrawn at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Any

import redis

from management.errors import StoreUnavailable
from management.store import FrontendDirectory
from schooner import defaults

log = logging.getLogger(__name__)

_SOCKET_TIMEOUT_S = 5.0
_ANY_HOST = ("0.0.0.0", "::", "*", "")


def advertised_host(bind_host: str, advertise_host: str = "") -> str:
    """The host name others reach this frontend by: ``advertise_host``, else the bind host unless it is a
    wildcard, else this machine's address."""
    if advertise_host:
        return advertise_host
    if bind_host not in _ANY_HOST:
        return bind_host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return socket.gethostname()


def directory_record(frontend: Any, frontend_id: str) -> dict:
    """What ``frontend`` (started) announces: its id and the addresses others reach it at."""
    host = advertised_host(frontend.config.host, getattr(frontend.config, "advertise_host", ""))
    return {"frontend_id": frontend_id, "client": f"tcp://{host}:{frontend.client_port}",
            "replica": f"tcp://{host}:{frontend.replica_port}",
            "http": "" if frontend.http_port is None else
            f"{'https' if getattr(frontend.config, 'tls_cert_file', '') else 'http'}://{host}:{frontend.http_port}",
            "host": socket.gethostname(), "pid": os.getpid(), "started_s": time.time()}


async def _wait(stop: asyncio.Event, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout_s)
    except asyncio.TimeoutError:
        pass


async def announce(frontend: Any, redis_url: str, stop: asyncio.Event, *, frontend_id: str = "",
                   interval_s: float = defaults.FRONTEND_ANNOUNCE_INTERVAL_S,
                   ttl_s: float = defaults.FRONTEND_TTL_S,
                   prefix: str = defaults.REDIS_KEY_PREFIX) -> None:
    """Keep ``frontend`` announced in Redis and its peer list current until ``stop`` is set."""
    if interval_s <= 0 or ttl_s <= interval_s:
        raise ValueError("need 0 < interval_s < ttl_s")
    fid = frontend_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    record = directory_record(frontend, fid)
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=_SOCKET_TIMEOUT_S,
                                  socket_connect_timeout=_SOCKET_TIMEOUT_S)
    directory = FrontendDirectory(client, prefix=prefix)
    down = False
    log.info("announcing frontend %s in Redis: %s", fid, record)
    try:
        while not stop.is_set():
            try:
                await asyncio.to_thread(directory.announce, record, ttl_s)
                rows = await asyncio.to_thread(directory.live)
                frontend.set_peers(sorted({r["replica"] for r in rows if r.get("replica")} | {record["replica"]}),
                                   own=record["replica"])
                if down:
                    log.info("Redis is back; frontend %s announced again", fid)
                    down = False
            except StoreUnavailable as err:
                if not down:
                    log.warning("cannot announce frontend %s (%s); keeping the last peer list", fid, err)
                    down = True
            await _wait(stop, interval_s)
    finally:
        try:
            await asyncio.to_thread(directory.withdraw, fid)
        except StoreUnavailable:
            pass  # the record expires on its own
        client.close()
