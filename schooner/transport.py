"""Multipart send and receive without pyzmq's per-frame Python overhead.

``Socket.send_multipart`` type-checks every frame and builds ``SNDMORE | flags``
as an ``IntFlag`` (an enum construction) per frame; ``recv_multipart`` calls
``getsockopt(RCVMORE)`` per frame. On the hot path that was about a tenth of
the frontend's CPU. These call the Cython socket methods with plain int flags
and read ``Frame.more`` instead. Semantics are the same: a multipart message is
queued atomically, so only its first frame can raise ``zmq.Again`` (or
``EHOSTUNREACH`` on a ROUTER_MANDATORY socket).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import zmq

_base_send = zmq.backend.Socket.send
_base_recv = zmq.backend.Socket.recv
NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE) | NOBLOCK
_MORE = int(zmq.SNDMORE)


def send_frames(sock: zmq.Socket, frames: Sequence[Any], noblock: bool = True) -> None:
    """Send ``frames`` as one message without copying (pyzmq still copies small frames)."""
    more = _MORE_NOBLOCK if noblock else _MORE
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _base_send(sock, frame, more if i < last else more & ~_MORE, False)


def recv_frames(sock: zmq.Socket, flags: int = NOBLOCK) -> list[zmq.Frame]:
    """Receive one whole message as zmq.Frames; ``zmq.Again`` when none is waiting (NOBLOCK)."""
    frame = _base_recv(sock, flags, False)
    parts = [frame]
    while frame.more:
        frame = _base_recv(sock, 0, False)
        parts.append(frame)
    return parts


def set_io_thread_policy(ctx: zmq.Context) -> None:
    """Run ``ctx``'s ZMQ I/O threads under SCHED_BATCH (call before its first socket).

    A message sent wakes the context's I/O thread; as a normal thread, the
    woken thread preempts the sender at once when they share a core, so every
    message cost two context switches and the sender's burst was cut into one
    wakeup per message. A SCHED_BATCH thread does not preempt on wakeup: it runs
    when the sender blocks (or at the next tick) and writes the whole burst.
    ``SCHOONER_ZMQ_IO_POLICY=normal`` keeps the default policy.
    """
    policy = os.environ.get("SCHOONER_ZMQ_IO_POLICY", "batch")
    if policy not in ("batch", "normal"):
        raise ValueError(f"SCHOONER_ZMQ_IO_POLICY must be 'batch' or 'normal', got {policy!r}")
    if policy == "batch" and hasattr(os, "SCHED_BATCH"):
        ctx.set(zmq.THREAD_SCHED_POLICY, os.SCHED_BATCH)
