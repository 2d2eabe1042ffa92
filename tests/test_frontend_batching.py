"""Batching in the frontend: fixed sizes, Nagle-style waits, AIMD, against real replica processes."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from frontend_support import metric, start_replica
from frontend_support import frontend_thread, procs  # noqa: F401 - fixtures

from frontend.client import Client, Prediction
from schooner.errors import Overloaded
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


def test_lone_queries_are_not_held_for_the_wait_timeout(frontend_thread, procs):
    # One client, one query at a time: nothing else can arrive while its query waits, so the
    # 100 ms wait would be pure delay (the old rule spent it on every query).
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=20_000_000)],
                    [ModelSpec("noop", "1", "floats", batch_size=8, batch_wait_timeout_micros=100_000)],
                    {"app": ["noop"]})
    procs.append(start_replica(frontend_thread.replica_address, "noop"))
    frontend_thread.wait_ready(1)
    with Client(frontend_thread.client_address, timeout_s=60) as client:
        results = [client.predict_batch("app", np.ones((3, 4), dtype=np.float32)) for _ in range(5)]
    assert all(len(r) == 3 and not any(p.default for p in r) for r in results)
    dump = frontend_thread.metrics()
    assert int(metric(dump, "counters", "model:noop:1:batch_fired_timeout")["count"]) == 0
    assert int(metric(dump, "counters", "model:noop:1:batch_fired_idle")["count"]) == 5
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
def test_adaptive_cap_grows_while_every_query_is_answered(frontend_thread, procs):
    # sleep costs 5 + 2n ms; with an objective of 200 ms a batch fits half of it (less the 10 %
    # margin) up to n = 42. 16 clients keep at most 16 queued, all of which can make it.
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=200_000)],
                    [ModelSpec("sleep", "1", "floats", batch_size=-1, max_batch_size=64)], {"app": ["sleep"]})
    procs.append(start_replica(frontend_thread.replica_address, "sleep", opts={"a_ms": 5, "b_ms": 2}))
    frontend_thread.wait_ready(1)
    with Client(frontend_thread.client_address, timeout_s=60) as client:
        results = client.predict_many("app", _inputs(1000), concurrency=16)
    bad = [r for r in results if not isinstance(r, Prediction) or r.default]
    assert len(bad) <= 0.2 * len(results), bad[:3]  # none, bar long stalls of a shared machine
    target = frontend_thread.call(lambda: frontend_thread.fe.dispatcher.queues[("sleep", "1")].controller.target)
    assert 16 <= target <= 43  # at least what can queue; at most what fits half the objective
    sizes = metric(frontend_thread.metrics(), "histograms", "model:sleep:1:batch_size")
    assert sizes["max"] <= 16
    assert sizes["p95"] >= 6


def _closed_loop(address: str, app: str, clients: int, duration_s: float) -> tuple[list, list]:
    """``clients`` threads each sending one query after another for ``duration_s``.

    Returns every Prediction, and how long each rejected (overloaded) query took to be answered;
    a rejected client backs off 5 ms before its next query.
    """
    results: list = []
    rejected: list = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s

    def lane(i: int) -> None:
        with Client(address, timeout_s=30) as client:
            x = np.full(4, i, dtype=np.float32)
            while time.monotonic() < stop_at:
                sent = time.monotonic()
                try:
                    r = client.predict(app, x)
                except Overloaded as err:
                    with lock:
                        rejected.append((time.monotonic() - sent, err))
                    time.sleep(0.005)
                    continue
                with lock:
                    results.append(r)

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + 60)
    return results, rejected


def test_overload_is_shed_at_arrival_and_admitted_queries_make_the_objective(frontend_thread, procs):
    # 4 closed-loop clients on a 40 ms model with a 100 ms objective: the replica does 25 qps and
    # a query with two queued ahead of it cannot make it. Such queries are answered at once with
    # overloaded (and a retry time from the queue) instead of being answered late or by default.
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=100_000)],
                    [ModelSpec("sleep", "1", "floats", batch_size=1)], {"app": ["sleep"]})
    procs.append(start_replica(frontend_thread.replica_address, "sleep", opts={"a_ms": 40, "b_ms": 0}))
    frontend_thread.wait_ready(1)
    results, rejected = _closed_loop(frontend_thread.client_address, "app", clients=4, duration_s=4.0)
    real = [r for r in results if not r.default]
    assert len(real) >= 40, f"{len(real)} real outputs of {len(results)}"  # goodput >= 10 of 25 qps
    assert len(real) >= 0.8 * len(results), f"{len(real)} real outputs of {len(results)}"
    assert rejected, "no query was shed at arrival"
    assert "of the latency objective of 100000 µs" in str(rejected[0][1])
    assert all(0 < err.retry_after_s <= 0.2 for _, err in rejected)
    assert sorted(t for t, _ in rejected)[len(rejected) // 2] < 0.05  # answered at once, not after a wait
    dump = frontend_thread.metrics()
    assert int(metric(dump, "counters", "model:sleep:1:shed_at_arrival")["count"]) >= len(rejected)
    assert metric(dump, "histograms", "model:sleep:1:batch_size")["max"] == 1


def test_app_with_on_overload_default_answers_shed_queries_with_its_default(frontend_thread, procs):
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=100_000, on_overload="default",
                             default_output="busy")],
                    [ModelSpec("sleep", "1", "floats", batch_size=1)], {"app": ["sleep"]})
    procs.append(start_replica(frontend_thread.replica_address, "sleep", opts={"a_ms": 40, "b_ms": 0}))
    frontend_thread.wait_ready(1)
    results, rejected = _closed_loop(frontend_thread.client_address, "app", clients=4, duration_s=2.0)
    assert not rejected
    shed = [r for r in results if r.default and (r.default_explanation or "").startswith("overloaded")]
    assert shed and shed[0].output == "busy"
    assert len([r for r in results if not r.default]) >= 20
