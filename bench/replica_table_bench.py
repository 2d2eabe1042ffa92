"""Replica-table churn: memory and listing time after many replicas registered and died.

Registers ``--n`` replicas with an in-process frontend (HELLO messages handed
straight to the replica handler, no sockets), loses every one of them, lets
``--later-s`` pass on a fake clock and runs one liveness round, then reports
the memory still held (tracemalloc) and the time of one replica listing (the
rows ``GET /replicas`` builds) and of one liveness round.

Runs against this tree or an older one (``cd <old tree> && PYTHONPATH=$PWD python
<this file>``): it finds the replica handler under either layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
import tracemalloc
from types import SimpleNamespace

import zmq

try:
    from schooner import protocol
    from schooner.protocol import MsgType
except ImportError:  # the tree before the schooner/ package
    from frontend import protocol  # type: ignore[no-redef]
    from frontend.protocol import MsgType  # type: ignore[no-redef]
import frontend.replica_events as replica_events
from frontend.server import Frontend


def _hello(i: int) -> list:
    hdr = protocol.header(MsgType.HELLO, replica_id=f"r{i}", model="m", version="1", input_type="floats",
                          input_shape=None, pid=0, pidns="", host="h", cpus=[0], gpu=None)
    return protocol.pack(hdr)


def main() -> None:
    """Run the churn and print one JSON line of figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="replicas registered, then lost")
    parser.add_argument("--later-s", type=float, default=120.0, help="fake time passed before the last check")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # one line per lost replica otherwise

    fe = Frontend()
    handler = getattr(fe, "replica_events", None)
    on_burst = handler.on_burst if handler else fe.dispatcher.on_replica_burst
    on_unreachable = handler.on_unreachable if handler else fe.dispatcher.on_unreachable
    check = handler.check if handler else fe.dispatcher.check_replicas
    clock = [time.monotonic()]
    replica_events.time = SimpleNamespace(monotonic=lambda: clock[0])  # type: ignore[attr-defined]

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(args.n):
        identity = f"id-{i}".encode()
        on_burst([[zmq.Frame(identity), *[zmq.Frame(f) for f in _hello(i)]]])
        on_unreachable(identity)
    clock[0] += args.later_s
    t0 = time.perf_counter()
    check(False)
    check_s = time.perf_counter() - t0
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()

    t0 = time.perf_counter()
    rows = []
    for info in fe.replicas():
        row = dataclasses.asdict(info)
        row["queue_depth"] = fe.queue_depth(info.model_name, info.model_version)
        rows.append(row)
    list_s = time.perf_counter() - t0
    print(json.dumps({"registrations": args.n, "listed": len(rows), "held_mb": round(held / 2**20, 2),
                      "list_ms": round(list_s * 1e3, 2), "check_ms": round(check_s * 1e3, 2)}))


if __name__ == "__main__":
    main()
