"""Serve your own model: served throughput at a fixed batch size against the same model in-process on the
same core, and the time from ``schooner deploy`` to the first answered query.

    python bench/own_model_bench.py [--batch-size 8] [--duration-s 8] [--rounds 3] [--out FILE]

Models: a scikit-learn pipeline (StandardScaler + LogisticRegression, 256
features, 10 classes) saved with joblib, and a TorchScript MLP (256 -> 512 ->
10). In-process: this process pinned to the replica's core, one thread,
``load_model(launcher, path).predict`` on batches of ``--batch-size`` for
``--duration-s``. Served: a Stack (frontend pinned to the first core, the replica
to the last), the model deployed with ``schooner deploy --batch-size B``, a ZMQ
client keeping 4*B queries in flight for ``--duration-s``. Rounds alternate
in-process and served; medians are reported, with served/in-process ratios.
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WIDTH = 256


def make_models(out: Path) -> dict[str, Path]:
    """The two saved models: name -> path."""
    import joblib
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, WIDTH)).astype(np.float32)
    y = rng.integers(0, 10, 2000)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=50)).fit(x, y)
    joblib.dump(pipe, out / "pipe.joblib")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(WIDTH, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)).eval()
    torch.jit.trace(net, torch.zeros(1, WIDTH)).save(str(out / "mlp.pt"))
    return {"sklearn": out / "pipe.joblib", "torchscript": out / "mlp.pt"}


def in_process(launcher: str, path: Path, batch_size: int, duration_s: float, cpu: int) -> float:
    """Rows per second of ``predict`` on batches of ``batch_size``, in a subprocess pinned to ``cpu``."""
    code = f"""
import os, sys, time, numpy as np
sys.path.insert(0, {str(ROOT)!r})
from containers import pinning
pinning.pin_cpus([{cpu}]); pinning.limit_threads(1)
from containers.models import load_model
m = load_model({launcher!r}, model_path={str(path)!r}, num_threads=1)
batch = list(np.random.default_rng(1).standard_normal(({batch_size}, {WIDTH})).astype(np.float32))
for _ in range(20): m.predict(batch)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < {duration_s}:
    m.predict(batch); n += 1
print(n * {batch_size} / (time.perf_counter() - t0))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def served(stack, client_address: str, app: str, batch_size: int, duration_s: float) -> float:
    """Queries per second answered (not default) with 4*batch_size in flight for ``duration_s``."""
    from frontend.client import Client

    rows = list(np.random.default_rng(1).standard_normal((4000, WIDTH)).astype(np.float32))
    with Client(client_address, timeout_s=60) as c:
        c.predict_many(app, rows[:200], concurrency=4 * batch_size)  # warm up
        answered, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < duration_s:
            out = c.predict_many(app, rows[:400], concurrency=4 * batch_size)
            answered += sum(1 for p in out if not isinstance(p, Exception) and not p.default)
        return answered / (time.perf_counter() - t0)


def deploy_cli(stack, name: str, path: Path, launcher: str, batch_size: int, cpu: int) -> float:
    """Seconds from starting ``schooner deploy`` to the first answered HTTP query."""
    import requests

    env = dict(os.environ, PYTHONPATH=str(ROOT), SCHOONER_ADMIN_TOKEN=stack.admin_token)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "management.cli", "deploy", name, str(path), "--launcher", launcher,
                    "--batch-size", str(batch_size), "--slo-ms", "20000", "--management", stack.management_url],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    body = {"input": [0.0] * WIDTH}
    while True:
        resp = requests.post(f"{stack.frontend_http_url}/{name}/predict", json=body, timeout=60)
        if resp.status_code == 200 and not resp.json()["default"]:
            return time.monotonic() - t0
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--duration-s", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    from management.client import AdminClient
    from management.stack import Stack

    cpus = sorted(os.sched_getaffinity(0))
    replica_cpu, frontend_cpus = cpus[-1], cpus[:1] if len(cpus) > 1 else None
    work = Path(tempfile.mkdtemp(prefix="own-model-bench-"))
    models = make_models(work)
    result: dict = {"batch_size": args.batch_size, "duration_s": args.duration_s, "rounds": args.rounds,
                    "replica_cpu": replica_cpu, "frontend_cpus": frontend_cpus, "models": {}}
    with Stack(state_dir=work / "state", frontend_cpus=frontend_cpus) as stack:
        admin = AdminClient(stack.management_url, token=stack.admin_token)
        for launcher, path in models.items():
            name = f"own-{launcher}"
            deploy_s = deploy_cli(stack, name, path, launcher, args.batch_size, replica_cpu)
            admin.post("set_num_replicas", {"model_name": name, "num_replicas": 1, "model_cpus": [replica_cpu],
                                            "wait_s": 120}, timeout_s=200)
            local, remote = [], []
            for _ in range(args.rounds):
                local.append(in_process(launcher, path, args.batch_size, args.duration_s, replica_cpu))
                remote.append(served(stack, stack.client_address, name, args.batch_size, args.duration_s))
            admin.post("set_num_replicas", {"model_name": name, "num_replicas": 0})
            if "noop_served_qps" not in result:  # the serving path's own ceiling, with a model that costs nothing
                deploy_cli(stack, "own-noop", path, "noop", args.batch_size, replica_cpu)
                admin.post("set_num_replicas", {"model_name": "own-noop", "num_replicas": 1,
                                                "model_cpus": [replica_cpu], "wait_s": 120}, timeout_s=200)
                result["noop_served_qps"] = round(statistics.median(
                    served(stack, stack.client_address, "own-noop", args.batch_size, args.duration_s)
                    for _ in range(args.rounds)))
                admin.post("set_num_replicas", {"model_name": "own-noop", "num_replicas": 0})
            lm, rm = statistics.median(local), statistics.median(remote)
            result["models"][launcher] = {
                "deploy_to_first_answer_s": round(deploy_s, 2), "in_process_rows_per_s": [round(v) for v in local],
                "served_qps": [round(v) for v in remote], "in_process_median": round(lm),
                "served_median": round(rm), "served_over_in_process": round(rm / lm, 3)}
            print(json.dumps({launcher: result["models"][launcher]}), file=sys.stderr, flush=True)
        admin.close()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
