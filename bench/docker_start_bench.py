"""Time from DockerBackend.start() to the first answered query, for noop container replicas.

Starts a real frontend (``python -m frontend --config``) serving one app whose SLO is
long enough that the first query waits for the replica, then starts, times and stops
``--runs`` replica containers one after another. Prints one JSON object.

    python bench/docker_start_bench.py --runs 5 [--image schooner/replica:latest]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from frontend.client import Client  # noqa: E402
from management.backends.base import LaunchSpec  # noqa: E402
from management.backends.docker import DEFAULT_IMAGE, DockerBackend  # noqa: E402
from management.embedded_redis import free_port  # noqa: E402

DEPLOYMENT = {
    "apps": [{"name": "echo", "input_type": "doubles", "latency_slo_micros": 120_000_000}],
    "models": [{"name": "noop", "version": "1", "input_type": "doubles"}],
    "links": {"echo": ["noop"]},
}


def _wait_http(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    import requests  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("frontend exited")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit("frontend did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--cpu", type=int, default=sorted(os.sched_getaffinity(0))[-1])
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be >= 1")

    ports = {name: free_port() for name in ("client", "replica", "http")}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "deployment.json"
        config.write_text(json.dumps(DEPLOYMENT))
        frontend = subprocess.Popen(
            [sys.executable, "-m", "frontend", "--host", "127.0.0.1", "--client-port", str(ports["client"]),
             "--replica-port", str(ports["replica"]), "--http-port", str(ports["http"]),
             "--config", str(config), "--log-level", "WARNING"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        backend = DockerBackend(default_image=args.image, namespace=f"bench-{uuid.uuid4().hex[:8]}")
        times: list[float] = []
        try:
            _wait_http(ports["http"], frontend)
            with Client(f"tcp://127.0.0.1:{ports['client']}", timeout_s=120) as client:
                for i in range(args.runs):
                    spec = LaunchSpec(replica_id=f"bench-{i}", model_name="noop", model_version="1",
                                      model="noop", frontend_address=f"tcp://127.0.0.1:{ports['replica']}",
                                      cpus=[args.cpu], input_type="doubles")
                    started = time.monotonic()
                    backend.start(spec)
                    answer = client.predict("echo", [1.0, 2.0], dtype="doubles")
                    elapsed = time.monotonic() - started
                    if answer.default:
                        raise SystemExit(f"run {i}: default output {answer.default_explanation}")
                    times.append(elapsed)
                    backend.stop(spec.replica_id, timeout_s=30)
        finally:
            for replica in backend.list():
                backend.stop(replica.replica_id, timeout_s=5)
            frontend.terminate()
            frontend.wait(timeout=30)
    print(json.dumps({
        "bench": "docker_replica_start_to_first_answer",
        "image": args.image,
        "runs": len(times),
        "seconds": [round(t, 3) for t in times],
        "mean_s": round(statistics.mean(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
    }))


if __name__ == "__main__":
    main()
