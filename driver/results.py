"""The results document: JSON on disk, a CSV and a summary table, one row per configuration.

Layout of ``results-<yymmdd_HHMMSS>.json``::

    {"schema": "schooner-driver/1", "started_at", "finished_at", "args", "machine",
     "model", "slo_ms", "target_qps",
     "runs": [{"node_config": {...}, "client_metrics": [window, ...], "summary": {...},
               "clipper_metrics": {GET /admin/metrics after the run}, "replicas": [...],
               "latencies_ms": [raw measurement latencies, evenly thinned to MAX_SAVED_LATENCIES]}],
     "recommendation": {"slo": {...}, "target_qps": {...} | null},
     "mode_results": {...}}   # only for the non-sweep modes
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from driver.errors import ResultsError
from driver.load import WindowStats, latency_summary
from driver.recommend import cores_of

SCHEMA = "schooner-driver/1"
MAX_SAVED_LATENCIES = 20_000
HISTOGRAM_RESERVOIR = 4096  # the frontend histograms' window (frontend.metrics.RESERVOIR_SIZE)
CSV_FIELDS = ["run", "model", "num_replicas", "cpus_per_replica", "batch_size", "load", "cores",
              "goodput_qps", "goodput_per_core", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "mean_batch_size", "count",
              "errors", "defaults", "thruput_qps", "thruput_per_core", "steady"]


def stamp() -> str:
    """Local wall-clock time as ``yymmdd_HHMMSS`` (file names only; durations use the monotonic clock)."""
    return time.strftime("%y%m%d_%H%M%S")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(usable_cpus: Sequence[int], driver_cpus: Sequence[int], gpu_count: int) -> dict:
    """What ran the benchmark."""
    return {"cpu_count": os.cpu_count(), "usable_cpus": list(usable_cpus), "driver_cpus": list(driver_cpus),
            "cpu_model": cpu_model(), "gpu_count": gpu_count, "python": sys.version.split()[0],
            "platform": platform.platform(), "hostname": platform.node()}


def new_document(args: dict, machine: dict, model: str, slo_ms: float, target_qps: float | None) -> dict:
    """An empty results document."""
    return {"schema": SCHEMA, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished_at": None,
            "args": args, "machine": machine, "model": model, "slo_ms": slo_ms, "target_qps": target_qps,
            "runs": [], "recommendation": None}


def _histogram(dump: dict | None, name: str) -> dict | None:
    for h in (dump or {}).get("histograms", []):
        if name in h:
            return h[name]
        if h.get("name") == name:
            return h
    return None


def batch_size_stats(before: dict | None, after: dict | None, model: str, version: str) -> float | None:
    """Mean batch size of the batches formed between two metrics dumps (``model:<m>:<v>:batch_size``).

    The frontend's histograms report ``size`` (values ever inserted) and the mean
    of the last ``HISTOGRAM_RESERVOIR`` values, so the mean of just the new batches
    is exact while the window still holds every value or only new ones, and a
    close estimate when it holds both.
    """
    name = f"model:{model}:{version}:batch_size"
    h1 = _histogram(after, name)
    if not h1 or h1.get("mean") is None or not h1.get("size"):
        return None
    n1, m1 = int(h1["size"]), float(h1["mean"])
    h0 = _histogram(before, name)
    n0, m0 = (int(h0.get("size") or 0), float(h0.get("mean") or 0.0)) if h0 else (0, 0.0)
    new = n1 - n0
    if new <= 0:
        return None
    if n0 == 0 or new >= HISTOGRAM_RESERVOIR:
        return m1
    w1, w0 = min(n1, HISTOGRAM_RESERVOIR), min(n0, HISTOGRAM_RESERVOIR)
    old_kept = w1 - new  # values in the later window that were there before
    if old_kept <= 0:
        return m1
    estimate = (m1 * w1 - m0 * old_kept) / new if w0 else m1
    return estimate if estimate > 0 else m1


def thin(values: Sequence[float], limit: int = MAX_SAVED_LATENCIES) -> list[float]:
    """At most ``limit`` values, evenly spaced over the sorted input (keeps the distribution's shape)."""
    arr = np.sort(np.asarray(values, dtype=np.float64))
    if arr.size > limit:
        arr = arr[np.linspace(0, arr.size - 1, limit).round().astype(int)]
    return [round(float(v), 4) for v in arr]


def summarize(node_config: dict, windows: Sequence[WindowStats], latencies_ms: Sequence[float],
              mean_batch_size: float | None, steady: bool, steady_wait_s: float) -> dict:
    """One run's summary from its measurement windows and raw latencies."""
    measured = [w for w in windows if w.phase == "measure"]
    elapsed = sum(w.duration_s for w in measured)
    count = sum(w.count for w in measured)
    thruput = count / elapsed if elapsed > 0 else 0.0
    cores = cores_of(node_config)
    codes: dict[str, int] = {}
    for w in measured:
        for code, n in w.error_codes.items():
            codes[code] = codes.get(code, 0) + n
    defaults = sum(w.defaults for w in measured)
    good = sum(w.good for w in measured)
    goodput = good / elapsed if elapsed > 0 else 0.0
    # Goodput (real answers within the objective per second) leads; thruput counts default outputs too.
    return {"goodput_qps": goodput, "goodput_per_core": goodput / cores, "good": good,
            **latency_summary(latencies_ms), "count": count,
            "errors": sum(w.errors for w in measured), "defaults": defaults,
            "error_codes": codes, "measured_s": elapsed, "mean_batch_size": mean_batch_size,
            "cores": cores, "thruput_qps": thruput, "thruput_per_core": thruput / cores,
            "steady": steady, "steady_wait_s": steady_wait_s}


def rows(doc: dict) -> list[dict]:
    """One flat row per run (the CSV and the printed table)."""
    out = []
    for i, run in enumerate(doc.get("runs", [])):
        nc, s = run["node_config"], run["summary"]
        out.append({"run": i, "model": nc["model"], "num_replicas": nc["num_replicas"],
                    "cpus_per_replica": nc["cpus_per_replica"], "batch_size": nc["batch_size"],
                    "load": (nc.get("load") or {}).get("label", ""), "cores": s["cores"],
                    **{k: s.get(k) for k in CSV_FIELDS if k in s}})
    return out


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(doc: dict) -> str:
    """The summary table as aligned text: goodput (real answers within the objective per second) first."""
    cols = [("run", "run"), ("num_replicas", "repl"), ("cpus_per_replica", "cpu/r"), ("batch_size", "batch"),
            ("load", "load"), ("goodput_qps", "goodput qps"), ("goodput_per_core", "goodput qps/core"),
            ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("mean_batch_size", "mean batch"), ("errors", "errors"),
            ("defaults", "defaults"), ("thruput_qps", "thruput+defaults qps"), ("steady", "steady")]
    table_rows = rows(doc)
    body = [[_steady(r) if k == "steady" else _fmt(r.get(k)) for k, _ in cols] for r in table_rows]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, (_, h) in enumerate(cols)]
    lines = ["  ".join(h.rjust(w) for (_, h), w in zip(cols, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    unsteady = [str(r["run"]) for r in table_rows if r.get("steady") is False]
    if unsteady:
        lines.append(f"steady = whether throughput settled before measuring; run(s) {', '.join(unsteady)} "
                     "did not within the duration (measured anyway: read them with care)")
    return "\n".join(lines)


def _steady(row: dict) -> str:
    value = row.get("steady")
    return "-" if value is None else "yes" if value else "NO"


def write(doc: dict, out_dir: str | os.PathLike, name_stamp: str) -> tuple[Path, Path]:
    """Write ``results-<stamp>.json`` and ``results-<stamp>.csv`` atomically; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"results-{name_stamp}.json"
    csv_path = out / f"results-{name_stamp}.csv"
    tmp = json_path.with_suffix(".json.tmp")
    # Clipper's driver lists the configurations at the top level; keep that field for its readers.
    doc["node_configs"] = [run["node_config"] for run in doc.get("runs", [])]
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(json_path)
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows(doc))
    return json_path, csv_path


def find(path: str | os.PathLike) -> Path:
    """The results JSON at ``path``, or the newest ``results-*.json`` in the directory ``path``."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise ResultsError(f"{p} is neither a results file nor a directory")
    found = sorted(p.glob("results-*.json"))
    if not found:
        raise ResultsError(f"no results-*.json in {p}")
    return found[-1]


def load(path: str | os.PathLike) -> dict:
    """Read and check a results document."""
    file = find(path)
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ResultsError(f"cannot read {file}: {err}") from err
    if doc.get("schema") != SCHEMA or not isinstance(doc.get("runs"), list):
        raise ResultsError(f"{file} is not a Schooner driver results file (schema {doc.get('schema')!r})")
    return doc
