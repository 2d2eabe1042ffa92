"""Metrics registry: Clipper's JSON layout, histogram statistics, meter EWMAs, Prometheus text."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from frontend.metrics import TICK_INTERVAL_S, MetricsRegistry


class ManualClock:
    """A clock the test advances by hand (time injection, for the 5 s EWMA ticks)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_dump_has_clippers_layout():
    reg = MetricsRegistry()
    reg.counter("app:a:num_predictions").inc(3)
    reg.ratio_counter("app:a:default_prediction_ratio").inc(1, 4)
    reg.meter("app:a:prediction_throughput").mark(5)
    reg.histogram("app:a:prediction_latency").insert(10)
    dump = json.loads(json.dumps(reg.dump()))  # plain JSON types only
    assert dump["counters"] == [{"app:a:num_predictions": {"count": 3}}]
    assert dump["ratio_counters"] == [{"app:a:default_prediction_ratio": {"ratio": 0.25}}]
    [meter] = dump["meters"]
    assert set(meter["app:a:prediction_throughput"]) == {"unit", "rate", "rate_1min", "rate_5min", "rate_15min"}
    assert meter["app:a:prediction_throughput"]["unit"] == "events per second"
    [hist] = dump["histograms"]
    assert set(hist["app:a:prediction_latency"]) == {"unit", "size", "min", "max", "mean", "std_dev",
                                                     "p50", "p95", "p99"}
    assert hist["app:a:prediction_latency"]["unit"] == "microseconds"


def test_same_name_returns_the_same_metric_and_kinds_do_not_clash():
    reg = MetricsRegistry()
    assert reg.counter("c") is reg.counter("c")
    assert reg.get("c") is reg.counter("c") and reg.get("missing") is None
    with pytest.raises(ValueError, match="Counter"):
        reg.histogram("c")
    with pytest.raises(ValueError, match="name"):
        reg.counter("")


def test_histogram_statistics_and_percentiles():
    reg = MetricsRegistry()
    hist = reg.histogram("lat", unit="milliseconds")
    for value in range(1, 101):
        hist.insert(value)
    report = reg.dump()["histograms"][0]["lat"]
    assert report["unit"] == "milliseconds"
    assert report["size"] == 100 and report["min"] == 1 and report["max"] == 100
    assert report["mean"] == pytest.approx(50.5)
    assert report["std_dev"] == pytest.approx(np.std(np.arange(1, 101)))
    assert report["p50"] == pytest.approx(50.5)
    assert report["p95"] == pytest.approx(95.05)
    assert report["p99"] == pytest.approx(99.01)


def test_histogram_keeps_only_the_most_recent_values():
    hist = MetricsRegistry().histogram("lat", reservoir_size=4096)
    for value in range(10_000):
        hist.insert(value)
    snap = hist.snapshot()
    assert snap["size"] == 10_000  # every insert is counted
    assert snap["min"] == 10_000 - 4096 and snap["max"] == 9_999  # the window is the last 4096


def test_empty_metrics_report_zeros():
    reg = MetricsRegistry()
    assert reg.histogram("h").snapshot() == {"size": 0, "min": 0.0, "max": 0.0, "mean": 0.0,
                                             "std_dev": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0}
    assert reg.ratio_counter("r").ratio == 0.0
    assert reg.meter("m").rates() == (0.0, 0.0, 0.0)


def test_meter_ewma_starts_at_the_first_interval_rate_and_decays_when_idle():
    clock = ManualClock()
    meter = MetricsRegistry(clock=clock).meter("m")
    meter.mark(50)
    assert meter.rates() == (0.0, 0.0, 0.0)  # no tick yet
    clock.now += TICK_INTERVAL_S
    r1, r5, r15 = meter.rates()
    assert (r1, r5, r15) == pytest.approx((10.0, 10.0, 10.0))  # 50 events / 5 s
    assert meter.rate == pytest.approx(10.0)
    clock.now += 60.0  # twelve idle ticks
    r1, r5, r15 = meter.rates()
    assert r1 == pytest.approx(10.0 * math.exp(-1.0))  # a 1-minute EWMA loses 1/e per idle minute
    assert r5 == pytest.approx(10.0 * math.exp(-1.0 / 5))
    assert r15 == pytest.approx(10.0 * math.exp(-1.0 / 15))
    assert r1 < r5 < r15


def test_meter_ewma_converges_to_a_steady_rate():
    clock = ManualClock()
    meter = MetricsRegistry(clock=clock).meter("m")
    meter.mark(5)  # 1/s in the first interval, then a steady 20/s
    clock.now += TICK_INTERVAL_S
    for _ in range(120):  # ten minutes, ticked every interval as the frontend's loop does
        meter.tick()
        meter.mark(100)
        clock.now += TICK_INTERVAL_S
    r1, r5, r15 = meter.rates()
    assert r1 == pytest.approx(20.0, rel=1e-3)
    assert 1.0 < r15 < r5 < r1  # slower averages still remember the start


def test_reset_zeroes_values_and_keeps_the_metrics():
    reg = MetricsRegistry()
    counter = reg.counter("c")
    counter.inc(5)
    reg.histogram("h").insert(3)
    reg.reset()
    assert reg.counter("c") is counter and counter.value == 0
    assert reg.histogram("h").snapshot()["size"] == 0
    assert reg.remove("c") and not reg.remove("c")
    assert reg.names() == ["h"]


def test_histogram_buckets_count_every_value_cumulatively():
    hist = MetricsRegistry().histogram("lat", buckets=(10, 100))
    for value in (5, 10, 11, 100, 1000):
        hist.insert(value)
    assert hist.cumulative_buckets() == [(10.0, 2), (100.0, 4), (math.inf, 5)]  # le is inclusive
    hist.reset()
    assert hist.cumulative_buckets()[-1] == (math.inf, 0)
    with pytest.raises(ValueError, match="increasing"):
        MetricsRegistry().histogram("bad", buckets=(2, 1))


def test_marking_a_meter_does_not_read_the_clock_and_the_registry_ticks_it():
    calls = []
    clock = ManualClock()

    def counting_clock() -> float:
        calls.append(1)
        return clock()

    reg = MetricsRegistry(clock=counting_clock)
    meter = reg.meter("m")
    before = len(calls)
    for _ in range(1000):
        meter.mark()
    assert len(calls) == before
    clock.now += TICK_INTERVAL_S
    reg.tick()
    assert meter.rates()[0] == pytest.approx(200.0)  # 1000 events / 5 s
