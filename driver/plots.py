"""PNG plots of a results document (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402

from schooner.types import BatchSize  # noqa: E402

log = logging.getLogger(__name__)


def _load_label(nc: dict) -> str:
    return (nc.get("load") or {}).get("label", "")


def _load_swept(doc: dict) -> bool:
    """Whether some configuration ran at several load levels (else the load is derived, not a series)."""
    seen: dict[tuple, set] = defaultdict(set)
    for run in doc.get("runs", []):
        nc = run["node_config"]
        seen[(nc["num_replicas"], nc["cpus_per_replica"], nc["batch_size"])].add(_load_label(nc))
    return any(len(labels) > 1 for labels in seen.values())


def _batch_label(b: int) -> str:
    return "adaptive" if b == BatchSize.ADAPTIVE else str(b)


def _series(doc: dict, x_key: str, group: Callable[[dict], str]) -> dict[str, list[tuple[int, dict]]]:
    out: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for run in doc["runs"]:
        nc = run["node_config"]
        out[group(nc)].append((nc[x_key], run["summary"]))
    return out


def _shape(nc: dict) -> str:
    """``2 replicas × 1 core`` (the words a reader needs, not ``r=2 p=1``)."""
    r, p = nc["num_replicas"], nc["cpus_per_replica"]
    return f"{r} replica{'s' if r != 1 else ''} × {p} core{'s' if p != 1 else ''}"


def _load_text(label: str) -> str:
    """A load label (``c=16``, ``120qps``...) as words for an annotation."""
    if label.startswith("c="):
        return f"{label[2:]} clients"
    return label


def _varies(doc: dict, key: str) -> bool:
    """Whether the runs took more than one value of ``key`` (a plot against it needs two points)."""
    return len({run["node_config"][key] for run in doc.get("runs", [])}) > 1


def _two_panel(doc: dict, x_key: str, xlabel: str, group: Callable[[dict], str], title: str,
               path: Path, categorical: bool, annotate_load: bool = False) -> Path:
    series = _series(doc, x_key, group)
    loads = {(run["node_config"][x_key], group(run["node_config"])): _load_label(run["node_config"])
             for run in doc["runs"]}
    xs = sorted({x for pts in series.values() for x, _ in pts}, key=lambda b: (b == BatchSize.ADAPTIVE, b))
    pos = {x: i for i, x in enumerate(xs)} if categorical else {x: x for x in xs}
    fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, pts in sorted(series.items()):
        pts = sorted(pts, key=lambda p: pos[p[0]])
        x = [pos[p[0]] for p in pts]
        good = [p[1].get("goodput_qps", p[1]["thruput_qps"]) for p in pts]
        line, = ax_t.plot(x, good, marker="o", label=f"{label} goodput")
        if annotate_load:
            # Each point ran at its own load (the driver picks one per configuration): say which.
            for (xv, _), xp, yp in zip(pts, x, good):
                text = _load_text(loads.get((xv, label), ""))
                if text:
                    ax_t.annotate(text, (xp, yp), textcoords="offset points",
                                  xytext=(4, 4), fontsize="x-small", color=line.get_color())
        # Goodput (real answers within the SLO) leads; throughput counting defaults is the dashed line.
        ax_t.plot(x, [p[1]["thruput_qps"] for p in pts], marker="x", linestyle="--",
                  color=line.get_color(), label=f"{label} throughput incl. defaults")
        ax_p.plot(x, [p[1]["p99_ms"] if p[1]["p99_ms"] is not None else np.nan for p in pts],
                  marker="o", label=label)
    slo = doc.get("slo_ms")
    if slo:
        ax_p.axhline(slo, color="red", linestyle="--", linewidth=1, label=f"SLO {slo:g} ms")
    for ax, ylabel in ((ax_t, "goodput; throughput incl. defaults (qps)"), (ax_p, "p99 latency (ms)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xticks([pos[x] for x in xs])
        ax.set_xticklabels([_batch_label(x) if x_key == "batch_size" else str(x) for x in xs])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{doc.get('model')}: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def best_run_index(doc: dict) -> int | None:
    """The recommended run for the SLO, else the run with the most throughput."""
    rec = (doc.get("recommendation") or {}).get("slo") or {}
    if rec.get("run_index") is not None:
        return int(rec["run_index"])
    runs = doc.get("runs", [])
    if not runs:
        return None
    return max(range(len(runs)), key=lambda i: runs[i]["summary"].get("goodput_qps") or 0.0)


def latency_cdf(doc: dict, index: int, path: Path) -> Path:
    """CDF of the raw measurement latencies of run ``index``."""
    run = doc["runs"][index]
    lat = np.sort(np.asarray(run.get("latencies_ms", []), dtype=np.float64))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if lat.size:
        ax.plot(lat, np.arange(1, lat.size + 1) / lat.size)
    slo = doc.get("slo_ms")
    if slo:
        ax.axvline(slo, color="red", linestyle="--", linewidth=1, label=f"SLO {slo:g} ms")
        ax.legend(fontsize="small")
    nc = run["node_config"]
    ax.set_title(f"{nc['model']}: {nc['num_replicas']} repl x {nc['cpus_per_replica']} cpu, "
                 f"batch {_batch_label(nc['batch_size'])} {_load_label(nc)} (run {index})", fontsize="medium")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of queries")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def draw_all(doc: dict, out_dir: str | Path, name_stamp: str) -> list[Path]:
    """Every plot for ``doc`` into ``out_dir``; returns the PNG paths (none when there are no runs)."""
    runs = doc.get("runs", [])
    if not runs:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    swept = _load_swept(doc)

    def load(nc: dict) -> str:
        return _load_label(nc) if swept else ""

    paths = []
    # A plot against something that did not vary is one x value and a legend entry per other run:
    # drawn only when its x took two values or more.
    if _varies(doc, "batch_size"):
        paths.append(_two_panel(
            doc, "batch_size", "batch size", lambda nc: f"{_shape(nc)} {load(nc)}".strip(),
            "throughput and p99 vs batch size" + ("" if swept else " (each point at its own load, marked)"),
            out / f"batch-{name_stamp}.png", categorical=True, annotate_load=not swept))
    if _varies(doc, "num_replicas"):
        paths.append(_two_panel(
            doc, "num_replicas", "replicas",
            lambda nc: f"batch {_batch_label(nc['batch_size'])}, {nc['cpus_per_replica']} core(s) per replica "
                       f"{load(nc)}".strip(),
            "throughput and p99 vs replicas", out / f"replicas-{name_stamp}.png", categorical=False,
            annotate_load=not swept))
    if swept:
        paths.append(_two_panel(
            doc, "load_value", "load (concurrency or qps)",
            lambda nc: f"{_shape(nc)}, batch {_batch_label(nc['batch_size'])}",
            "throughput and p99 vs load", out / f"load-{name_stamp}.png", categorical=True))
    best = best_run_index(doc)
    if best is not None:
        paths.append(latency_cdf(doc, best, out / f"cdf-{name_stamp}.png"))
    log.info("plots written: %s", ", ".join(str(p) for p in paths))
    return paths
