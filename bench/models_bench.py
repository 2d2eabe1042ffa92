"""In-process throughput of the zoo models by batch size and core count; prints JSON and a table.

    python bench/models_bench.py [--models lgbm kernel-svm ...] [--batch-sizes 1 2 4 8 16]
        [--cores 1 2] [--budget-s 2] [--warmup 2] [--cache-dir DIR] [--out FILE]

Each (model, core count) runs in its own subprocess pinned to the first N
allowed cpus with N math-library threads (``containers.pinning.pin_cpus``, as a
replica is), so thread pools never see more cores than they are given. For each
batch size it runs ``--warmup`` untimed batches, then timed batches until
``--budget-s`` is spent (at least one). The JSON goes to stdout (and ``--out``),
the table to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

DEFAULT_MODELS = ["lgbm", "kpca-svm", "kernel-svm", "elastic-net", "resnet18", "inception", "vgg"]
log = logging.getLogger("models_bench")


def measure(model, batch_size: int, warmup: int, budget_s: float, seed: int = 0) -> dict:
    """Throughput and batch latency of ``model`` at ``batch_size`` within ``budget_s`` of timed batches."""
    rng = np.random.default_rng(seed)
    shape = model.input_shape or [1]
    batch = list(rng.random((batch_size, *shape), dtype=np.float32))
    for _ in range(warmup):
        model.predict(batch)
    latencies = []
    start = time.monotonic()
    while not latencies or time.monotonic() - start < budget_s:
        t0 = time.monotonic()
        model.predict(batch)
        latencies.append(time.monotonic() - t0)
    total = sum(latencies)
    lat_ms = np.array(latencies) * 1e3
    return {"batch_size": batch_size, "iters": len(latencies),
            "inputs_per_s": round(batch_size * len(latencies) / total, 2),
            "batch_ms_mean": round(float(lat_ms.mean()), 3), "batch_ms_p50": round(float(np.median(lat_ms)), 3),
            "batch_ms_p99": round(float(np.percentile(lat_ms, 99)), 3)}


def worker(args: argparse.Namespace) -> dict:
    """Pin, load one model, measure every batch size (runs in the subprocess)."""
    from containers import pinning
    from containers.models import load_model

    cpus = pinning.pin_cpus(pinning.parse_cpus(args.cpus))
    from containers.models.classic import MODEL_NAMES as CLASSIC

    opts = {"cache_dir": args.cache_dir} if args.cache_dir and args.model in CLASSIC else {}
    t0 = time.monotonic()
    model = load_model(args.model, model_path=args.model_path, num_threads=len(cpus), **opts)
    load_s = time.monotonic() - t0
    cells = [measure(model, b, args.warmup, args.budget_s) for b in args.batch_sizes]
    return {"model": args.model, "cores": len(cpus), "cpus": cpus, "load_s": round(load_s, 3), "cells": cells}


def run_one(args: argparse.Namespace, model: str, cpus: list[int]) -> dict:
    """One (model, cpus) measurement in a fresh pinned subprocess."""
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--cpus", ",".join(map(str, cpus)),
           "--batch-sizes", *map(str, args.batch_sizes), "--warmup", str(args.warmup),
           "--budget-s", str(args.budget_s), "--model-path", args.model_path]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    # Loading a large CNN or training a classic model on demand takes a while on a busy machine.
    timeout_s = 300 + len(args.batch_sizes) * (args.budget_s + args.warmup * 30)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        return {"model": model, "cores": len(cpus), "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict], batch_sizes: list[int]) -> str:
    """Inputs/s per model and core count (rows) by batch size (columns)."""
    head = f"{'model':<12} {'cores':>5} " + " ".join(f"{'b=' + str(b):>10}" for b in batch_sizes)
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['model']:<12} {r['cores']:>5} error: {r['error']}")
            continue
        by_b = {c["batch_size"]: c["inputs_per_s"] for c in r["cells"]}
        lines.append(f"{r['model']:<12} {r['cores']:>5} " + " ".join(f"{by_b.get(b, 0):>10.1f}" for b in batch_sizes))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line; run the sweep (or, with --worker, one cell group)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--cores", nargs="+", type=int, default=[1, 2])
    p.add_argument("--budget-s", type=float, default=2.0, help="timed seconds per (model, cores, batch) cell")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches before each cell")
    p.add_argument("--model-path", default="", help="artifact to load (default: deterministic / cached)")
    p.add_argument("--cache-dir", default="", help="cache for on-demand trained classic models")
    p.add_argument("--out", default="", help="also write the JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--cpus", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if min(args.batch_sizes) < 1 or min(args.cores) < 1 or args.budget_s <= 0 or args.warmup < 0:
        p.error("batch sizes and cores must be >= 1, --budget-s > 0, --warmup >= 0")
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    allowed = sorted(os.sched_getaffinity(0))
    results, skipped = [], []
    for model in args.models:
        for n in args.cores:
            if n > len(allowed):
                skipped.append({"model": model, "cores": n, "why": f"only {len(allowed)} cpus allowed"})
                continue
            results.append(run_one(args, model, allowed[:n]))
            print(table(results[-1:], args.batch_sizes).splitlines()[-1], file=sys.stderr, flush=True)
    report = {"batch_sizes": args.batch_sizes, "budget_s": args.budget_s, "warmup": args.warmup,
              "cpu_count": os.cpu_count(), "results": results, "skipped": skipped}
    print(table(results, args.batch_sizes), file=sys.stderr)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
