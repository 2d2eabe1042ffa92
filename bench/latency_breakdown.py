"""Where a concurrency-1 ZMQ query spends its time; prints one JSON object.

Starts the real frontend and a noop replica (pinned like bench/serving_bench.py)
under a wrapper that records ``time.monotonic_ns()`` at each step, sends
sequential queries from a raw DEALER socket, and matches each query's client
send/receive times with the steps the other processes recorded in between
(CLOCK_MONOTONIC is one clock for every process on the machine). The
instrumentation is installed by monkeypatching in the wrapper only, so the
normal hot path carries none of it.

    python bench/latency_breakdown.py [--queries 2000] [--frontend-spin-us N] [--replica-spin-us N]

Stages (median, µs): hop = one message from a send in one process to the
wakeup of the blocked receiver; work = Python in one process.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_EVENTS: list[tuple[str, int]] = []


def _dump_at_exit(path: str) -> None:
    def dump() -> None:
        with open(path, "w") as fh:
            json.dump(_EVENTS, fh)
    atexit.register(dump)


def _instrument_frontend() -> None:
    from frontend import zmq_endpoints

    ns = time.monotonic_ns
    rec = _EVENTS.append
    cls = zmq_endpoints.RouterEndpoint
    orig_init, orig_readable, orig_flush = cls.__init__, cls._on_readable, cls.flush

    def __init__(self, ctx, loop, name, handler, on_unreachable=None, **kw):  # noqa: ANN001
        def traced(burst, _h=handler, _n=name):  # noqa: ANN001
            rec((f"{_n}:handler", ns()))
            return _h(burst)
        orig_init(self, ctx, loop, name, traced, on_unreachable, **kw)

    def _on_readable(self):  # noqa: ANN001
        rec((f"{self.name}:wake", ns()))
        return orig_readable(self)

    def flush(self):  # noqa: ANN001
        # Marked as the flush begins: a receiver sharing this core may run before the flush returns.
        if self._out:
            rec((f"{self.name}:sent", ns()))
        orig_flush(self)

    cls.__init__, cls._on_readable, cls.flush = __init__, _on_readable, flush


def _instrument_replica() -> None:
    from containers import replica

    ns = time.monotonic_ns
    rec = _EVENTS.append
    cls = replica.Replica
    orig_handle, orig_send = cls._handle, cls._send

    def _handle(self, link, frames):  # noqa: ANN001
        rec(("replica:recv", ns()))
        return orig_handle(self, link, frames)

    def _send(sock, frames, quiet=False):  # noqa: ANN001
        orig_send(sock, frames, quiet)
        rec(("replica:sent", ns()))

    cls._handle, cls._send = _handle, staticmethod(_send)


STAGES = [  # (name, from event, to event)
    ("hop client->frontend", "client:send", "client-router:wake"),
    ("frontend recv+parse", "client-router:wake", "client-router:handler"),
    ("frontend ingress+dispatch+send", "client-router:handler", "replica-router:sent"),
    ("hop frontend->replica", "replica-router:sent", "replica:recv"),
    ("replica decode+predict+send", "replica:recv", "replica:sent"),
    ("hop replica->frontend", "replica:sent", "replica-router:wake"),
    ("frontend recv (replica)", "replica-router:wake", "replica-router:handler"),
    ("frontend result+reply+send", "replica-router:handler", "client-router:sent"),
    ("hop frontend->client", "client-router:sent", "client:recv"),
]


def _breakdown(queries: list[tuple[int, int]], events: list[tuple[str, int]]) -> dict:
    events.sort(key=lambda e: e[1])
    times = np.array([t for _, t in events], dtype=np.int64)
    per_stage: dict[str, list[float]] = {s[0]: [] for s in STAGES}
    totals = []
    missing: dict[str, int] = {}
    for t0, t7 in queries:
        lo, hi = np.searchsorted(times, t0), np.searchsorted(times, t7, side="right")
        window = events[lo:hi]
        seen = {"client:send": t0}
        last = t0
        ok = True
        for _, _src, dst in STAGES:
            if dst == "client:recv":
                t = t7
            else:
                # The first dst after the previous step; a wake is the last one before its handler ran.
                cands = [t for name, t in window if name == dst and t >= last]
                if not cands:
                    missing[dst] = missing.get(dst, 0) + 1
                    ok = False
                    break
                t = cands[0]
            seen[dst] = t
            last = t
        if not ok:
            continue
        for name, src, dst in STAGES:
            per_stage[name].append((seen[dst] - seen[src]) / 1e3)
        totals.append((t7 - t0) / 1e3)
    out = {name: round(float(np.median(v)), 1) for name, v in per_stage.items() if v}
    hops = sum(out[n] for n in out if n.startswith("hop"))
    return {"matched_queries": len(totals), "total_p50_us": round(float(np.median(totals)), 1),
            "stages_p50_us": out, "hops_sum_us": round(hops, 1),
            "work_sum_us": round(sum(v for n, v in out.items() if not n.startswith("hop")), 1),
            "unmatched_by_step": missing}


def drive(args: argparse.Namespace) -> dict:
    import zmq

    from bench.serving_bench import _pin, free_port, wait_live
    from schooner import protocol

    ports = {"client": free_port(), "replica": free_port(), "http": free_port()}
    state = {"apps": [{"name": "bench", "input_type": "floats", "latency_slo_micros": 10_000_000}],
             "models": [{"name": "noop", "version": "1", "input_type": "floats", "batch_size": -1,
                         "max_batch_size": 64}], "links": {"bench": ["noop"]}}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "deployment.json")
        with open(path, "w") as fh:
            json.dump(state, fh)
        env = dict(os.environ, PYTHONPATH=ROOT)
        me = os.path.abspath(__file__)
        fe_cmd = [sys.executable, me, "--role", "frontend", "--events", os.path.join(tmp, "fe.json"), "--",
                  "--config", path, "--client-port", str(ports["client"]), "--replica-port", str(ports["replica"]),
                  "--http-port", str(ports["http"]), "--log-level", "WARNING"]
        rep_cmd = [sys.executable, me, "--role", "replica", "--events", os.path.join(tmp, "rep.json"), "--",
                   "--model", "noop", "--frontend", f"tcp://127.0.0.1:{ports['replica']}",
                   "--cpus", str(args.replica_cpu), "--name", "noop", "--version", "1", "--replica-id", "bench",
                   "--input-type", "floats", "--log-level", "WARNING"]
        if args.frontend_spin_us is not None:
            fe_cmd += ["--spin-us", str(args.frontend_spin_us)]
        if args.replica_spin_us is not None:
            rep_cmd += ["--spin-us", str(args.replica_spin_us)]
        fe = subprocess.Popen(fe_cmd, cwd=ROOT, env=env, preexec_fn=_pin(args.frontend_cpu))
        rep = subprocess.Popen(rep_cmd, cwd=ROOT, env=env)
        try:
            base = f"http://127.0.0.1:{ports['http']}"
            wait_live(base)
            if args.client_cpu >= 0:
                os.sched_setaffinity(0, {args.client_cpu})
            ctx = zmq.Context()
            sock = ctx.socket(zmq.DEALER)
            sock.connect(f"tcp://127.0.0.1:{ports['client']}")
            meta, frames = protocol.encode_items(np.ones((1, 8), np.float32))
            queries = []
            ns = time.monotonic_ns
            for i in range(200 + args.queries):
                msg = protocol.query(i, "bench", meta, frames)
                t0 = ns()
                sock.send_multipart(msg)
                sock.recv_multipart()
                t7 = ns()
                if i >= 200:
                    queries.append((t0, t7))
            sock.close(0)
            ctx.term()
        finally:
            for p in (rep, fe):
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        events = []
        for name in ("fe.json", "rep.json"):
            with open(os.path.join(tmp, name)) as fh:
                events += [tuple(e) for e in json.load(fh)]
    return {"setup": {"frontend_cpu": args.frontend_cpu, "replica_cpu": args.replica_cpu,
                      "client_cpu": args.client_cpu, "frontend_spin_us": args.frontend_spin_us,
                      "replica_spin_us": args.replica_spin_us},
            **_breakdown(queries, events)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=["drive", "frontend", "replica"], default="drive")
    p.add_argument("--events", help="(frontend/replica role) where to write the recorded events")
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--frontend-cpu", type=int, default=0)
    p.add_argument("--replica-cpu", type=int, default=1 if (os.cpu_count() or 1) > 1 else 0)
    p.add_argument("--client-cpu", type=int, default=0, help="-1: not pinned")
    p.add_argument("--frontend-spin-us", type=int)
    p.add_argument("--replica-spin-us", type=int)
    args, rest = p.parse_known_args()
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.role == "frontend":
        _instrument_frontend()
        _dump_at_exit(args.events)
        from frontend.__main__ import main as frontend_main
        frontend_main(rest)
    elif args.role == "replica":
        _instrument_replica()
        _dump_at_exit(args.events)
        from containers.replica import main as replica_main
        sys.exit(replica_main(rest))
    else:
        print(json.dumps(drive(args), indent=2))


if __name__ == "__main__":
    main()
