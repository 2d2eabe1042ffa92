"""ZeroMQ ROUTER endpoints driven by the asyncio loop, in bursts.

Each endpoint is a plain (non-async) socket whose file descriptor is watched
with ``loop.add_reader``. On readiness it drains up to ``MAX_BURST`` messages (``MAX_BURST_FRAMES`` frames)
with ``NOBLOCK`` until ``EAGAIN``, hands the whole burst to its handler, then
flushes every reply queued meanwhile. This avoids a future per message, which
is most of the cost of ``zmq.asyncio`` sockets on the hot path.

ZeroMQ's descriptor is edge-triggered and any socket operation (a send
included) may consume the edge, so after every burst and every flush the
endpoint re-checks ``ZMQ_EVENTS`` and schedules another drain when input is
still pending.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from typing import Any, Callable

import zmq

from schooner.transport import recv_frames, send_frames

log = logging.getLogger(__name__)

_EVENTS = int(zmq.EVENTS)  # plain ints: pyzmq's enum conversions cost more than the call itself
_POLLIN = int(zmq.POLLIN)
MAX_BURST = 512  # messages handled per drain, so one busy socket cannot starve the other
MAX_BURST_FRAMES = 4096  # and frames: a burst of many-item messages ends early, so RESULTs are read on time
SNDHWM = 100_000  # outgoing messages buffered per peer before a send would block
SPIN_BUDGET_FACTOR = 4  # one spin (extended by each message it catches) lasts at most this many windows
DROP_LOG_INTERVAL_S = 5.0  # under overload, one line per this long says how many messages were dropped


class _DropLog:
    """Counts dropped messages; logs at most one line per interval (not one per message under overload)."""

    def __init__(self, name: str, interval_s: float = DROP_LOG_INTERVAL_S) -> None:
        self.name = name
        self.interval_s = interval_s
        self.total = 0
        self._pending: dict[str, int] = {}
        self._next_s = 0.0

    def dropped(self, why: str, peer: Any) -> None:
        self.total += 1
        self._pending[why] = self._pending.get(why, 0) + 1
        now = time.monotonic()
        if now >= self._next_s:
            self._next_s = now + self.interval_s
            counts = ", ".join(f"{n} {reason}" for reason, n in self._pending.items())
            self._pending.clear()
            log.warning("%s: dropped messages (%s; latest to peer %r; next report in %.0f s at most)",
                        self.name, counts, peer, self.interval_s)


class RouterEndpoint:
    """A bound ROUTER socket whose received bursts go to ``handler(list of frame lists)``.

    ``max_message_bytes`` (-1 = no limit) is libzmq's MAXMSGSIZE: a peer sending a
    larger message is disconnected before it is buffered.
    ``on_unreachable(identity)`` is called when a send names a peer that is gone.
    ``spin_us`` > 0: after a burst that sent something, keep polling this endpoint and
    its ``flush_with`` partners without blocking for that long (each message caught
    restarts the window, up to ``SPIN_BUDGET_FACTOR`` windows) before returning to
    the loop, so a quick answer skips a sleep and a wakeup.
    """

    def __init__(self, ctx: zmq.Context, loop: asyncio.AbstractEventLoop, name: str,
                 handler: Callable[[list[list[zmq.Frame]]], None],
                 on_unreachable: Callable[[bytes], None] | None = None, spin_us: int = 0,
                 max_message_bytes: int = -1) -> None:
        if not isinstance(spin_us, int) or spin_us < 0:
            raise ValueError(f"spin_us must be an integer >= 0, got {spin_us!r}")
        self.name = name
        self.spin_ns = spin_us * 1000
        self.loop = loop
        self.handler = handler
        self.on_unreachable = on_unreachable
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, SNDHWM)
        self.sock.setsockopt(zmq.RCVHWM, SNDHWM)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # libzmq drops a larger message (and its connection) while reading it, before buffering it whole.
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.port = 0
        # Endpoints flushed right after this one's bursts, so a reply or batch that a burst
        # produced for another socket leaves now instead of one loop iteration later.
        self.flush_with: list[RouterEndpoint] = []
        self._out: list[list[Any]] = []
        self._held = False  # a burst handler is running: its end flushes, no separate flush needed
        self._flush_scheduled = False
        self._read_scheduled = False
        self._closed = False
        self.drops = _DropLog(name)
        # When a drain last found the socket empty; every message of the burst being handled came after ``burst_since``.
        self.empty_at = 0.0
        self.burst_since = 0.0

    def bind(self, host: str, port: int) -> int:
        """Bind to ``tcp://host:port`` (0 = a free port) and return the port."""
        if port == 0:
            self.port = self.sock.bind_to_random_port(f"tcp://{host}")
        else:
            self.sock.bind(f"tcp://{host}:{port}")
            self.port = port
        return self.port

    def start(self) -> None:
        """Start watching the socket on the loop."""
        self.loop.add_reader(self.sock.getsockopt(zmq.FD), self._on_readable)
        self._schedule_read()

    def send(self, frames: list[Any]) -> None:
        """Queue one message (identity frame first); sent at the end of this loop iteration."""
        self._out.append(frames)
        if not self._flush_scheduled and not self._held:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send every queued message now."""
        self._flush_scheduled = False
        if self._closed:
            self._out.clear()
            return
        out, self._out = self._out, []
        sock = self.sock
        for frames in out:
            try:
                send_frames(sock, frames)
            except zmq.Again:
                self.drops.dropped("to a peer not reading", frames[0])
            except zmq.ZMQError as err:
                if err.errno == errno.EHOSTUNREACH:
                    self.drops.dropped("to a peer gone", frames[0])
                    if self.on_unreachable is not None:
                        self.on_unreachable(bytes(frames[0]))
                else:
                    log.error("%s: send failed: %s", self.name, err)
        self._check_pending()

    def close(self) -> None:
        """Stop watching and close the socket."""
        if self._closed:
            return
        self._closed = True
        try:
            self.loop.remove_reader(self.sock.getsockopt(zmq.FD))
        except (zmq.ZMQError, ValueError, RuntimeError):
            pass
        self.sock.close(linger=0)

    def _schedule_read(self) -> None:
        if not self._read_scheduled:
            self._read_scheduled = True
            self.loop.call_soon(self._on_readable)

    def _check_pending(self) -> None:
        if not self._closed and self.sock.getsockopt(_EVENTS) & _POLLIN:
            self._schedule_read()

    def _on_readable(self) -> None:
        self._read_scheduled = False
        if self._closed:
            return
        if self._drain() and self.spin_ns:
            self._spin()

    def _spin(self) -> None:
        endpoints = (self, *self.flush_with)
        clock_ns = time.monotonic_ns
        now = clock_ns()
        until, budget_end = now + self.spin_ns, now + self.spin_ns * SPIN_BUDGET_FACTOR
        while now < until:
            caught = False
            for ep in endpoints:
                if not ep._closed and ep.sock.getsockopt(_EVENTS) & _POLLIN:
                    caught = ep._drain() or caught
            now = clock_ns()
            if caught:
                until = min(now + self.spin_ns, budget_end)
            else:
                os.sched_yield()  # lets a ZMQ I/O thread or a client sharing this core run now
                now = clock_ns()

    def _drain(self) -> bool:
        """Handle one burst and flush; whether any message was received."""
        burst: list[list[zmq.Frame]] = []
        sock = self.sock
        frames = 0
        since = self.empty_at
        try:
            while len(burst) < MAX_BURST and frames < MAX_BURST_FRAMES:
                msg = recv_frames(sock)
                burst.append(msg)
                frames += len(msg)
        except zmq.Again:
            self.empty_at = time.monotonic()
        if burst:
            self.burst_since = since
            # Sends made by the handler leave in the flushes below, not one loop iteration later.
            held = [ep for ep in (self, *self.flush_with) if not ep._held]
            for ep in held:
                ep._held = True
            try:
                self.handler(burst)
            except Exception:  # a bug in one burst must not kill the endpoint
                log.exception("%s: handler failed on a burst of %d messages", self.name, len(burst))
            finally:
                for ep in held:
                    ep._held = False
        for other in self.flush_with:
            if other._out:
                other.flush()
        if self._out:
            self.flush()
        else:
            self._check_pending()
        return bool(burst)
