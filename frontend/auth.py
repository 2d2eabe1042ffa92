"""ZAP: which CURVE keys may talk to the frontend, and who each one is.

The frontend's replica port is a CURVE server. libzmq asks the ZAP handler
here (a REP socket on ``inproc://zeromq.zap.01`` of the frontend's context,
served by a thread of its own) about each new connection; it accepts a key
only if the manager registered it for a replica record, and answers with that
replica's id as the connection's User-Id. Every message on that connection
then carries the id, and :mod:`frontend.replica_events` refuses a HELLO, BYE
or heartbeat that names another replica.

Keys come from :meth:`ZapHandler.set_replica_keys` (the follower loads them
from Redis) and, for a key not known yet (a replica started a moment ago),
from ``lookup(public_key)``, asked at most ``MISS_LOOKUPS_PER_S`` times a
second so a flood of strangers cannot turn into a flood of Redis reads.

The client port may be a CURVE server too (domain ``client``): then any key in
``client_keys`` may connect, or every key when that set is empty (encryption
without client authentication).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import zmq
from zmq.utils import z85

from schooner.curve import CLIENT_DOMAIN, REPLICA_DOMAIN

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
MISS_LOOKUPS_PER_S = 20
_POLL_MS = 200


class ZapHandler:
    """Authenticates CURVE connections to the frontend's sockets (a thread; start, then stop)."""

    def __init__(self, ctx: zmq.Context, lookup: Callable[[str], str | None] | None = None) -> None:
        self.ctx = ctx
        self.lookup = lookup
        self._replica_keys: dict[str, str] = {}  # z85 public key -> replica id (replaced, never mutated)
        self.client_keys: frozenset[str] = frozenset()
        self.denied = 0
        self._miss_budget = float(MISS_LOOKUPS_PER_S)
        self._miss_at = time.monotonic()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def set_replica_keys(self, keys: dict[str, str]) -> None:
        """Replace the registered keys: z85 public key -> replica id."""
        self._replica_keys = dict(keys)

    def add_replica_key(self, public_key: str, replica_id: str) -> None:
        """Register one replica's key (tests, frontends without Redis)."""
        keys = dict(self._replica_keys)
        keys[public_key] = replica_id
        self._replica_keys = keys

    def replica_for(self, public_key: str) -> str | None:
        """The replica id registered for ``public_key``, asking ``lookup`` (rate-limited) when unknown."""
        rid = self._replica_keys.get(public_key)
        if rid is not None or self.lookup is None:
            return rid
        now = time.monotonic()
        self._miss_budget = min(MISS_LOOKUPS_PER_S, self._miss_budget + (now - self._miss_at) * MISS_LOOKUPS_PER_S)
        self._miss_at = now
        if self._miss_budget < 1:
            return None
        self._miss_budget -= 1
        try:
            rid = self.lookup(public_key)
        except Exception as err:  # noqa: BLE001 - Redis away: refuse this time, the peer retries
            log.warning("replica key lookup failed: %s", err)
            return None
        if rid:
            self.add_replica_key(public_key, rid)
        return rid

    def start(self) -> ZapHandler:
        """Bind the ZAP endpoint and serve it on a thread."""
        self._thread = threading.Thread(target=self._run, name="zap", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise OSError(f"cannot start the ZAP handler: {self._error}") from self._error
        return self

    def stop(self) -> None:
        """Stop the thread and close its socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        try:
            sock = self.ctx.socket(zmq.REP)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as err:
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(_POLL_MS):
                    continue
                request = sock.recv_multipart()
                try:
                    reply = self._answer(request)
                except Exception:  # a bug must not leave libzmq waiting: refuse this one
                    log.exception("ZAP request failed")
                    reply = [b"1.0", request[1] if len(request) > 1 else b"", b"500", b"internal error", b"", b""]
                sock.send_multipart(reply)
        finally:
            sock.close(linger=0)

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6:
            return [b"1.0", request[1] if len(request) > 1 else b"", b"400", b"malformed", b"", b""]
        version, request_id, domain, address, _identity, mechanism = request[:6]
        credentials = request[6:]

        def reply(status: bytes, text: bytes, user: str = "") -> list[bytes]:
            return [version, request_id, status, text, user.encode(), b""]

        if mechanism != b"CURVE" or len(credentials) != 1:
            return reply(b"400", b"CURVE required")
        key = z85.encode(credentials[0]).decode("ascii")
        if domain == REPLICA_DOMAIN.encode():
            rid = self.replica_for(key)
            if rid is None:
                self.denied += 1
                log.warning("refused a replica connection from %s: key %s... is not registered",
                            address.decode(errors="replace"), key[:8])
                return reply(b"400", b"key not registered")
            return reply(b"200", b"OK", rid)
        if domain == CLIENT_DOMAIN.encode():
            if self.client_keys and key not in self.client_keys:
                self.denied += 1
                return reply(b"400", b"client key not allowed")
            return reply(b"200", b"OK", "client:" + key)
        return reply(b"400", b"unknown domain")
