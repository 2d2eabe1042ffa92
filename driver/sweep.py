"""The sweep runner: deploy each configuration through the REST API, warm up, wait for a steady
state, measure, and collect client and frontend metrics into the results document."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from driver.admin import Admin
from driver.errors import DeployError
from driver.load import LoadGenerator, LoadLevel, WindowStats, make_inputs
from driver.results import batch_size_stats, summarize, thin
from driver.validate import SweepSpec
from schooner.types import BatchSize

log = logging.getLogger(__name__)

STEADY_WINDOWS = 3  # steady: throughput of this many consecutive windows within STEADY_TOLERANCE
STEADY_TOLERANCE = 0.10
ADAPTIVE_BATCH_GUESS = 16  # batch size assumed for adaptive batching when sizing concurrency
MAX_AUTO_CONCURRENCY = 512
QUERY_TIMEOUT_S = 30.0
HEAVY_MODELS = ("vgg", "inception", "resnet18")  # load torch: give replicas longer to come up
MODEL_VERSION = "1"


def scale_wait_s(model: str) -> float:
    """How long set_num_replicas may wait for a model's replicas to serve."""
    return 240.0 if model in HEAVY_MODELS else 90.0


def auto_concurrency(num_replicas: int, batch_size: int, saturate: bool = False) -> int:
    """Closed-loop workers for a configuration: enough to fill every replica's batch twice (4x to saturate)."""
    b = ADAPTIVE_BATCH_GUESS if BatchSize.parse(batch_size).adaptive else batch_size
    factor = 4 if saturate else 2
    floor = 32 if saturate else 4
    return min(MAX_AUTO_CONCURRENCY, max(floor, factor * num_replicas * b))


@dataclass
class NodeConfig:
    """One configuration of a sweep."""

    model: str
    batch_size: int
    num_replicas: int
    cpus_per_replica: int
    cpus: list[int]  # the cores the replicas may use
    gpus: list[int]
    slo_ms: float
    load: LoadLevel
    model_opts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON form (``load_value`` is the concurrency or the rate, for plots)."""
        load = {**self.load.to_dict(), "label": self.load.label}
        value = self.load.concurrency if self.load.concurrency else self.load.rate_qps
        return {"model": self.model, "batch_size": self.batch_size, "num_replicas": self.num_replicas,
                "cpus_per_replica": self.cpus_per_replica, "cpus": list(self.cpus), "gpus": list(self.gpus),
                "slo_ms": self.slo_ms, "load": load, "load_value": value, "model_opts": dict(self.model_opts)}


def plan(spec: SweepSpec, levels: list[LoadLevel | None] | None = None, saturate: bool = False) -> list[NodeConfig]:
    """Every configuration, ordered so replicas change least often (batching and load vary fastest).

    Without load levels given, the concurrency depends on the replica count only (sized
    for the sweep's largest batch), so every batch size of a replica count sees the
    same load and their goodputs compare.
    """
    out = []
    for p, r, b, level in itertools.product(spec.cpus_per_replica, spec.num_replicas, spec.batch_sizes,
                                            levels if levels is not None else spec.load_levels):
        load = level or LoadLevel.closed(max(auto_concurrency(r, size, saturate) for size in spec.batch_sizes))
        out.append(NodeConfig(spec.model, b, r, p, spec.model_cpus, spec.model_gpus, spec.slo_ms, load,
                              spec.model_opts))
    return out


class Deployment:
    """The app and model version the driver deploys, reconfigures and finally removes."""

    def __init__(self, admin: Admin, spec: SweepSpec, name: str = "") -> None:
        self.admin = admin
        self.spec = spec
        self.model_name = name or f"driver-{spec.model}"
        self.app = f"{self.model_name}-app"
        self.version = MODEL_VERSION
        self._added = False
        self._replicas: tuple[int, int] | None = None  # (num_replicas, cpus_per_replica) now deployed

    def model_body(self, batch_size: int, cpus_per_replica: int) -> dict:
        """The add_model body for this deployment."""
        mi = self.spec.model_input
        return {"model_name": self.model_name, "model_version": self.version, "input_type": mi.input_type,
                "launcher": self.spec.model, "model_opts": self.spec.model_opts, "batch_size": batch_size,
                "max_batch_size": max(64, batch_size), "batch_wait_timeout_micros": 0,
                "cpus_per_replica": cpus_per_replica, "input_shape": [mi.width]}

    def apply(self, nc: NodeConfig) -> None:
        """Deploy ``nc``: register on first use, then set batching and scale (waiting until replicas serve)."""
        if not self._added:
            self.admin.add_app(self.app, self.spec.model_input.input_type, "None", int(nc.slo_ms * 1000))
            self.admin.add_model(self.model_body(nc.batch_size, nc.cpus_per_replica))
            self.admin.link(self.app, self.model_name)
            self._added = True
        self.admin.set_batching(self.model_name, self.version, nc.batch_size, max(64, nc.batch_size), 0)
        want = (nc.num_replicas, nc.cpus_per_replica)
        if self._replicas != want:
            if self._replicas and self._replicas[1] != nc.cpus_per_replica:
                # Replicas are pinned at launch: a new width means new replicas.
                self.scale(0, nc.cpus_per_replica)
            self.scale(nc.num_replicas, nc.cpus_per_replica)

    def scale(self, num_replicas: int, cpus_per_replica: int) -> float:
        """set_num_replicas, waiting until they serve; returns the seconds the call took."""
        t0 = time.monotonic()
        self.admin.set_num_replicas(self.model_name, self.version, num_replicas, cpus_per_replica,
                                    self.spec.model_cpus, self.spec.model_gpus, scale_wait_s(self.spec.model))
        self._replicas = (num_replicas, cpus_per_replica)
        return time.monotonic() - t0

    def replicas(self) -> Any:
        """The manager's description of the replicas (empty on failure)."""
        try:
            return self.admin.replicas(self.model_name, self.version)
        except DeployError as err:
            log.warning("get_model_replicas failed: %s", err)
            return []

    def remove(self) -> None:
        """Remove the app and the model (used on a deployment the driver did not start)."""
        if self._added:
            self.admin.delete(self.app, self.model_name, self.version)
            self._added = False


def steady(windows: list[WindowStats]) -> bool:
    """Throughput of the last STEADY_WINDOWS windows within STEADY_TOLERANCE of their mean."""
    if len(windows) < STEADY_WINDOWS:
        return False
    t = [w.thruput_qps for w in windows[-STEADY_WINDOWS:]]
    mean = sum(t) / len(t)
    return mean > 0 and (max(t) - min(t)) <= STEADY_TOLERANCE * mean


def window_line(w: WindowStats) -> str:
    """The per-window log line (Clipper image driver's format)."""
    def ms(v: float | None) -> str:
        return "nan" if v is None else f"{v:.2f}"
    batch = "nan" if w.mean_batch_size is None else f"{w.mean_batch_size:.2f}"
    extra = f", errors: {w.errors}, defaults: {w.defaults}" if (w.errors or w.defaults) else ""
    # Goodput (real answers within the objective) leads; Clipper's "thruput" counts defaults too.
    return (f"goodput: {w.goodput_qps:.2f} qps, p99: {ms(w.p99_ms)} ms, mean: {ms(w.mean_ms)} ms, "
            f"thruput: {w.thruput_qps:.2f} qps, batch_sizes: mean {batch}{extra} [{w.phase}]")


class Measurer:
    """Runs one configuration's load phases against a deployment and returns its run record."""

    def __init__(self, spec: SweepSpec, deployment: Deployment, client: Any) -> None:
        self.spec = spec
        self.deployment = deployment
        self.client = client
        self.inputs = make_inputs(spec.model_input.width, count=4, seed=spec.seed)
        self._last_metrics: dict | None = None

    async def _metrics(self) -> dict | None:
        try:
            return await asyncio.to_thread(self.deployment.admin.metrics)
        except DeployError as err:
            log.warning("metrics unavailable: %s", err)
            return None

    async def _window(self, gen: LoadGenerator, phase: str, seconds: float) -> tuple[WindowStats, list[float]]:
        await asyncio.sleep(seconds)
        stats, lat = gen.take_window(phase)
        dump = await self._metrics()
        stats.mean_batch_size = batch_size_stats(self._last_metrics, dump, self.deployment.model_name,
                                                 self.deployment.version)
        if dump is not None:
            self._last_metrics = dump
        log.info("%s", window_line(stats))
        return stats, lat

    async def run(self, nc: NodeConfig) -> dict:
        """Warm up, wait for a steady state (at most the duration), measure for the duration."""
        spec = self.spec
        gen = LoadGenerator(self.client, self.deployment.app, self.inputs, nc.load, seed=spec.seed,
                            slo_ms=nc.slo_ms)
        windows: list[WindowStats] = []
        latencies: list[float] = []
        await gen.start()
        try:
            if spec.warmup_s > 0:
                await asyncio.sleep(spec.warmup_s)
                gen.take_window("warmup")
            self._last_metrics = await self._metrics()
            t0 = time.monotonic()
            checks: list[WindowStats] = []
            while not steady(checks) and time.monotonic() - t0 < spec.duration_s:
                w, _ = await self._window(gen, "steady_check", spec.window_s)
                checks.append(w)
            is_steady = steady(checks)
            steady_wait_s = time.monotonic() - t0
            if not is_steady:
                log.warning("no steady state within %.1fs; measuring anyway", spec.duration_s)
            windows.extend(checks)
            start_metrics = self._last_metrics  # batch sizes of the measurement phase only
            measured = 0.0
            while measured < spec.duration_s - 1e-3:
                w, lat = await self._window(gen, "measure", min(spec.window_s, spec.duration_s - measured))
                measured += w.duration_s
                windows.append(w)
                latencies.extend(lat)
        finally:
            await gen.stop(timeout_s=QUERY_TIMEOUT_S)
        end_metrics = await self._metrics()
        mean_batch = batch_size_stats(start_metrics, end_metrics, self.deployment.model_name,
                                      self.deployment.version)
        node = nc.to_dict()
        return {"node_config": node, "client_metrics": [w.to_dict() for w in windows],
                "summary": summarize(node, windows, latencies, mean_batch, is_steady, steady_wait_s),
                "clipper_metrics": end_metrics, "replicas": await asyncio.to_thread(self.deployment.replicas),
                "latencies_ms": thin(latencies)}


async def run_sweep(spec: SweepSpec, admin: Admin, client: Any, doc: dict, configs: list[NodeConfig],
                    on_run: Callable[[dict], None] = lambda doc: None) -> dict:
    """Measure every configuration; append each run to ``doc['runs']`` and call ``on_run(doc)`` after each."""
    deployment = Deployment(admin, spec)
    measurer = Measurer(spec, deployment, client)
    started = time.monotonic()
    for k, nc in enumerate(configs, start=1):
        done = time.monotonic() - started
        per = done / (k - 1) if k > 1 else spec.warmup_s + 2 * spec.duration_s
        log.info("configuration %d of %d: %d replica(s) x %d cpu(s), batch_size %s, load %s "
                 "(estimated time left %.0fs)", k, len(configs), nc.num_replicas, nc.cpus_per_replica,
                 nc.batch_size, nc.load.label, per * (len(configs) - k + 1))
        await asyncio.to_thread(deployment.apply, nc)
        run = await measurer.run(nc)
        s = run["summary"]
        log.info("configuration %d of %d done: goodput %.1f qps (thruput %.1f with defaults), p99 %s ms, "
                 "%d errors, %d defaults", k, len(configs), s["goodput_qps"], s["thruput_qps"],
                 "nan" if s["p99_ms"] is None else f"{s['p99_ms']:.1f}", s["errors"], s["defaults"])
        doc["runs"].append(run)
        on_run(doc)
    if spec.frontend:
        await asyncio.to_thread(deployment.remove)
    return doc
