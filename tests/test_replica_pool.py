"""ReplicaPool state changes and forgetting, and metric removal, on a fake clock (no sockets)."""

from __future__ import annotations

import time

from frontend.dispatch import Dispatcher
from frontend.config import FrontendConfig
from frontend.metrics import MetricsRegistry
from frontend.replicas import ReplicaPool
from schooner import protocol
from schooner.types import AppSpec, DeploymentState, InputType, ModelSpec, ReplicaState


def _hello(replica_id: str) -> dict:
    hdr, _ = protocol.unpack(protocol.hello(replica_id, "m", "1", "floats", None, 0, "", "h", [0], None))
    return hdr


def test_gone_replicas_are_listed_for_the_grace_period_then_forgotten() -> None:
    pool = ReplicaPool(pidns="", forget_after_s=60.0)
    dead, _ = pool.register(b"a", _hello("a"), now=0.0)
    stopped, _ = pool.register(b"b", _hello("b"), now=0.0)
    alive, _ = pool.register(b"c", _hello("c"), now=0.0)
    pool.lose(dead, now=10.0)
    pool.drain(stopped)
    pool.lose(stopped, now=20.0)
    assert (dead.state, stopped.state, alive.state) == (ReplicaState.DEAD, ReplicaState.STOPPED, ReplicaState.READY)
    assert pool.prune(now=69.0) == [] and len(pool.infos()) == 3
    assert pool.prune(now=70.0) == [dead]
    assert pool.prune(now=80.0) == [stopped]
    assert [i.replica_id for i in pool.infos()] == ["c"] and pool.get_by_id("a") is None


def test_a_replica_talking_again_before_the_grace_period_is_not_forgotten() -> None:
    pool = ReplicaPool(pidns="", forget_after_s=5.0)
    replica, _ = pool.register(b"a", _hello("a"), now=0.0)
    pool.lose(replica, now=1.0)
    assert pool.heard_from(replica, now=2.0) is True
    assert replica.state == ReplicaState.READY and pool.prune(now=100.0) == []


def test_a_timed_out_replica_stays_dead_until_it_registers_again() -> None:
    pool = ReplicaPool(pidns="", forget_after_s=5.0)
    replica, _ = pool.register(b"a", _hello("a"), now=0.0)
    batch = pool.start_batch(replica, queue=None, entries=[], now=0.0)
    assert pool.time_out(replica, now=1.0) == [batch] and replica.timed_out_batch is batch
    assert pool.heard_from(replica, now=2.0) is False and replica.state == ReplicaState.DEAD
    again, displaced = pool.register(b"a", _hello("a"), now=3.0)
    assert displaced == [] and again.state == ReplicaState.READY and replica.state == ReplicaState.STOPPED


def test_re_registering_returns_the_batch_in_flight_to_requeue() -> None:
    pool = ReplicaPool(pidns="")
    replica, _ = pool.register(b"a", _hello("a"), now=0.0)
    batch = pool.start_batch(replica, queue=None, entries=[], now=0.0)
    _, displaced = pool.register(b"a", _hello("a"), now=1.0)
    assert displaced == [batch] and not pool.batches


def test_metrics_of_deleted_apps_and_models_are_removed() -> None:
    metrics = MetricsRegistry()
    dispatcher = Dispatcher(FrontendConfig(http_port=None), metrics, ReplicaPool(pidns=""))
    state = DeploymentState(apps={"a": AppSpec("a", InputType.FLOATS)},
                            models={("m", "1"): ModelSpec("m", "1", InputType.FLOATS)},
                            links={"a": ["m"]}, current_versions={"m": "1"})
    dispatcher.sync(state)
    assert "app:a:prediction_latency" in metrics.names() and "model:m:1:batch_size" in metrics.names()
    dispatcher.sync(DeploymentState())
    assert [n for n in metrics.names() if n.startswith(("app:", "model:"))] == []
    assert "internal:aggregate_model_throughput" in metrics.names()


def test_a_replica_gone_twice_is_forgotten_a_grace_period_after_the_second_time() -> None:
    pool = ReplicaPool(pidns="", forget_after_s=10.0)
    replica, _ = pool.register(b"a", _hello("a"), now=0.0)
    pool.lose(replica, now=1.0)
    pool.heard_from(replica, now=2.0)
    pool.lose(replica, now=5.0)
    assert pool.prune(now=12.0) == [] and pool.get(b"a") is replica
    assert pool.prune(now=15.0) == [replica] and pool.get(b"a") is None


# ---- pipelining: a full batch waits in the replica's socket behind the one it runs -----------------

class _Loop:
    def time(self) -> float:
        return time.monotonic()

    def call_at(self, when, fn, *args):
        return _Handle()

    def call_later(self, delay, fn, *args):
        return _Handle()


class _Handle:
    def cancel(self) -> None:
        pass


def _pipelined(depth: int, batch_size: int = 2):
    from test_batching_core import _query

    d = Dispatcher(FrontendConfig(client_port=0, replica_port=0, http_port=None, pipeline_depth=depth),
                   MetricsRegistry(), ReplicaPool(pidns=""))
    sent: list = []
    d.attach(_Loop(), sent.append)
    d.sync(DeploymentState(apps={"a": AppSpec("a", InputType.FLOATS, latency_slo_micros=10_000_000)},
                           models={("m", "1"): ModelSpec("m", "1", InputType.FLOATS, batch_size=batch_size)},
                           links={"a": ["m"]}, current_versions={"m": "1"}))
    replica, _ = d.pool.register(b"r1", _hello("r1"), time.monotonic())
    d.replica_free(replica)
    route = d.routes["a"]

    def submit(k: int) -> list:
        queries = []
        for _ in range(k):
            now = time.monotonic()
            q = _query(route.app, now)
            d.submit(route, q, [["a", "<f4", [1]]], [b"\0" * 4], now)
            queries.append(q)
        d.pump_dirty()
        return queries
    return d, replica, route.queue, sent, submit


def _finish(d: Dispatcher, replica, batch) -> None:
    now = time.monotonic()
    assert d.pool.finish_batch(replica, batch.batch_id, now) is batch
    d.complete_batch(batch, [["s", None, None]] * len(batch.entries), [b"ok"] * len(batch.entries), now, 0.001)
    d.replica_free(replica)
    d.pump_dirty()


def test_a_full_batch_is_sent_behind_the_running_one_and_the_rest_waits():
    d, replica, mq, sent, submit = _pipelined(depth=2)
    submit(7)
    assert len(sent) == 2 and [len(b.entries) for b in replica.batches] == [2, 2] and len(mq.entries) == 3
    first, second = replica.batches
    _finish(d, replica, first)
    assert replica.batches[0] is second and len(replica.batches) == 2 and len(mq.entries) == 1
    assert second.sent_at >= first.sent_at  # it starts when the first ends
    # One query left: a partial batch is not sent behind a running one; it waits for the replica.
    _finish(d, replica, replica.batches[0])
    assert len(replica.batches) == 1 and len(mq.entries) == 1
    _finish(d, replica, replica.batches[0])
    assert len(replica.batches) == 1 and len(replica.batches[0].entries) == 1 and not mq.entries


def test_one_at_a_time_with_depth_one():
    _, replica, mq, sent, submit = _pipelined(depth=1)
    submit(7)
    assert len(sent) == 1 and len(replica.batches) == 1 and len(mq.entries) == 5


def test_a_lost_replicas_batches_are_all_requeued_in_order():
    d, replica, mq, _, submit = _pipelined(depth=2)
    queries = submit(5)
    d.requeue(d.pool.lose(replica, time.monotonic()), "lost")
    assert [e.query for e in mq.entries] == queries and not d.pool.batches


def test_admission_sees_a_replica_with_two_batches_free_after_both():
    d, replica, mq, _, submit = _pipelined(depth=2)
    submit(4)
    for _ in range(5):
        mq.curve.observe(2, 0.1)
    now = time.monotonic()
    (free,) = mq.free_times(now)
    assert free - now > 0.15 and mq.live_replicas() == 1  # two batches of ~0.1 s, one replica


def test_an_adaptive_cap_that_has_seen_one_size_sends_nothing_behind():
    """A cold adaptive cap grows batch by batch; a batch of its first size sent behind the running
    one would hold the queue at that size a batch longer."""
    d, replica, mq, sent, submit = _pipelined(depth=2, batch_size=-1)
    submit(5)
    assert mq.controller.target == 1 and len(sent) == 1 and len(replica.batches) == 1
    _finish(d, replica, replica.batches[0])
    assert len(mq.curve.by_size) == 1 and len(replica.batches) == 1  # one size seen: nothing behind
    mq.curve.observe(2, 0.001)  # a second size: the cap is learnt, full batches go behind again
    submit(1)
    assert len(replica.batches) == 2


def test_a_cold_curve_drops_nothing_at_dispatch_for_a_guessed_cost():
    """With only batches of 1 seen, a batch of 2 was guessed at twice their cost; queries that a
    batch of 2 would answer in time were given the default instead. Dispatch drops a query only on
    what it knows: no batch costs less than a smaller one."""
    d, replica, mq, sent, submit = _pipelined(depth=1, batch_size=2)
    submit(1)
    for _ in range(3):
        mq.curve.observe(1, 4.0)  # 4 s a batch of 1; the app's objective is 10 s
    queries = submit(2)
    now = time.monotonic()
    entries = d._take(mq, 2, 2, now + 3.0, now)  # starts in 3 s: 7 s at the least cost, 11 s guessed
    assert [e.query for e in entries] == queries and not any(q.done for q in queries)
    assert mq.dropped_at_dispatch.value == 0
