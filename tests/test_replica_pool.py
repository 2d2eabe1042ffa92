"""ReplicaPool state changes and forgetting, and metric removal, on a fake clock (no sockets)."""

from __future__ import annotations

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
    assert pool.time_out(replica, now=1.0) is batch
    assert pool.heard_from(replica, now=2.0) is False and replica.state == ReplicaState.DEAD
    again, displaced = pool.register(b"a", _hello("a"), now=3.0)
    assert displaced is None and again.state == ReplicaState.READY and replica.state == ReplicaState.STOPPED


def test_re_registering_returns_the_batch_in_flight_to_requeue() -> None:
    pool = ReplicaPool(pidns="")
    replica, _ = pool.register(b"a", _hello("a"), now=0.0)
    batch = pool.start_batch(replica, queue=None, entries=[], now=0.0)
    _, displaced = pool.register(b"a", _hello("a"), now=1.0)
    assert displaced is batch and not pool.batches


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
