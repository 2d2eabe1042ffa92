"""Pick the configuration to deploy from measured runs.

- For a latency objective (SLO): among runs whose p99 meets it, the one with the
  most goodput per core (ties: more goodput, then lower p99). Goodput is real
  answers within the objective per second; default outputs never count.
- For a target throughput: among runs whose goodput reaches it *and* that meet
  the SLO, the cheapest (fewest cores; ties: lower p99, then more goodput).

A run is eligible only if almost every query got a real answer: errors plus
default outputs at most ``MAX_BAD_FRACTION`` of the queries it sent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

MAX_BAD_FRACTION = 0.01


@dataclass
class Recommendation:
    """The chosen run (or None) for one objective, with the figures that justify it."""

    objective: str  # "slo" | "target_qps"
    slo_ms: float
    target_qps: float | None
    run_index: int | None
    node_config: dict | None
    thruput_qps: float | None
    p99_ms: float | None
    cores: int | None
    thruput_per_core: float | None
    reason: str
    goodput_qps: float | None = None
    goodput_per_core: float | None = None

    def to_dict(self) -> dict:
        """JSON form."""
        return asdict(self)

    def describe(self) -> str:
        """One human line."""
        if self.run_index is None:
            return f"[{self.objective}] no recommendation: {self.reason}"
        nc = self.node_config or {}
        load = (nc.get("load") or {}).get("label", "")
        return (f"[{self.objective}] run {self.run_index}: {nc.get('num_replicas')} replica(s) x "
                f"{nc.get('cpus_per_replica')} cpu(s), batch_size {nc.get('batch_size')}"
                f"{' at ' + load if load else ''} -> goodput {_num(self.goodput_qps)} qps, p99 {self.p99_ms:.1f} ms, "
                f"{self.cores} core(s), {_num(self.goodput_per_core)} goodput/core; throughput with defaults "
                f"{self.thruput_qps:.1f} qps ({self.reason})")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def goodput(summary: dict) -> float:
    """Real answers within the objective per second (older results without it: throughput)."""
    value = summary.get("goodput_qps")
    return summary["thruput_qps"] if value is None else value


def cores_of(node_config: dict) -> int:
    """Cores a configuration occupies: replicas x cpus per replica."""
    return int(node_config["num_replicas"]) * int(node_config["cpus_per_replica"])


def bad_fraction(summary: dict) -> float:
    """Fraction of sent queries that failed or got the default output."""
    sent = summary.get("count", 0) + summary.get("errors", 0)
    if sent <= 0:
        return 1.0
    return (summary.get("errors", 0) + summary.get("defaults", 0)) / sent


def _meets_slo(summary: dict, slo_ms: float) -> bool:
    p99 = summary.get("p99_ms")
    return p99 is not None and p99 <= slo_ms and bad_fraction(summary) <= MAX_BAD_FRACTION


def _make(objective: str, slo_ms: float, target_qps: float | None, runs: Sequence[dict],
          index: int | None, reason: str) -> Recommendation:
    if index is None:
        return Recommendation(objective, slo_ms, target_qps, None, None, None, None, None, None, reason)
    run = runs[index]
    s = run["summary"]
    cores = cores_of(run["node_config"])
    return Recommendation(objective, slo_ms, target_qps, index, run["node_config"], s["thruput_qps"],
                          s["p99_ms"], cores, s["thruput_qps"] / cores, reason, goodput(s), goodput(s) / cores)


def for_slo(runs: Sequence[dict], slo_ms: float) -> Recommendation:
    """Most goodput per core among runs whose p99 meets ``slo_ms``."""
    ok = [i for i, r in enumerate(runs) if _meets_slo(r["summary"], slo_ms)]
    if not ok:
        measured = [r["summary"]["p99_ms"] for r in runs if r["summary"].get("p99_ms") is not None]
        best = f"; the lowest p99 measured was {min(measured):.1f} ms" if measured else ""
        return _make("slo", slo_ms, None, runs, None, f"no configuration met p99 <= {slo_ms:g} ms{best}")

    def key(i: int) -> tuple:
        s = runs[i]["summary"]
        return (-goodput(s) / cores_of(runs[i]["node_config"]), -goodput(s), s["p99_ms"])

    best_i = min(ok, key=key)
    return _make("slo", slo_ms, None, runs, best_i,
                 f"most goodput per core of {len(ok)} configuration(s) with p99 <= {slo_ms:g} ms")


def for_target_qps(runs: Sequence[dict], target_qps: float, slo_ms: float) -> Recommendation:
    """Fewest cores among runs whose goodput reaches ``target_qps`` with p99 within ``slo_ms``."""
    ok = [i for i, r in enumerate(runs)
          if goodput(r["summary"]) >= target_qps and _meets_slo(r["summary"], slo_ms)]
    if not ok:
        top = max((goodput(r["summary"]) for r in runs if _meets_slo(r["summary"], slo_ms)), default=None)
        best = f"; the most goodput within the SLO was {top:.1f} qps" if top is not None else ""
        return _make("target_qps", slo_ms, target_qps, runs, None,
                     f"no configuration reached {target_qps:g} qps with p99 <= {slo_ms:g} ms{best}")

    def key(i: int) -> tuple:
        s = runs[i]["summary"]
        return (cores_of(runs[i]["node_config"]), s["p99_ms"], -goodput(s))

    best_i = min(ok, key=key)
    return _make("target_qps", slo_ms, target_qps, runs, best_i,
                 f"fewest cores of {len(ok)} configuration(s) reaching {target_qps:g} qps within the SLO")


def recommend(runs: Sequence[dict], slo_ms: float, target_qps: float | None = None) -> dict[str, Any]:
    """Both recommendations as JSON: ``{"slo": {...}, "target_qps": {...} | None}``."""
    out: dict[str, Any] = {"slo": for_slo(runs, slo_ms).to_dict(), "target_qps": None}
    if target_qps is not None:
        out["target_qps"] = for_target_qps(runs, target_qps, slo_ms).to_dict()
    return out


def describe(rec: dict[str, Any]) -> list[str]:
    """Human lines for the JSON form returned by :func:`recommend`."""
    return [Recommendation(**r).describe() for r in (rec.get("slo"), rec.get("target_qps")) if r]
