"""Batching in the frontend: fixed sizes, Nagle-style waits, AIMD, against real replica processes."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from frontend_support import metric, start_replica
from frontend_support import frontend_thread, procs  # noqa: F401 - fixtures

from frontend.client import Client
from schooner.types import AppSpec, ModelSpec


def _inputs(n: int) -> list[np.ndarray]:
    return [np.full(4, i, dtype=np.float32) for i in range(n)]


def test_fixed_batch_size_yields_full_batches_under_load(frontend_thread, procs):
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=20_000_000)],
                    [ModelSpec("sleep", "1", "floats", batch_size=4)], {"app": ["sleep"]})
    procs.append(start_replica(frontend_thread.replica_address, "sleep", opts={"a_ms": 20, "b_ms": 0}))
    frontend_thread.wait_ready(1)
    with Client(frontend_thread.client_address, timeout_s=60) as client:
        results = client.predict_many("app", _inputs(48), concurrency=48)
    assert all(not r.default for r in results)
    dump = frontend_thread.metrics()
    sizes = metric(dump, "histograms", "model:sleep:1:batch_size")
    assert sizes["max"] == 4
    assert sizes["p50"] == 4
    assert int(metric(dump, "counters", "model:sleep:1:batch_fired_full")["count"]) >= 8
    assert int(metric(dump, "counters", "model:sleep:1:num_predictions")["count"]) == 48


def test_wait_timeout_sends_a_partial_batch(frontend_thread, procs):
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=20_000_000)],
                    [ModelSpec("noop", "1", "floats", batch_size=8, batch_wait_timeout_micros=100_000)],
                    {"app": ["noop"]})
    procs.append(start_replica(frontend_thread.replica_address, "noop"))
    frontend_thread.wait_ready(1)
    with Client(frontend_thread.client_address, timeout_s=60) as client:
        results = client.predict_batch("app", np.ones((3, 4), dtype=np.float32))
    assert len(results) == 3 and not any(r.default for r in results)
    assert results[0].latency_s >= 0.09  # it waited for a fuller batch before sending
    dump = frontend_thread.metrics()
    assert int(metric(dump, "counters", "model:noop:1:batch_fired_timeout")["count"]) == 1
    assert int(metric(dump, "counters", "model:noop:1:batch_fired_full")["count"]) == 0
    assert metric(dump, "histograms", "model:noop:1:batch_size")["max"] == 3


def test_idle_replica_takes_a_partial_batch_without_wait(frontend_thread, procs):
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=20_000_000)],
                    [ModelSpec("noop", "1", "floats", batch_size=8)], {"app": ["noop"]})
    procs.append(start_replica(frontend_thread.replica_address, "noop"))
    frontend_thread.wait_ready(1)
    with Client(frontend_thread.client_address, timeout_s=60) as client:
        result = client.predict("app", np.ones(4, dtype=np.float32))
    assert not result.default
    dump = frontend_thread.metrics()
    assert int(metric(dump, "counters", "model:noop:1:batch_fired_idle")["count"]) == 1


@pytest.mark.slow
def test_aimd_converges_near_the_largest_batch_within_the_objective(frontend_thread, procs):
    # sleep costs 5 + 2n ms, so the objective of 40 ms allows at most n = 17.
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=40_000)],
                    [ModelSpec("sleep", "1", "floats", batch_size=-1, max_batch_size=64)], {"app": ["sleep"]})
    procs.append(start_replica(frontend_thread.replica_address, "sleep", opts={"a_ms": 5, "b_ms": 2}))
    frontend_thread.wait_ready(1)
    with Client(frontend_thread.client_address, timeout_s=60) as client:
        client.predict_many("app", _inputs(1500), concurrency=40)
    target = frontend_thread.call(lambda: frontend_thread.fe.dispatcher.queues[("sleep", "1")].controller.target)
    assert 9 <= target <= 18
    sizes = metric(frontend_thread.metrics(), "histograms", "model:sleep:1:batch_size")
    assert sizes["max"] <= 19
    assert sizes["p95"] >= 9


def _closed_loop(address: str, app: str, clients: int, duration_s: float) -> list:
    """``clients`` threads each sending one query after another for ``duration_s``; every Prediction."""
    results: list = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s

    def lane(i: int) -> None:
        with Client(address, timeout_s=30) as client:
            x = np.full(4, i, dtype=np.float32)
            while time.monotonic() < stop_at:
                r = client.predict(app, x)
                with lock:
                    results.append(r)

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + 60)
    return results


def test_overloaded_replica_serves_queries_that_can_still_meet_the_objective(frontend_thread, procs):
    # 4 closed-loop clients on a 40 ms model with a 100 ms objective: FIFO dispatch sends the
    # oldest query with too little time left, its output comes late, and every answer is a default
    # (old code: 4 real of ~160). The replica can do 25 qps; with a closed loop, each query skipped
    # for lack of time is sent again at once, so about half of all answers are real at best.
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=100_000)],
                    [ModelSpec("sleep", "1", "floats", batch_size=1)], {"app": ["sleep"]})
    procs.append(start_replica(frontend_thread.replica_address, "sleep", opts={"a_ms": 40, "b_ms": 0}))
    frontend_thread.wait_ready(1)
    results = _closed_loop(frontend_thread.client_address, "app", clients=4, duration_s=4.0)
    real = [r for r in results if not r.default]
    dropped = [r for r in results if r.default and "would miss the latency objective" in
               (r.default_explanation or "")]
    assert len(real) >= 40, f"{len(real)} real outputs of {len(results)}"  # goodput >= 10 of 25 qps
    assert len(real) >= 0.35 * len(results), f"{len(real)} real outputs of {len(results)}"
    assert dropped, "no query was answered early for lack of time"
    assert "µs left, the model needs ~" in dropped[0].default_explanation
    dump = frontend_thread.metrics()
    assert int(metric(dump, "counters", "model:sleep:1:dropped_at_dispatch")["count"]) >= len(dropped)
    assert metric(dump, "histograms", "model:sleep:1:batch_size")["max"] == 1
