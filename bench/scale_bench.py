"""Benchmark of scale-out: frontends on one Redis sharing replicas; prints one JSON object.

Starts an embedded Redis, deploys one app, and for each scenario starts
``python -m frontend --redis-url`` processes (they announce themselves and
tell the replica about each other) and one replica, then drives a closed loop
(``--concurrency`` per frontend) for ``--duration-s`` and reports, per
scenario: answered queries/s, default outputs, client p50/p99, the mean batch
size each frontend formed, frontend CPU µs per query (psutil), and Redis
commands per query (``INFO stats`` delta: Redis is off the query path, so this
is ~0; the frontends' announce/heartbeat costs a few commands a second each).

Scenarios: ``1f`` one frontend; ``2f`` two frontends sharing the one replica
(one batch in flight per frontend: the replica holds up to two). Model:
``sleep`` (a batch of n takes a_ms + b_ms * n) so that the replica is the
bottleneck, as a real model is; ``--model noop`` measures the frontend's own
cost instead.

    python bench/scale_bench.py [--model sleep] [--duration-s 10] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from frontend.client import Client  # noqa: E402
from management.embedded_redis import EmbeddedRedis, connect, free_port  # noqa: E402
from management.store import FrontendDirectory, Store  # noqa: E402
from schooner.types import AppSpec, ModelSpec  # noqa: E402

APP = "scale-bench"


def _frontend(redis_url: str, name: str, log_dir: str) -> tuple[subprocess.Popen, dict]:
    ports = {k: free_port() for k in ("client", "replica", "http")}
    log = open(os.path.join(log_dir, f"{name}.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "frontend", "--client-port", str(ports["client"]),
                             "--replica-port", str(ports["replica"]), "--http-port", str(ports["http"]),
                             "--redis-url", redis_url, "--frontend-id", name, "--log-level", "WARNING"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return proc, ports


def _wait(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def _metric(http: str, kind: str, name: str) -> dict:
    for entry in requests.get(f"{http}/metrics", timeout=10).json()[kind]:
        if name in entry:
            return entry[name]
    return {}


def _load(address: str, concurrency: int, until: float, out: dict) -> None:
    x = np.ones(8, dtype=np.float32)
    lat, defaults_, errors = [], 0, 0
    with Client(address, timeout_s=30) as client:
        while time.monotonic() < until:
            for r in client.predict_many(APP, [x] * (concurrency * 4), concurrency=concurrency):
                if isinstance(r, Exception):
                    errors += 1
                elif r.default:
                    defaults_ += 1
                else:
                    lat.append(r.latency_s)
    out.update(latencies=lat, defaults=defaults_, errors=errors)


def scenario(redis_url: str, n_frontends: int, args: argparse.Namespace, log_dir: str) -> dict:
    procs, fronts = [], []
    replica = None
    try:
        for i in range(n_frontends):
            proc, ports = _frontend(redis_url, f"f{i + 1}", log_dir)
            procs.append(proc)
            fronts.append(ports)
        for ports in fronts:
            _wait(lambda p=ports: requests.get(f"http://127.0.0.1:{p['http']}/health", timeout=1).ok, 60,
                  "a frontend")
        directory = FrontendDirectory(connect(redis_url))
        _wait(lambda: len(directory.live()) == n_frontends, 30, "the frontends to announce themselves")
        replica = subprocess.Popen(
            [sys.executable, "-m", "containers.replica", "--model", args.model, "--name", "m",
             "--frontend", f"tcp://127.0.0.1:{fronts[0]['replica']}", "--input-type", "floats",
             "--model-opts", json.dumps(args.model_opts), "--log-level", "WARNING"], cwd=ROOT)
        for ports in fronts:
            _wait(lambda p=ports: requests.get(f"http://127.0.0.1:{p['http']}/health", timeout=1).json()
                  .get("live_replicas") == 1, 60, "the replica to register with every frontend")
        warm_until = time.monotonic() + 2
        for ports in fronts:
            _load(f"tcp://127.0.0.1:{ports['client']}", args.concurrency, warm_until, {})
        redis = connect(redis_url)
        cmds0 = redis.info("stats")["total_commands_processed"]
        cpu0 = [sum(psutil.Process(p.pid).cpu_times()[:2]) for p in procs]
        n0 = [_metric(f"http://127.0.0.1:{p['http']}", "counters", "model:m:1:num_predictions").get("count", 0)
              for p in fronts]
        started = time.monotonic()
        outs = [dict() for _ in fronts]
        threads = [threading.Thread(target=_load, args=(f"tcp://127.0.0.1:{p['client']}", args.concurrency,
                                                        started + args.duration_s, out))
                   for p, out in zip(fronts, outs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        cmds = redis.info("stats")["total_commands_processed"] - cmds0 - 2  # minus our own two INFOs
        cpu = [sum(psutil.Process(p.pid).cpu_times()[:2]) - c for p, c in zip(procs, cpu0)]
        n = [int(_metric(f"http://127.0.0.1:{p['http']}", "counters", "model:m:1:num_predictions")
                 .get("count", 0)) - int(b) for p, b in zip(fronts, n0)]
        batch = [_metric(f"http://127.0.0.1:{p['http']}", "histograms", "model:m:1:batch_size").get("mean")
                 for p in fronts]
        lat = np.asarray([x for o in outs for x in o["latencies"]]) * 1e3
        answered = int(lat.size)
        return {
            "frontends": n_frontends, "answered_qps": round(answered / elapsed, 1),
            "defaults": sum(o["defaults"] for o in outs), "errors": sum(o["errors"] for o in outs),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if answered else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if answered else None,
            "per_frontend_predictions": n, "mean_batch_size": batch,
            "frontend_cpu_us_per_query": [round(c / max(k, 1) * 1e6, 1) for c, k in zip(cpu, n)],
            "redis_commands": cmds, "redis_commands_per_query": round(cmds / max(sum(n), 1), 5),
            "redis_commands_per_s": round(cmds / elapsed, 1),
        }
    finally:
        for p in ([replica] if replica else []) + procs:
            p.terminate()
        for p in ([replica] if replica else []) + procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sleep")
    p.add_argument("--model-opts", type=json.loads, default=None)
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop queries in flight per frontend")
    p.add_argument("--slo-ms", type=float, default=100.0)
    p.add_argument("--batch-size", type=int, default=-1, help="-1 = adaptive")
    args = p.parse_args()
    if args.model_opts is None:
        args.model_opts = {"a_ms": 2, "b_ms": 0.2} if args.model == "sleep" else {}
    with tempfile.TemporaryDirectory(prefix="schooner-scale-bench-") as tmp:
        redis = EmbeddedRedis(os.path.join(tmp, "redis")).start()
        try:
            store = Store(connect(redis.url))
            store.add_app(AppSpec(APP, "floats", latency_slo_micros=int(args.slo_ms * 1000)))
            store.add_model(ModelSpec("m", "1", "floats", batch_size=args.batch_size, launcher=args.model))
            store.add_links(APP, ["m"])
            result = {"model": args.model, "model_opts": args.model_opts, "concurrency": args.concurrency,
                      "duration_s": args.duration_s, "slo_ms": args.slo_ms, "batch_size": args.batch_size,
                      "scenarios": [scenario(redis.url, n, args, tmp) for n in (1, 2)]}
        finally:
            redis.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
