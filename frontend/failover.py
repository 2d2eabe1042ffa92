"""A client's links to one or more frontends: which are connected, where each query went, failover.

With several frontend addresses, :class:`frontend.client.Client` keeps one
DEALER socket per frontend and sends each query to the next connected one in
turn (so one client spreads its load). A socket monitor says when a link
connects and disconnects; ZMTP heartbeats make a frontend whose host vanished
(no TCP reset) count as disconnected after ``heartbeat_timeout_ms``. When a
link goes down, the queries it carried and that have no reply yet are sent
again on a connected link: a prediction is a read, so sending it twice is safe,
and a late reply from the first frontend is dropped as unknown.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import zmq

from schooner import curve
from zmq.utils.monitor import recv_monitor_message

from schooner.transport import recv_frames

log = logging.getLogger(__name__)

HEARTBEAT_IVL_MS = 500
HEARTBEAT_TIMEOUT_MS = 2000
_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED


def split_addresses(address: str | Sequence[str]) -> list[str]:
    """Frontend addresses from one string (comma-separated) or a sequence; ValueError if none."""
    parts = address.split(",") if isinstance(address, str) else list(address)
    addresses = [a.strip() for a in parts if isinstance(a, str) and a.strip()]
    if not addresses or len(addresses) != len(parts):
        raise ValueError(f"address must name one or more frontend addresses, got {address!r}")
    return addresses


class FrontendLinks:
    """DEALER sockets to the frontends at ``addresses``, with their connection state."""

    def __init__(self, ctx: zmq.Context, addresses: list[str], server_key: str = "") -> None:
        self.addresses = list(addresses)
        self.many = len(addresses) > 1
        self.socks: list[zmq.Socket] = []
        self._monitors: dict[zmq.Socket, int] = {}
        self.up = [not self.many] * len(addresses)  # one link: always used, whatever its state
        self.poller = zmq.Poller()
        self._turn = 0
        for i, address in enumerate(addresses):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if server_key:  # a CURVE client port: an ephemeral key pair of our own, the frontend's key checked
                curve.client_socket(sock, curve.KeyPair.generate(), server_key)
            if self.many:
                sock.setsockopt(zmq.RECONNECT_IVL, 100)
                sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
                sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
                monitor = sock.get_monitor_socket(_EVENTS)
                self._monitors[monitor] = i
                self.poller.register(monitor, zmq.POLLIN)
            sock.connect(address)
            self.socks.append(sock)
            self.poller.register(sock, zmq.POLLIN)
        self._index = {sock: i for i, sock in enumerate(self.socks)}

    def pick(self) -> int:
        """The link for the next query: the next connected one in turn (any one when none is)."""
        if not self.many:
            return 0
        n = len(self.socks)
        for k in range(n):
            i = (self._turn + k) % n
            if self.up[i]:
                self._turn = i + 1
                return i
        i = self._turn % n
        self._turn = i + 1
        return i

    def other_than(self, down: int) -> int:
        """A link to send again on after ``down`` failed: a connected one, else the next."""
        i = self.pick()
        if i == down and self.many:
            i = self.pick()
        return i

    def poll(self, timeout_ms: float) -> tuple[bool, list[int]]:
        """Wait up to ``timeout_ms`` for a reply; returns (whether one may be readable, links that went down)."""
        events = dict(self.poller.poll(max(0, timeout_ms)))  # type: ignore[arg-type]  # pyzmq takes float ms
        went_down = []
        readable = False
        for sock in events:
            i = self._monitors.get(sock)
            if i is None:
                readable = True
                continue
            went_down.extend(self._on_monitor(sock, i))
        return readable, went_down

    def _on_monitor(self, monitor: zmq.Socket, i: int) -> list[int]:
        down = []
        while monitor.poll(0):
            try:
                event = recv_monitor_message(monitor)["event"]
            except (zmq.ZMQError, KeyError, ValueError):
                break
            if event in (zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                if not self.up[i]:
                    log.info("frontend %s connected", self.addresses[i])
                self.up[i] = True
            elif event == zmq.EVENT_DISCONNECTED and self.up[i]:
                log.warning("frontend %s disconnected; failing over", self.addresses[i])
                self.up[i] = False
                down.append(i)
        return down

    def recv_nowait(self) -> Any:
        """(link index, frames) of a message already here on any link, else None."""
        n = len(self.socks)
        for k in range(n):
            i = (self._turn + k) % n
            try:
                return i, recv_frames(self.socks[i])
            except zmq.Again:
                continue
        return None

    def close(self) -> None:
        """Close every socket and monitor."""
        for sock in self.socks:
            if not sock.closed:
                if self.many:
                    try:
                        sock.disable_monitor()
                    except zmq.ZMQError:
                        pass
                sock.close(linger=0)
        for monitor in self._monitors:
            monitor.close(linger=0)
