"""Load generation: closed loop (N concurrent workers) or open loop (a rate, constant or Poisson).

The generator runs in the background on the caller's event loop and records each
finished query into the current *window*; the caller takes a window every
``window_s`` with :meth:`LoadGenerator.take_window` and decides what it means
(warm-up, steady-state check, measurement). Time is ``time.monotonic``.
Open-loop latency is measured from the *scheduled* send time, so a backlog in
the driver shows up as latency instead of hiding it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from driver.errors import DriverBacklog
from schooner.errors import Overloaded, SchoonerError

log = logging.getLogger(__name__)

MAX_OUTSTANDING_OPEN_LOOP = 10_000  # open-loop queries in flight beyond this are counted as driver_backlog
MAX_RETRY_AFTER_S = 1.0  # a closed-loop worker waits at most this long after an overloaded answer


class Arrival(str, enum.Enum):
    """Inter-arrival times of open-loop load."""

    CONSTANT = "constant"
    POISSON = "poisson"


class LoadKind(str, enum.Enum):
    """Closed loop (fixed concurrency) or open loop (fixed rate)."""

    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True)
class LoadLevel:
    """One load level of a sweep."""

    kind: LoadKind
    concurrency: int = 0
    rate_qps: float = 0.0
    arrival: Arrival = Arrival.CONSTANT

    @classmethod
    def closed(cls, concurrency: int) -> LoadLevel:
        """``concurrency`` workers, each sending its next query when the last one answers."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        return cls(LoadKind.CLOSED, concurrency=concurrency)

    @classmethod
    def open(cls, rate_qps: float, arrival: Arrival = Arrival.CONSTANT) -> LoadLevel:
        """Queries sent at ``rate_qps`` whatever the answers do."""
        if rate_qps <= 0:
            raise ValueError("rate_qps must be > 0")
        return cls(LoadKind.OPEN, rate_qps=float(rate_qps), arrival=Arrival(arrival))

    @property
    def label(self) -> str:
        """Short name for tables and plot legends."""
        if self.kind is LoadKind.CLOSED:
            return f"c={self.concurrency}"
        return f"{self.rate_qps:g}qps" + ("/poisson" if self.arrival is Arrival.POISSON else "")

    def to_dict(self) -> dict:
        """JSON form."""
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self).items()}


class PredictClient(Protocol):
    """What the generator needs from a client (frontend.client.AsyncClient)."""

    async def predict(self, app: str, input: Any) -> Any:  # noqa: A002 - Clipper's name
        """Answer one query; raise SchoonerError on a named error."""
        ...


def make_inputs(width: int, count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """A few distinct float32 inputs of ``width``, generated once and reused for every query."""
    rng = np.random.default_rng(seed)
    return [rng.random(width, dtype=np.float32) for _ in range(count)]


def latency_summary(latencies_ms: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """p50/p95/p99/mean/max in ms (None when there are no samples)."""
    arr = np.asarray(latencies_ms, dtype=np.float64)
    if arr.size == 0:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "mean_ms": float(arr.mean()), "max_ms": float(arr.max())}


@dataclass
class WindowStats:
    """Client metrics of one window."""

    index: int
    phase: str
    start_s: float  # seconds since the generator started
    duration_s: float
    count: int
    thruput_qps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    errors: int
    defaults: int
    error_codes: dict[str, int] = field(default_factory=dict)
    mean_batch_size: float | None = None
    good: int = 0  # real answers (not default outputs) within the latency objective
    goodput_qps: float = 0.0  # good per second: what the driver ranks by

    def to_dict(self) -> dict:
        """JSON form."""
        return asdict(self)


@dataclass
class _Window:
    start_s: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    defaults: int = 0
    good: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)


class LoadGenerator:
    """Sends queries for ``app`` at a :class:`LoadLevel` until stopped, recording per window."""

    def __init__(self, client: PredictClient, app: str, inputs: Sequence[Any], level: LoadLevel,
                 seed: int = 0, clock: Callable[[], float] = time.monotonic, slo_ms: float | None = None) -> None:
        if not inputs:
            raise ValueError("inputs must not be empty")
        self._client = client
        self._app = app
        self._inputs = list(inputs)
        self.level = level
        self._rng = random.Random(seed)
        self._clock = clock
        self._slo_ms = slo_ms  # a real answer counts as good within it (None: every real answer)
        self._running = False
        self._tasks: list[asyncio.Task] = []
        self._outstanding: set[asyncio.Task] = set()
        self._t0 = 0.0
        self._window = _Window(0.0)
        self._index = 0
        self.total_sent = 0
        self.total_errors = 0
        self.total_defaults = 0
        self.total_answered = 0

    async def start(self) -> None:
        """Start sending in the background."""
        if self._running:
            raise RuntimeError("generator already running")
        self._running = True
        self._t0 = self._clock()
        self._window = _Window(self._t0)
        if self.level.kind is LoadKind.CLOSED:
            self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.level.concurrency)]
        else:
            self._tasks = [asyncio.create_task(self._scheduler())]

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop sending; wait up to ``timeout_s`` for queries in flight to finish."""
        self._running = False
        pending = [t for t in self._tasks + list(self._outstanding) if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout_s)
            for task in still:
                task.cancel()
            if still:
                log.warning("%d queries still in flight after %.1fs; cancelled", len(still), timeout_s)
                await asyncio.gather(*still, return_exceptions=True)
        self._tasks = []

    def take_window(self, phase: str) -> tuple[WindowStats, list[float]]:
        """Close the current window: its stats and its raw latencies (ms); a new window starts now."""
        now = self._clock()
        win, self._window = self._window, _Window(now)
        duration = max(now - win.start_s, 1e-9)
        count = len(win.latencies_ms)
        stats = WindowStats(
            index=self._index, phase=phase, start_s=win.start_s - self._t0, duration_s=duration,
            count=count, thruput_qps=count / duration, errors=win.errors, defaults=win.defaults,
            error_codes=dict(win.error_codes), good=win.good, goodput_qps=win.good / duration,
            **latency_summary(win.latencies_ms))
        self._index += 1
        return stats, win.latencies_ms

    def _record(self, sent_at: float, outcome: Any) -> None:
        win = self._window
        if isinstance(outcome, BaseException):
            code = outcome.code if isinstance(outcome, SchoonerError) else type(outcome).__name__
            win.errors += 1
            win.error_codes[code] = win.error_codes.get(code, 0) + 1
            self.total_errors += 1
            return
        latency_ms = (self._clock() - sent_at) * 1000.0
        win.latencies_ms.append(latency_ms)
        self.total_answered += 1
        if getattr(outcome, "default", False):
            win.defaults += 1
            self.total_defaults += 1
        elif self._slo_ms is None or latency_ms <= self._slo_ms:
            win.good += 1

    async def _one(self, sent_at: float) -> Any:
        item = self._inputs[self.total_sent % len(self._inputs)]
        self.total_sent += 1
        try:
            outcome: Any = await self._client.predict(self._app, item)
        except Exception as err:  # noqa: BLE001 - every query must end counted, whatever the client raised
            if not isinstance(err, SchoonerError):
                log.debug("query failed outside the protocol: %r", err)
            outcome = err
        self._record(sent_at, outcome)
        return outcome

    async def _worker(self, _: int) -> None:
        while self._running:
            outcome = await self._one(self._clock())
            if isinstance(outcome, Overloaded):
                # A shed query says when the queue ahead will have drained; a closed-loop client that
                # resent at once would only measure how fast the frontend can say no.
                await asyncio.sleep(min(max(outcome.retry_after_s, 0.001), MAX_RETRY_AFTER_S))

    async def _scheduler(self) -> None:
        rate = self.level.rate_qps
        next_at = self._clock()
        while self._running:
            delay = next_at - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
                if not self._running:
                    break
            if len(self._outstanding) >= MAX_OUTSTANDING_OPEN_LOOP:
                self._record(next_at, DriverBacklog("driver could not keep up with the open-loop rate"))
            else:
                task = asyncio.create_task(self._one(next_at))
                self._outstanding.add(task)
                task.add_done_callback(self._outstanding.discard)
            gap = self._rng.expovariate(rate) if self.level.arrival is Arrival.POISSON else 1.0 / rate
            next_at += gap
