"""Benchmark of the query frontend with the noop model; prints one JSON object.

Starts ``python -m frontend --config`` (pinned to --frontend-cpu) and one noop
replica (pinned to --replica-cpu), then measures: ZMQ and HTTP latency at
concurrency 1 (p50/p99), throughput at saturation (pipelined ZMQ client,
concurrent HTTP client), and the frontend's CPU seconds per query at saturation
(psutil cpu_times delta of the frontend process / queries).

    python bench/serving_bench.py [--queries 20000] [--concurrency 256] [--curve]

``--curve`` runs the replica link and the client port over CurveZMQ (what CURVE costs per query).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

import aiohttp
import numpy as np
import psutil
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from schooner import curve, defaults  # noqa: E402
from frontend.client import Client  # noqa: E402
from management.embedded_redis import free_port  # noqa: E402


def _percentiles(samples_s: list[float]) -> dict:
    us = np.asarray(samples_s) * 1e6
    return {"p50_us": round(float(np.percentile(us, 50)), 1), "p99_us": round(float(np.percentile(us, 99)), 1),
            "mean_us": round(float(us.mean()), 1), "n": int(us.size)}


def _pin(cpu: int):
    def pin() -> None:
        if cpu >= 0:
            os.sched_setaffinity(0, {cpu})
    return pin


def wait_live(base: str, timeout_s: float = 60.0) -> None:
    """Wait until the frontend at ``base`` reports one live replica; RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(base + "/health", timeout=1).json()["live_replicas"] == 1:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError("frontend or replica did not come up")


def start(args: argparse.Namespace, tmp: str) -> tuple[subprocess.Popen, subprocess.Popen, dict]:
    """Frontend and replica processes, and their addresses."""
    ports = {"client": free_port(), "replica": free_port(), "http": free_port()}
    state = {"apps": [{"name": "bench", "input_type": "floats", "latency_slo_micros": 10_000_000}],
             "models": [{"name": "noop", "version": "1", "input_type": "floats", "batch_size": -1,
                         "max_batch_size": args.max_batch_size, "max_queue_size": 100_000}],
             "links": {"bench": ["noop"]}}
    path = os.path.join(tmp, "deployment.json")
    with open(path, "w") as fh:
        json.dump(state, fh)
    env = dict(os.environ, PYTHONPATH=ROOT)
    fe_args, rep_env, server_key = [], dict(env), ""
    if args.curve:  # CURVE on the replica link and the client port (docs/LIMITS.md)
        server = curve.load_or_create(os.path.join(tmp, "frontend.key_secret"))
        replica = curve.KeyPair.generate()
        key_file = curve.write_key_file(os.path.join(tmp, "bench.key_secret"), replica)
        fe_args = ["--curve-secret-file", os.path.join(tmp, "frontend.key_secret"), "--client-curve",
                   "--curve-replica-key", f"bench={replica.public}"]
        rep_env.update({curve.ENV_SECRET_FILE: str(key_file), curve.ENV_SERVER_KEY: server.public})
        server_key = server.public
    fe = subprocess.Popen([sys.executable, "-m", "frontend", "--config", path, "--client-port", str(ports["client"]),
                           "--replica-port", str(ports["replica"]), "--http-port", str(ports["http"]),
                           "--spin-us", str(args.frontend_spin_us), "--log-level", "WARNING", *fe_args],
                          cwd=ROOT, env=env, preexec_fn=_pin(args.frontend_cpu))
    rep = subprocess.Popen([sys.executable, "-m", "containers.replica", "--model", "noop", "--frontend",
                            f"tcp://127.0.0.1:{ports['replica']}", "--cpus", str(args.replica_cpu),
                            "--name", "noop", "--version", "1", "--replica-id", "bench", "--input-type", "floats",
                            "--spin-us", str(args.replica_spin_us), "--log-level", "WARNING",
                            # As the manager would say: its core is its own unless the frontend or client is there.
                            "--owns-cores", "no" if args.replica_cpu in (args.frontend_cpu, args.client_cpu) else "yes"],
                           cwd=ROOT, env=rep_env)
    base = f"http://127.0.0.1:{ports['http']}"
    try:
        wait_live(base)
    except RuntimeError:
        for proc in (rep, fe):
            proc.kill()
            proc.wait()
        raise
    return fe, rep, {"client": f"tcp://127.0.0.1:{ports['client']}", "http": base, "server_key": server_key}


def zmq_sequential(address: str, n: int, spin_us: int, fe: psutil.Process, server_key: str = "") -> dict:
    x = np.ones(8, np.float32)
    with Client(address, timeout_s=30, spin_us=spin_us, server_key=server_key) as client:
        for _ in range(200):
            client.predict("bench", x)
        lat = []
        cpu0 = fe.cpu_times()
        for _ in range(n):
            t0 = time.perf_counter()
            client.predict("bench", x)
            lat.append(time.perf_counter() - t0)
        cpu1 = fe.cpu_times()
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {**_percentiles(lat), "frontend_cpu_us_per_query": round(cpu_s / n * 1e6, 1)}


def http_sequential(base: str, n: int) -> dict:
    body = json.dumps({"input": [1.0] * 8})
    with requests.Session() as s:
        for _ in range(50):
            s.post(base + "/bench/predict", data=body)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            r = s.post(base + "/bench/predict", data=body)
            lat.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    return _percentiles(lat)


def zmq_saturation(address: str, fe: psutil.Process, n: int, concurrency: int, server_key: str = "") -> dict:
    inputs = [np.ones(8, np.float32)] * n
    with Client(address, timeout_s=60, server_key=server_key) as client:
        client.predict_many("bench", inputs[:2000], concurrency=concurrency)
        cpu0 = fe.cpu_times()
        t0 = time.perf_counter()
        results = client.predict_many("bench", inputs, concurrency=concurrency)
        wall = time.perf_counter() - t0
        cpu1 = fe.cpu_times()
    errors = sum(1 for r in results if isinstance(r, Exception))
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"queries": n, "concurrency": concurrency, "errors": errors, "qps": round(n / wall),
            "frontend_cpu_us_per_query": round(cpu_s / n * 1e6, 1),
            "frontend_cpu_user_us_per_query": round((cpu1.user - cpu0.user) / n * 1e6, 1)}


async def _http_saturation(base: str, n: int, concurrency: int) -> tuple[float, int]:
    body = json.dumps({"input": [1.0] * 8})
    counter = iter(range(n))
    errors = 0

    async def lane(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for _ in counter:
            async with session.post(base + "/bench/predict", data=body) as resp:
                await resp.read()
                errors += resp.status != 200

    async with aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(lane(session) for _ in range(concurrency)))
        return time.perf_counter() - t0, errors


def http_saturation(base: str, fe: psutil.Process, n: int, concurrency: int) -> dict:
    cpu0 = fe.cpu_times()
    wall, errors = asyncio.run(_http_saturation(base, n, concurrency))
    cpu1 = fe.cpu_times()
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"queries": n, "concurrency": concurrency, "errors": errors, "qps": round(n / wall),
            "frontend_cpu_us_per_query": round(cpu_s / n * 1e6, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=20_000, help="queries in the ZMQ saturation run")
    p.add_argument("--sequential", type=int, default=2_000, help="queries in each concurrency-1 run")
    p.add_argument("--http-queries", type=int, default=3_000)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--http-concurrency", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--frontend-cpu", type=int, default=0, help="-1: not pinned")
    p.add_argument("--replica-cpu", type=int, default=1 if (os.cpu_count() or 1) > 1 else 0)
    p.add_argument("--client-cpu", type=int, default=0,
                   help="core of this (client) process; -1: not pinned")
    p.add_argument("--frontend-spin-us", type=int, default=defaults.FRONTEND_SPIN_US)
    p.add_argument("--replica-spin-us", type=int, default=defaults.REPLICA_SPIN_US)
    p.add_argument("--client-spin-us", type=int, default=defaults.CLIENT_SPIN_US)
    p.add_argument("--curve", action="store_true", help="CURVE on the replica link and the client port")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fe, rep, addr = start(args, tmp)
        if args.client_cpu >= 0:  # after starting the others: children would inherit the mask
            os.sched_setaffinity(0, {args.client_cpu})
        try:
            proc = psutil.Process(fe.pid)
            out = {
                "setup": {"model": "noop", "replicas": 1, "frontend_cpu": args.frontend_cpu,
                          "replica_cpu": args.replica_cpu, "client_cpu": args.client_cpu,
                          "cpus": os.cpu_count(), "frontend_spin_us": args.frontend_spin_us,
                          "replica_spin_us": args.replica_spin_us, "client_spin_us": args.client_spin_us,
                          "curve": args.curve},
                "latency_notes": ("c=1 breakdown: python bench/latency_breakdown.py; measured stages, the "
                                  "chosen spin defaults and why: docs/ARCHITECTURE.md, section Latency"),
                "zmq_concurrency_1": zmq_sequential(addr["client"], args.sequential, args.client_spin_us, proc,
                                                    addr["server_key"]),
                "http_concurrency_1": http_sequential(addr["http"], max(200, args.sequential // 4)),
                "zmq_saturation": zmq_saturation(addr["client"], proc, args.queries, args.concurrency,
                                                 addr["server_key"]),
                "http_saturation": http_saturation(addr["http"], proc, args.http_queries, args.http_concurrency),
            }
            out["batch_size"] = next(e["model:noop:1:batch_size"] for e in
                                     requests.get(addr["http"] + "/metrics", timeout=10).json()["histograms"]
                                     if "model:noop:1:batch_size" in e)
        finally:
            for proc_ in (rep, fe):
                proc_.terminate()
                try:
                    proc_.wait(10)
                except subprocess.TimeoutExpired:
                    proc_.kill()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
