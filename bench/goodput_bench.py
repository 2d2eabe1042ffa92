"""Goodput under open-loop load, adaptive batching beside the best fixed batch size; prints one JSON object.

For each model (``sleep`` a + b·n ms, and ``elastic-net``) one frontend serves
one app per batching policy (adaptive, and each fixed size of the sweep), each
model version with its own replica. Open-loop Poisson load at multiples of the
model's capacity goes to one app at a time, over ZMQ and over HTTP, for a few
seconds per point. Per point: goodput (real answers within the objective per
second), p50/p99 of real answers, the share shed (429 overloaded, or a default
output at arrival), how long a shed query took to be answered, and the share of
every other non-real answer answered within 2 ms.

Capacity is the throughput of the batch size whose processing fits half the
objective (``sleep``: from a and b; ``elastic-net``: measured first with a
closed loop). ``--baseline REF`` runs the adaptive policy of REF's tree (a
``git worktree``, driven through its CLIs) in the same run, so before and after
share the machine's noise. Also: concurrency 1 with a 5 ms batch wait beside the
same model with none (what the wait rule costs a lone query) and against the
model's own latency; and the shed floor: how soon an app whose every query is
shed at once is answered, the least any non-real answer can take here.

    python bench/goodput_bench.py [--seconds 3] [--baseline ce29f36] [--models sleep elastic-net]

Keep points short on a shared machine (the default is 3 s each).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.parse
from typing import Any

import msgpack
import numpy as np
import orjson
import requests
import uvloop
import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from management.embedded_redis import free_port  # noqa: E402

_pack = msgpack.Packer(use_bin_type=True).pack


def _pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)) * 1e3, 2) if xs else None


class Deployment:
    """A frontend and one replica per policy, from one tree (``root``), on free loopback ports."""

    def __init__(self, root: str, model: dict, policies: list[dict], slo_us: int, tmp: str) -> None:
        self.root = root
        self.ports = {"client": free_port(), "replica": free_port(), "http": free_port()}
        apps, models, links = [], [], {}
        for p in policies:
            name = p["name"]
            apps.append({"name": name, "input_type": "floats", "latency_slo_micros": p.get("slo_us", slo_us),
                         "default_output": "default"})
            models.append({"name": name, "version": "1", "input_type": "floats", "batch_size": p["batch_size"],
                           "max_batch_size": p.get("max_batch_size", 64),
                           "batch_wait_timeout_micros": p.get("wait_us", 0), "max_queue_size": 100_000})
            links[name] = [name]
        path = os.path.join(tmp, f"deploy-{os.path.basename(root)}-{model['name']}.json")
        with open(path, "w") as fh:
            json.dump({"apps": apps, "models": models, "links": links}, fh)
        env = dict(os.environ, PYTHONPATH=root)
        env.pop("SCHOONER_OWNS_CORES", None)
        self.procs = [subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, "-m", "frontend", "--config", path,
             "--client-port", str(self.ports["client"]), "--replica-port", str(self.ports["replica"]),
             "--http-port", str(self.ports["http"]), "--log-level", "ERROR"], cwd=root, env=env)]
        for i, p in enumerate(policies):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "containers.replica", "--model", model["zoo"], "--frontend",
                 f"tcp://127.0.0.1:{self.ports['replica']}", "--cpus", "1", "--name", p["name"], "--version", "1",
                 "--replica-id", f"r{i}", "--input-type", "floats", "--model-opts", json.dumps(model["opts"]),
                 "--log-level", "ERROR"], cwd=root, env=env))
        self.base = f"http://127.0.0.1:{self.ports['http']}"
        self.zmq = f"tcp://127.0.0.1:{self.ports['client']}"
        self._wait(len(policies))

    def _wait(self, n: int, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if requests.get(self.base + "/health", timeout=1).json()["live_replicas"] >= n:
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError(f"{self.root}: frontend or replicas did not come up")

    def model_latency_p50_ms(self, app: str) -> float | None:
        dump = requests.get(self.base + "/metrics", timeout=5).json()
        for entry in dump.get("histograms", []):
            if f"model:{app}:1:prediction_latency" in entry:
                return round(float(entry[f"model:{app}:1:prediction_latency"]["p50"]) / 1e3, 3)
        return None

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _classify(outcomes: list[tuple], seconds: float, slo_s: float, offered: float) -> dict:
    """Figures of one point from (kind, latency_s) outcomes: kind real/shed/default/error/lost."""
    real = [lat for kind, lat in outcomes if kind == "real"]
    within = [lat for lat in real if lat <= slo_s]
    shed = [lat for kind, lat in outcomes if kind == "shed"]
    other = [lat for kind, lat in outcomes if kind not in ("real",)]
    n = max(1, len(outcomes))
    return {"offered_qps": round(offered, 1), "sent": len(outcomes),
            "goodput_qps": round(len(within) / seconds, 1),
            "throughput_with_defaults_qps": round(sum(1 for k, _ in outcomes if k in ("real", "default")) / seconds, 1),
            "real_p50_ms": _pct(real, 50), "real_p99_ms": _pct(real, 99),
            "shed_share": round(len(shed) / n, 4), "shed_answer_p50_ms": _pct(shed, 50),
            "shed_answer_p99_ms": _pct(shed, 99),
            "late_default_share": round(sum(1 for k, _ in outcomes if k == "default") / n, 4),
            "other_within_2ms_share": round(sum(1 for lat in other if lat <= 0.002) / len(other), 4) if other else None,
            "lost": sum(1 for k, _ in outcomes if k == "lost")}


def zmq_open_loop(address: str, app: str, rate: float, seconds: float, x: np.ndarray, seed: int) -> list[tuple]:
    """Poisson arrivals at ``rate`` for ``seconds`` over one DEALER; waits up to 5 s for the last answers."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(address)
    meta = {"list": [["a", x.dtype.str, list(x.shape)]]}
    payload = x.tobytes()
    rng = random.Random(seed)
    sent: dict[int, float] = {}
    out: list[tuple] = []
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    start = time.monotonic()
    next_at, rid = start, 0
    end = start + seconds

    def drain(timeout_ms: float) -> None:
        while poller.poll(timeout_ms):
            frames = sock.recv_multipart()
            now = time.monotonic()
            hdr = msgpack.unpackb(frames[0], raw=False)
            t0 = sent.pop(hdr.get("id"), None)
            if t0 is None:
                continue
            if hdr.get("type") == "error":
                out.append(("shed" if hdr.get("code") == "overloaded" else "error", now - t0))
            elif hdr.get("default"):
                why = hdr.get("default_explanation") or ""
                out.append(("shed" if why.startswith("overloaded") else "default", now - t0))
            else:
                out.append(("real", now - t0))
            timeout_ms = 0

    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= next_at:
            rid += 1
            sock.send_multipart([_pack({"v": 1, "type": "query", "id": rid, "app": app, "items": meta}), payload],
                                copy=False)
            sent[rid] = now
            next_at += rng.expovariate(rate)
            continue
        drain(max(0.0, (next_at - now) * 1e3))
    deadline = time.monotonic() + 5
    while sent and time.monotonic() < deadline:
        drain(50)
    out.extend(("lost", 0.0) for _ in sent)
    sock.close()
    return out


class _HttpConn(asyncio.Protocol):
    """One keep-alive connection of the open-loop HTTP generator: requests out, answers classified."""

    def __init__(self, sink: "_HttpLoad") -> None:
        self.sink = sink
        self.buf = bytearray()
        self.pending: collections.deque[float] = collections.deque()  # send times, oldest first
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sink.idle.append(self)

    def send(self, request: bytes, now: float) -> None:
        assert self.transport is not None
        self.pending.append(now)
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
            total = end + 4 + length
            if len(buf) < total:
                return
            status = int(head[9:12])
            body = bytes(buf[end + 4:total])
            del buf[:total]
            self.sink.answer(status, body, time.monotonic() - self.pending.popleft())
            if not self.pending:
                self.sink.idle.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink.lost(self)


class _HttpLoad:
    """What the connections report to: outcomes, and which connections have nothing outstanding."""

    def __init__(self) -> None:
        self.out: list[tuple] = []
        self.idle: list[_HttpConn] = []
        self.outstanding = 0
        self.pipelined = 0

    def answer(self, status: int, body: bytes, latency_s: float) -> None:
        self.outstanding -= 1
        if status == 429:
            self.out.append(("shed", latency_s))
        elif status != 200:
            self.out.append(("error", latency_s))
        else:
            data = orjson.loads(body)
            if data.get("default"):
                why = data.get("default_explanation") or ""
                self.out.append(("shed" if why.startswith("overloaded") else "default", latency_s))
            else:
                self.out.append(("real", latency_s))

    def lost(self, conn: _HttpConn) -> None:
        self.outstanding -= len(conn.pending)
        self.out.extend(("lost", 0.0) for _ in conn.pending)
        conn.pending.clear()
        if conn in self.idle:
            self.idle.remove(conn)


async def _http_open_loop(url: str, app: str, rate: float, seconds: float, x: np.ndarray, seed: int,
                          connections: int) -> tuple[list[tuple], int]:
    parts = urllib.parse.urlsplit(url)
    body = json.dumps({"input": x.tolist()}).encode()
    request = (f"POST /{app}/predict HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    load = _HttpLoad()
    conns = [(await loop.create_connection(lambda: _HttpConn(load), parts.hostname, parts.port))[1]
             for _ in range(connections)]
    rng = random.Random(seed)
    start = time.monotonic()
    next_at, end = start, start + seconds
    while next_at < end:
        now = time.monotonic()
        while next_at <= now:  # every arrival that is due, each on a connection of its own if one is free
            if load.idle:
                conn = load.idle.pop()
            else:  # all busy: behind the one with the least outstanding (counted, to be reported)
                conn = min(conns, key=lambda c: len(c.pending))
                load.pipelined += 1
            conn.send(request, now)
            load.outstanding += 1
            next_at += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    deadline = time.monotonic() + 30
    while load.outstanding > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for conn in conns:
        load.out.extend(("lost", 0.0) for _ in conn.pending)
        conn.pending.clear()
        if conn.transport is not None:
            conn.transport.close()
    return load.out, load.pipelined


def http_open_loop(url: str, app: str, rate: float, seconds: float, x: np.ndarray, seed: int,
                   connections: int = 256) -> list[tuple]:
    """Poisson arrivals at ``rate`` over HTTP/1.1: ``connections`` keep-alive connections opened
    first, each request on one with nothing outstanding (behind the least busy one only when
    none is free, which is counted), the requests pre-encoded and the answers parsed with no
    client library, on uvloop: the aiohttp client this replaced offered at most ~1,500 q/s here."""
    out, pipelined = uvloop.run(_http_open_loop(url, app, rate, seconds, x, seed, connections))
    if pipelined:
        print(json.dumps({"http_generator_pipelined": pipelined, "app": app, "rate": rate}), file=sys.stderr)
    return out


def closed_loop_c1(dep: Deployment, app: str, x: np.ndarray, n: int) -> tuple[list[float], int]:
    """Latencies (s) of the answered of ``n`` one-at-a-time HTTP queries on one keep-alive
    connection, and how many were not answered 200 (a 429 when a stall of the machine made the
    frontend shed a lone query: counted, not timed).

    The body is encoded once, outside the timing, and the client is
    ``http.client``: a requests Session spent ~1 ms of this VM's time per query
    of its own (header merging, adapters, response decoding), which the
    figure would have charged to the server.
    """
    body = json.dumps({"input": x.tolist()}).encode()
    headers = {"Content-Type": "application/json"}
    url = urllib.parse.urlsplit(dep.base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    lat, refused = [], 0
    try:
        for _ in range(n):
            t0 = time.monotonic()
            conn.request("POST", f"/{app}/predict", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                lat.append(time.monotonic() - t0)
            else:
                refused += 1
    finally:
        conn.close()
    return lat, refused


def c1_wait_rule(dep: Deployment, x: np.ndarray, n: int, blocks: int = 6) -> dict:
    """Concurrency 1 over HTTP with a 5 ms batch wait beside the same model with none, in
    alternating blocks (so both share the machine's noise): what the wait rule costs a lone
    query (``wait_rule_cost_ms``), and how far each is from the model's own latency (the
    frontend's round trip to its replica), which also holds the HTTP path's own cost at c=1."""
    lat: dict[str, list[float]] = {"wait5ms": [], "wait0": []}
    refused = {app: 0 for app in lat}
    for _ in range(blocks):
        for app, xs in lat.items():
            answered, no = closed_loop_c1(dep, app, x, max(1, n // blocks))
            xs.extend(answered)
            refused[app] += no
    p50, p50_none = _pct(lat["wait5ms"], 50), _pct(lat["wait0"], 50)
    model_p50 = dep.model_latency_p50_ms("wait5ms")
    cost = round(p50 - p50_none, 2) if p50 is not None and p50_none is not None else None
    over = round(p50 - model_p50, 2) if p50 is not None and model_p50 is not None else None
    return {"p50_ms": p50, "p50_no_wait_ms": p50_none, "model_latency_p50_ms": model_p50,
            "model_latency_no_wait_p50_ms": dep.model_latency_p50_ms("wait0"),
            "wait_rule_cost_ms": cost, "over_model_latency_ms": over, "not_200": refused,
            "targets_met": {"wait_rule_costs_le_1ms": cost is not None and cost <= 1.0,
                            "within_1ms_of_model_latency": over is not None and over <= 1.0}}


def _open_loop(dep: Deployment, transport: str) -> tuple[Any, str]:
    """The open-loop generator of ``transport`` and the address of ``dep`` it drives."""
    return (zmq_open_loop, dep.zmq) if transport == "zmq" else (http_open_loop, dep.base)


def shed_floor(dep: Deployment, transport: str, capacity: float, args: argparse.Namespace,
               x: np.ndarray) -> dict:
    """How soon this machine answers a query that the frontend sheds at once (app ``floor``,
    whose objective no batch meets), at 1x and 10x of capacity: the floor under the target
    that every answer that is not a real one comes within 2 ms (the generator, the frontend
    and the replica share two cores)."""
    run, url = _open_loop(dep, transport)
    run(url, "floor", 50, 1.0, x, 99)  # learns the model's cost
    out = {}
    for load in (1, 10):
        rate = min(load * capacity, args.http_max_qps if transport == "http" else args.zmq_max_qps)
        shed = [lat for kind, lat in run(url, "floor", rate, args.seconds, x, 100 + load) if kind == "shed"]
        out[f"{load}x"] = {"offered_qps": round(rate, 1), "shed": len(shed), "p50_ms": _pct(shed, 50),
                           "p99_ms": _pct(shed, 99),
                           "within_2ms_share": round(sum(1 for lat in shed if lat <= 0.002) / len(shed), 4)
                           if shed else None}
    return out


def measured_capacity(dep: Deployment, app: str, x: np.ndarray, seconds: float) -> float:
    """Real answers per second of a closed loop of 64 over ZMQ (the model's capacity at that batch)."""
    out = zmq_open_loop(dep.zmq, app, 3_000, seconds, x, 1)  # over capacity: a full queue throughout
    return sum(1 for k, _ in out if k == "real") / seconds


MODELS = {
    # sleep: a + b·n ms per batch of n. With the objective of 100 ms, a batch of n fits half of it up to
    # n = (50 - a) / b = 15, whose capacity is 15 / 50 ms = 300 q/s.
    "sleep": {"name": "sleep", "zoo": "sleep", "opts": {"a_ms": 20, "b_ms": 2}, "slo_us": 100_000, "dim": 4,
              "fixed": [4, 8, 15, 24, 32]},
    "elastic-net": {"name": "elastic-net", "zoo": "elastic-net", "opts": {}, "slo_us": 20_000, "dim": 4096,
                    "fixed": [1, 4, 16, 32]},
}


def run_model(args: argparse.Namespace, model: dict, tmp: str, result: dict) -> None:
    slo_s = model["slo_us"] * 1e-6
    x = np.random.default_rng(0).standard_normal(model["dim"]).astype(np.float32)
    policies = [{"name": "adaptive", "batch_size": -1}] + [{"name": f"fixed{n}", "batch_size": n}
                                                          for n in model["fixed"]]
    policies.append({"name": "wait5ms", "batch_size": -1, "max_batch_size": 32, "wait_us": 5000})
    policies.append({"name": "wait0", "batch_size": -1, "max_batch_size": 32, "wait_us": 0})
    # The shed answer's floor: an objective no batch meets, so (once its curve is known) every query is shed.
    policies.append({"name": "floor", "batch_size": 1, "slo_us": 1000})
    trees = [("after", ROOT)] + ([("before", args.baseline_root)] if args.baseline_root else [])
    deps = {}
    try:
        for label, root in trees:
            pol = policies if label == "after" else [p for p in policies if p["name"] in ("adaptive", "wait5ms", "wait0")]
            deps[label] = Deployment(root, model, pol, model["slo_us"], tmp)
        after = deps["after"]
        if model["name"] == "sleep":
            a, b = model["opts"]["a_ms"] * 1e-3, model["opts"]["b_ms"] * 1e-3
            n_half = int((slo_s / 2 - a) / b)
            capacity = n_half / (a + b * n_half)
        else:  # measured: the best fixed size's saturated throughput, over ZMQ
            capacity = max(measured_capacity(after, f"fixed{n}", x, args.seconds) for n in model["fixed"])
        capacity = max(capacity, 1.0)
        result["capacity_qps"][model["name"]] = round(capacity, 1)
        rows = result["points"]
        seed = 0
        for transport in args.transports:
            for load in args.loads:
                rate = min(load * capacity, args.http_max_qps if transport == "http" else args.zmq_max_qps)
                for label, dep in deps.items():
                    names = ["adaptive"] + ([f"fixed{n}" for n in model["fixed"]] if label == "after" else [])
                    for app in names:
                        seed += 1
                        run, url = _open_loop(dep, transport)
                        out = run(url, app, rate, args.seconds, x, seed)
                        row = {"tree": label, "model": model["name"], "transport": transport, "load_x": load,
                               "policy": app, **_classify(out, args.seconds, slo_s, rate)}
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
                        time.sleep(0.5)  # let the queue drain between points
        for transport in args.transports:
            result["shed_floor"].append({"model": model["name"], "transport": transport,
                                         **shed_floor(after, transport, capacity, args, x)})
        for label, dep in deps.items():
            result["c1_wait5ms"].append({"tree": label, "model": model["name"], "transport": "http",
                                         **c1_wait_rule(dep, x, args.c1_queries)})
    finally:
        for dep in deps.values():
            dep.close()


def summarise(result: dict, targets_slo: dict) -> list[dict]:
    """Per (model, transport, load): adaptive before/after beside the best fixed size, and the targets."""
    out = []
    keys = sorted({(r["model"], r["transport"], r["load_x"]) for r in result["points"]})
    for model, transport, load in keys:
        rows = [r for r in result["points"] if (r["model"], r["transport"], r["load_x"]) == (model, transport, load)]
        fixed = [r for r in rows if r["tree"] == "after" and r["policy"].startswith("fixed")]
        best = max(fixed, key=lambda r: r["goodput_qps"]) if fixed else None
        ad = next((r for r in rows if r["tree"] == "after" and r["policy"] == "adaptive"), None)
        before = next((r for r in rows if r["tree"] == "before" and r["policy"] == "adaptive"), None)
        slo_ms = targets_slo[model] / 1e3
        line = {"model": model, "transport": transport, "load_x": load, "offered_qps": ad["offered_qps"],
                "goodput_after_qps": ad["goodput_qps"], "goodput_before_qps": before["goodput_qps"] if before else None,
                "best_fixed": best["policy"] if best else None, "goodput_best_fixed_qps": best["goodput_qps"] if best else None,
                "after_over_best_fixed": round(ad["goodput_qps"] / best["goodput_qps"], 3) if best and best["goodput_qps"] else None,
                "after_over_before": round(ad["goodput_qps"] / before["goodput_qps"], 3) if before and before["goodput_qps"] else None,
                "p99_real_after_ms": ad["real_p99_ms"], "p99_real_before_ms": before["real_p99_ms"] if before else None,
                "shed_share_after": ad["shed_share"], "shed_answer_p99_after_ms": ad["shed_answer_p99_ms"],
                "other_within_2ms_after": ad["other_within_2ms_share"],
                "late_default_share_after": ad["late_default_share"],
                "late_default_share_before": before["late_default_share"] if before else None}
        checks = {"p99_within_slo": ad["real_p99_ms"] is not None and ad["real_p99_ms"] <= slo_ms}
        if load >= 1:
            checks["goodput_ge_90pct_best_fixed"] = bool(line["after_over_best_fixed"] and line["after_over_best_fixed"] >= 0.9)
            checks["others_within_2ms"] = ad["other_within_2ms_share"] in (None, 1.0)
        else:
            checks["nothing_shed"] = ad["shed_share"] == 0
        line["targets_met"] = checks
        out.append(line)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds of load per point")
    ap.add_argument("--loads", type=float, nargs="+", default=[0.5, 1, 2, 10], help="multiples of capacity")
    ap.add_argument("--transports", nargs="+", default=["zmq", "http"], choices=["zmq", "http"])
    ap.add_argument("--models", nargs="+", default=["sleep", "elastic-net"], choices=sorted(MODELS))
    ap.add_argument("--http-max-qps", type=float, default=1500.0,
                    help="cap on the HTTP offered rate (one Python client process)")
    ap.add_argument("--zmq-max-qps", type=float, default=5000.0,
                    help="cap on the ZMQ offered rate (one Python client process)")
    ap.add_argument("--c1-queries", type=int, default=300)
    ap.add_argument("--baseline", default=None, help="git ref to run beside (in a temporary git worktree)")
    ap.add_argument("--baseline-root", default=None, help="an existing checkout of the baseline instead")
    args = ap.parse_args()
    result: dict[str, Any] = {"seconds_per_point": args.seconds, "capacity_qps": {}, "points": [],
                              "c1_wait5ms": [], "shed_floor": []}
    with tempfile.TemporaryDirectory() as tmp:
        worktree = None
        if args.baseline and not args.baseline_root:
            worktree = os.path.join(tmp, "baseline")
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", worktree, args.baseline],
                           check=True, capture_output=True)
            args.baseline_root = worktree
        try:
            for name in args.models:
                run_model(args, MODELS[name], tmp, result)
        finally:
            if worktree:
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", worktree], capture_output=True)
    result["baseline"] = args.baseline or args.baseline_root
    result["summary"] = summarise(result, {m: MODELS[m]["slo_us"] for m in args.models})
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
