"""Metrics registry: counters, ratio counters, gauges, meters and histograms.

Dumped as JSON in Clipper's layout (:meth:`MetricsRegistry.dump`); the
Prometheus exposition (labels, seconds, histograms) is a collector over this
registry, in :mod:`frontend.prometheus`. Recording is O(1) and lock-free (the
frontend records from one asyncio thread); every aggregate (EWMA ticks,
percentiles) is computed lazily when read.

Meters follow Clipper/Dropwizard: a tick every 5 s folds the events counted since
the last tick into exponentially weighted 1/5/15-minute rates. Histograms keep a
sliding window of the most recent ``reservoir_size`` values (Clipper keeps 4096);
``size`` is the number of values ever inserted and the statistics are over the
window. Each histogram also counts every value into fixed cumulative-style
buckets (one bisect per insert) for the Prometheus histogram.
"""

from __future__ import annotations

import bisect
import math
import time
from typing import Callable, Union

import numpy as np

Clock = Callable[[], float]

TICK_INTERVAL_S = 5.0
RESERVOIR_SIZE = 4096
_EWMA_MINUTES = (1, 5, 15)

# Bucket upper bounds by unit, chosen for serving: latencies from 50 µs to 10 s,
# batch and queue sizes in powers of two.
LATENCY_BUCKETS_MICROS = (50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
                          250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000)
SIZE_BUCKETS = tuple(float(2 ** i) for i in range(15))  # 1 .. 16384


class Counter:
    """A count that only goes up (until reset)."""

    kind = "counters"

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0

    def inc(self, n: int = 1) -> None:
        """Add ``n``."""
        self.value += n

    def reset(self) -> None:
        """Back to zero."""
        self.value = 0

    def report(self) -> dict:
        """Clipper's JSON body of this metric."""
        return {"count": self.value}


class RatioCounter:
    """A running numerator/denominator pair reported as their ratio (0 when empty)."""

    kind = "ratio_counters"

    def __init__(self, name: str) -> None:
        self.name = name
        self.numerator = 0
        self.denominator = 0

    def inc(self, numerator: int = 0, denominator: int = 0) -> None:
        """Add to the numerator and the denominator."""
        self.numerator += numerator
        self.denominator += denominator

    @property
    def ratio(self) -> float:
        """numerator / denominator, 0.0 while the denominator is 0."""
        return self.numerator / self.denominator if self.denominator else 0.0

    def reset(self) -> None:
        """Back to 0/0."""
        self.numerator = 0
        self.denominator = 0

    def report(self) -> dict:
        """Clipper's JSON body of this metric."""
        return {"ratio": self.ratio}


class Gauge:
    """A value that is set, not accumulated (e.g. a queue size)."""

    kind = "gauges"

    def __init__(self, name: str) -> None:
        self.name = name
        self.value: float = 0

    def set(self, value: float) -> None:
        """Replace the value."""
        self.value = value

    def reset(self) -> None:
        """Back to zero."""
        self.value = 0

    def report(self) -> dict:
        """JSON body of this metric."""
        return {"value": self.value}


class _Ewma:
    """One exponentially weighted moving rate, in events per second."""

    __slots__ = ("alpha", "rate", "initialized")

    def __init__(self, minutes: int) -> None:
        self.alpha = 1.0 - math.exp(-TICK_INTERVAL_S / 60.0 / minutes)
        self.rate = 0.0
        self.initialized = False

    def tick(self, events: int, idle_ticks: int) -> None:
        """Fold ``events`` counted over one interval in, then decay over ``idle_ticks`` empty ones."""
        instant = events / TICK_INTERVAL_S
        if self.initialized:
            self.rate += self.alpha * (instant - self.rate)
        else:
            self.rate = instant
            self.initialized = True
        if idle_ticks:
            # Closed form of idle_ticks updates with no events, so a long idle read stays O(1).
            self.rate *= (1.0 - self.alpha) ** idle_ticks

    def reset(self) -> None:
        self.rate = 0.0
        self.initialized = False


class Meter:
    """Events per second: mean rate since start and 1/5/15-minute EWMAs."""

    kind = "meters"

    def __init__(self, name: str, clock: Clock = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._ewmas = [_Ewma(m) for m in _EWMA_MINUTES]
        self.reset()

    def reset(self) -> None:
        """Forget every event; the mean rate restarts now."""
        self.count = 0
        self._uncounted = 0
        self._start = self._last_tick = self._clock()
        for ewma in self._ewmas:
            ewma.reset()

    def mark(self, n: int = 1) -> None:
        """Record ``n`` events now (no clock read: :meth:`tick` runs every interval, readers tick too)."""
        self.count += n
        self._uncounted += n

    def tick(self) -> None:
        """Fold the events of every interval that has ended into the EWMAs (the owner calls this often)."""
        self._tick(self._clock())

    def _tick(self, now: float) -> None:
        ticks = int((now - self._last_tick) // TICK_INTERVAL_S)
        if ticks <= 0:
            return
        self._last_tick += ticks * TICK_INTERVAL_S
        events, self._uncounted = self._uncounted, 0
        for ewma in self._ewmas:
            ewma.tick(events, ticks - 1)

    @property
    def rate(self) -> float:
        """Mean events per second since start (or the last reset)."""
        elapsed = self._clock() - self._start
        return self.count / elapsed if elapsed > 0 else 0.0

    def rates(self) -> tuple[float, float, float]:
        """The 1, 5 and 15-minute EWMA rates, ticked up to now."""
        self._tick(self._clock())
        return tuple(e.rate for e in self._ewmas)  # type: ignore[return-value]

    def report(self) -> dict:
        """Clipper's JSON body of this metric."""
        r1, r5, r15 = self.rates()
        return {"unit": "events per second", "rate": self.rate,
                "rate_1min": r1, "rate_5min": r5, "rate_15min": r15}


class Histogram:
    """Distribution of the most recent ``reservoir_size`` values; ``count``/``sum``/buckets cover all."""

    kind = "histograms"

    def __init__(self, name: str, unit: str = "microseconds", reservoir_size: int = RESERVOIR_SIZE,
                 buckets: tuple[float, ...] | None = None) -> None:
        if reservoir_size < 1:
            raise ValueError("reservoir_size must be a positive integer")
        if buckets is None:
            buckets = LATENCY_BUCKETS_MICROS if unit == "microseconds" else SIZE_BUCKETS
        if list(buckets) != sorted(set(buckets)):
            raise ValueError("buckets must be strictly increasing")
        self.name = name
        self.unit = unit
        self.bounds = tuple(float(b) for b in buckets)
        self._size = reservoir_size
        self.reset()

    def reset(self) -> None:
        """Forget every value."""
        self._values: list[float] = [0.0] * self._size
        self._next = 0
        self.count = 0
        self.sum = 0.0
        self.bucket_counts = [0] * (len(self.bounds) + 1)  # the last one counts values above every bound

    def insert(self, value: float) -> None:
        """Record one value (O(1): overwrites the oldest once the window is full)."""
        self._values[self._next] = value
        self._next = (self._next + 1) % self._size
        self.count += 1
        self.sum += value
        self.bucket_counts[bisect.bisect_left(self.bounds, value)] += 1  # bucket i holds bounds[i-1] < v <= bounds[i]

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        """(upper bound, values <= bound) for every bound and +Inf, as Prometheus histograms count."""
        out, total = [], 0
        for bound, n in zip(self.bounds + (math.inf,), self.bucket_counts):
            total += n
            out.append((bound, total))
        return out

    def window(self) -> np.ndarray:
        """The values in the window (oldest first is not guaranteed)."""
        n = min(self.count, self._size)
        return np.asarray(self._values[:n], dtype=np.float64)

    def snapshot(self) -> dict:
        """size (values ever inserted), min, max, mean, std_dev, p50, p95, p99 of the window."""
        values = self.window()
        if values.size == 0:
            stats = dict.fromkeys(("min", "max", "mean", "std_dev", "p50", "p95", "p99"), 0.0)
        else:
            p50, p95, p99 = np.percentile(values, [50, 95, 99])
            stats = {"min": float(values.min()), "max": float(values.max()),
                     "mean": float(values.mean()), "std_dev": float(values.std()),
                     "p50": float(p50), "p95": float(p95), "p99": float(p99)}
        return {"size": self.count, **stats}

    def report(self) -> dict:
        """Clipper's JSON body of this metric."""
        return {"unit": self.unit, **self.snapshot()}


Metric = Union[Counter, RatioCounter, Gauge, Meter, Histogram]
_KINDS = ("counters", "ratio_counters", "gauges", "meters", "histograms")


class MetricsRegistry:
    """Named metrics, created on first use and returned again on later calls."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._metrics: dict[str, Metric] = {}

    def _get_or_create(self, name: str, cls: type, factory: Callable[[], Metric]) -> Metric:
        metric = self._metrics.get(name)
        if metric is None:
            if not isinstance(name, str) or not name:
                raise ValueError("metric name must be a non-empty string")
            metric = self._metrics[name] = factory()
        elif not isinstance(metric, cls):
            raise ValueError(f"metric {name!r} is a {type(metric).__name__}, not a {cls.__name__}")
        return metric

    def counter(self, name: str) -> Counter:
        """The counter called ``name``."""
        return self._get_or_create(name, Counter, lambda: Counter(name))  # type: ignore[return-value]

    def ratio_counter(self, name: str) -> RatioCounter:
        """The ratio counter called ``name``."""
        return self._get_or_create(name, RatioCounter, lambda: RatioCounter(name))  # type: ignore[return-value]

    def gauge(self, name: str) -> Gauge:
        """The gauge called ``name``."""
        return self._get_or_create(name, Gauge, lambda: Gauge(name))  # type: ignore[return-value]

    def meter(self, name: str) -> Meter:
        """The meter called ``name``."""
        return self._get_or_create(name, Meter, lambda: Meter(name, self._clock))  # type: ignore[return-value]

    def histogram(self, name: str, unit: str = "microseconds",
                  reservoir_size: int = RESERVOIR_SIZE, buckets: tuple[float, ...] | None = None) -> Histogram:
        """The histogram called ``name`` (``unit``, size and buckets apply when it is created)."""
        return self._get_or_create(  # type: ignore[return-value]
            name, Histogram, lambda: Histogram(name, unit, reservoir_size, buckets))

    def tick(self) -> None:
        """Tick every meter (the frontend calls this about once a second, so marks need no clock)."""
        for metric in list(self._metrics.values()):
            if isinstance(metric, Meter):
                metric.tick()

    def items(self) -> list[tuple[str, Metric]]:
        """Every (name, metric), sorted by name."""
        return sorted(self._metrics.items())

    def get(self, name: str) -> Metric | None:
        """The metric called ``name``, or None."""
        return self._metrics.get(name)

    def names(self) -> list[str]:
        """Every metric name, sorted."""
        return sorted(self._metrics)

    def remove(self, name: str) -> bool:
        """Drop the metric called ``name``; True if there was one."""
        return self._metrics.pop(name, None) is not None

    def remove_prefix(self, prefix: str) -> int:
        """Drop every metric whose name starts with ``prefix`` (a deleted app or model); how many."""
        gone = [name for name in self._metrics if name.startswith(prefix)]
        for name in gone:
            del self._metrics[name]
        return len(gone)

    def reset(self) -> None:
        """Zero every metric's value, keeping the metrics (holders' references stay valid)."""
        for metric in self._metrics.values():
            metric.reset()

    def dump(self) -> dict:
        """Every metric in Clipper's JSON layout: ``{"counters": [{name: {...}}], ...}``."""
        out: dict[str, list] = {kind: [] for kind in _KINDS}
        for name in sorted(self._metrics):
            metric = self._metrics[name]
            out[metric.kind].append({name: metric.report()})
        return out


def _as_string(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return str(value) if isinstance(value, int) else repr(float(value))


def clipper_strings(dump: dict) -> dict:
    """A :meth:`MetricsRegistry.dump` with every number as a string, as Clipper's JSON writes them."""
    return {kind: [{name: {k: _as_string(v) for k, v in body.items()} for name, body in entry.items()}
                   for entry in entries] for kind, entries in dump.items()}
