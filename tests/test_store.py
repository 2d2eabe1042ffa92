"""The Redis store and the embedded Redis, against a real redis-server."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from schooner.types import AppSpec, InputType, ModelSpec
from management.embedded_redis import EmbeddedRedis, connect, free_port
from management.errors import BadRequest, Conflict, NotFound, StoreUnavailable
from management.store import ReplicaRecord, Store, changes_state


def _model(name: str = "m", version: str = "1", input_type: str = "floats", **kw) -> ModelSpec:
    return ModelSpec(name=name, version=version, input_type=input_type, **kw)


def _events(pubsub: redis.client.PubSub, expected: int, timeout_s: float = 10.0) -> list[dict]:
    out: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expected and time.monotonic() < deadline:
        msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if msg is not None:
            out.append(json.loads(msg["data"]))
    return out


def test_app_round_trip_and_listing(store: Store) -> None:
    store.add_app(AppSpec("b-app", "doubles", default_output="-1", latency_slo_micros=20_000))
    store.add_app(AppSpec("a-app", "strings"))
    got = store.get_app("b-app")
    assert got == AppSpec("b-app", InputType.DOUBLES, default_output="-1", latency_slo_micros=20_000)
    assert [a.name for a in store.list_apps()] == ["a-app", "b-app"]
    assert store.get_app("missing") is None


def test_adding_an_existing_app_conflicts_and_keeps_the_original(store: Store) -> None:
    store.add_app(AppSpec("a", "floats", default_output="first"))
    with pytest.raises(Conflict):
        store.add_app(AppSpec("a", "ints", default_output="second"))
    assert store.get_app("a").default_output == "first"


def test_model_round_trip_preserves_every_field(store: Store) -> None:
    model = _model(labels=["cat", "dog"], batch_size=8, max_batch_size=32, batch_wait_timeout_micros=500,
                   input_shape=[3, 224, 224], launcher="sleep", model_opts={"a_ms": 1.5, "b_ms": 0.2},
                   image="schooner/sleep:latest", model_data_path="/data/m", cpus_per_replica=2, gpus=[0, 1],
                   max_queue_size=77)
    store.add_model(model)
    assert store.get_model("m", "1") == model
    assert store.get_model("m") == model  # current version
    assert store.get_model("m", "2") is None


def test_first_version_becomes_current_and_later_versions_do_not(store: Store) -> None:
    store.add_model(_model(version="1"))
    store.add_model(_model(version="2"))
    assert store.get_current_version("m") == "1"
    store.set_current_version("m", "2")
    assert store.get_current_version("m") == "2"
    with pytest.raises(NotFound):
        store.set_current_version("m", "3")
    assert store.versions("m") == ["1", "2"]


def test_adding_an_existing_model_version_conflicts(store: Store) -> None:
    store.add_model(_model(batch_size=4))
    with pytest.raises(Conflict):
        store.add_model(_model(batch_size=16))
    assert store.get_model("m", "1").batch_size == 4


def test_deleting_the_current_version_makes_the_highest_remaining_current(store: Store) -> None:
    for v in ("2", "10", "9"):
        store.add_model(_model(version=v))
    store.set_current_version("m", "9")
    store.delete_model("m", "9")
    assert store.get_current_version("m") == "10"
    store.delete_model("m", "2")
    assert store.get_current_version("m") == "10"
    store.delete_model("m", "10")
    assert store.get_current_version("m") is None
    assert store.list_models() == []
    with pytest.raises(NotFound):
        store.delete_model("m", "10")


def test_delete_model_removes_its_replica_records_and_desired_count(store: Store) -> None:
    store.add_model(_model())
    store.replicas.put({"model_name": "m", "model_version": "1", "replica_id": "r1", "state": "ready"})
    store.replicas.set_desired("m", "1", {"num_replicas": 2})
    store.delete_model("m", "1")
    assert store.replicas.find() == []
    assert store.replicas.get_desired("m", "1") is None


def test_link_requires_existing_app_and_model_and_matching_input_type(store: Store) -> None:
    store.add_app(AppSpec("app", "floats"))
    store.add_model(_model("floaty", input_type="floats"))
    store.add_model(_model("inty", input_type="ints"))
    with pytest.raises(NotFound):
        store.add_links("nope", ["floaty"])
    with pytest.raises(NotFound):
        store.add_links("app", ["ghost"])
    with pytest.raises(Conflict, match="ints"):
        store.add_links("app", ["inty"])
    store.add_links("app", ["floaty"])
    store.add_links("app", ["floaty"])  # linking again is harmless
    assert store.get_links("app") == ["floaty"]


def test_an_app_links_to_one_model_only(store: Store) -> None:
    store.add_app(AppSpec("app", "floats"))
    store.add_model(_model("m1"))
    store.add_model(_model("m2"))
    with pytest.raises(BadRequest, match="exactly one model"):
        store.add_links("app", ["m1", "m2"])
    store.add_links("app", ["m1"])
    with pytest.raises(Conflict, match="already linked"):
        store.add_links("app", ["m2"])
    store.delete_links("app", ["m1"])
    store.add_links("app", ["m2"])
    assert store.get_links("app") == ["m2"]
    with pytest.raises(NotFound):
        store.delete_links("app", ["m1"])


def test_delete_app_removes_its_links(store: Store) -> None:
    store.add_app(AppSpec("app", "floats"))
    store.add_model(_model())
    store.add_links("app", ["m"])
    store.delete_app("app")
    assert store.get_app("app") is None and store.get_links("app") == []
    with pytest.raises(NotFound):
        store.delete_app("app")
    store.add_app(AppSpec("app", "floats"))
    assert store.get_links("app") == []


def test_update_model_batching_changes_only_batching_and_validates(store: Store) -> None:
    store.add_model(_model(labels=["x"], batch_size=4))
    updated = store.update_model_batching("m", "1", -1, max_batch_size=128, batch_wait_timeout_micros=250)
    assert (updated.batch_size, updated.max_batch_size, updated.batch_wait_timeout_micros) == (-1, 128, 250)
    assert store.get_model("m", "1") == updated and updated.labels == ["x"]
    with pytest.raises(BadRequest, match="batch_size"):
        store.update_model_batching("m", "1", 0)
    with pytest.raises(NotFound):
        store.update_model_batching("m", "9", 4)
    assert store.get_model("m", "1").batch_size == -1


def test_load_state_holds_apps_models_links_and_current_versions(store: Store) -> None:
    store.add_app(AppSpec("app", "floats"))
    store.add_app(AppSpec("lonely", "bytes"))
    store.add_model(_model(version="1"))
    store.add_model(_model(version="2", batch_size=3))
    store.add_links("app", ["m"])
    store.set_current_version("m", "2")
    state = store.load_state()
    assert set(state.apps) == {"app", "lonely"}
    assert set(state.models) == {("m", "1"), ("m", "2")}
    assert state.models[("m", "2")].batch_size == 3
    assert state.links == {"app": ["m"], "lonely": []}
    assert state.current_versions == {"m": "2"}


def test_every_write_publishes_one_event_after_it_is_visible(store: Store) -> None:
    pubsub = store.client.pubsub()
    pubsub.subscribe(store.events_channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    store.add_app(AppSpec("app", "floats"))
    store.add_model(_model())
    store.add_links("app", ["m"])
    store.set_current_version("m", "1")
    store.update_model_batching("m", "1", 2)
    store.replicas.put({"model_name": "m", "model_version": "1", "replica_id": "r"})
    store.replicas.set_desired("m", "1", {"num_replicas": 1})
    store.delete_links("app", ["m"])
    store.delete_model("m", "1")
    store.delete_app("app")
    store.add_model(_model(version="1"))
    with pytest.raises(Conflict):
        store.add_model(_model(version="1"))  # a refused write publishes nothing
    events = _events(pubsub, 11) + _events(pubsub, 1, timeout_s=0.5)
    pubsub.close()
    assert [e["kind"] for e in events] == [
        "app_added", "model_added", "links_added", "current_version_set", "model_updated", "replica_put",
        "desired_set", "links_deleted", "model_deleted", "app_deleted", "model_added"]
    assert events[2] == {"kind": "links_added", "app": "app", "model_names": ["m"]}
    assert [changes_state(e) for e in events[4:7]] == [True, False, False]


def test_concurrent_adds_of_one_version_let_exactly_one_win(store: Store, redis_server: EmbeddedRedis) -> None:
    results: list[str] = []
    barrier = threading.Barrier(8)

    def add(i: int) -> None:
        own = Store(connect(redis_server.url))
        barrier.wait()
        try:
            own.add_model(_model(version="7", batch_size=i + 1))
            results.append("ok")
        except Conflict:
            results.append("conflict")
        finally:
            own.client.close()

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == ["conflict"] * 7 + ["ok"]
    assert store.versions("m") == ["7"]


def test_replica_records_round_trip_and_filter_by_model(store: Store) -> None:
    rec = {"model_name": "m", "model_version": "1", "replica_id": "m-1-r1", "backend": "process",
           "handle": "4242", "cpus": [0, 1], "gpu": None, "state": "ready", "last_heartbeat": 12.5,
           "restarts": 0}
    table = store.replicas
    table.put(rec)
    table.put({**rec, "model_version": "2", "replica_id": "m-2-r1"})
    table.put(ReplicaRecord.from_dict({**rec, "model_name": "mm", "replica_id": "mm-1-r1"}))
    got = table.get("m", "1", "m-1-r1")
    assert isinstance(got, ReplicaRecord) and got == ReplicaRecord.from_dict(rec)
    assert {k: v for k, v in got.to_dict().items() if k in rec} == rec
    assert [r.replica_id for r in table.find()] == ["m-1-r1", "m-2-r1", "mm-1-r1"]
    assert [r.replica_id for r in table.find("m")] == ["m-1-r1", "m-2-r1"]
    assert [r.replica_id for r in table.find("m", "2")] == ["m-2-r1"]
    table.put({**rec, "state": "dead", "restarts": 1})
    assert table.get("m", "1", "m-1-r1").restarts == 1
    assert table.delete("m", "1", "m-1-r1") is True
    assert table.delete("m", "1", "m-1-r1") is False
    with pytest.raises(BadRequest, match="replica_id"):
        table.put({"model_name": "m", "model_version": "1"})


def test_replica_records_keep_fields_they_do_not_know() -> None:
    record = ReplicaRecord.from_dict({"model_name": "m", "model_version": 1, "replica_id": "r", "ray_actor": "a1"})
    assert record.model_version == "1" and record.extra == {"ray_actor": "a1"}
    assert record.to_dict()["ray_actor"] == "a1" and "pid" not in record.to_dict()
    assert ReplicaRecord.from_dict(record.to_dict()) == record


def test_desired_counts_round_trip_and_list(store: Store) -> None:
    store.replicas.set_desired("m", "1", {"num_replicas": 2, "cpus_per_replica": 1, "model_cpus": [0, 1], "gpus": []})
    store.replicas.set_desired("n", "3", {"num_replicas": 0})
    assert store.replicas.get_desired("m", "1")["model_cpus"] == [0, 1]
    assert store.replicas.list_desired() == [
        {"num_replicas": 2, "cpus_per_replica": 1, "model_cpus": [0, 1], "gpus": [],
         "model_name": "m", "model_version": "1"},
        {"num_replicas": 0, "model_name": "n", "model_version": "3"}]
    store.replicas.delete_desired("m", "1")
    assert store.replicas.get_desired("m", "1") is None


@pytest.mark.parametrize("name", ["a:b", "with space", "star*", "-lead", "x" * 200])
def test_names_that_would_break_keys_are_refused(store: Store, name: str) -> None:
    with pytest.raises(BadRequest):
        store.add_app(AppSpec(name, "floats"))
    with pytest.raises(BadRequest):
        store.add_model(_model(name))
    with pytest.raises(BadRequest):
        store.add_model(_model("ok", version=name))
    assert store.load_state().apps == {} and store.list_models() == []


def test_store_refuses_a_client_that_is_not_redis() -> None:
    with pytest.raises(TypeError, match="client"):
        Store(object())  # type: ignore[arg-type]


def test_store_calls_raise_store_unavailable_when_redis_is_unreachable() -> None:
    dead = Store(redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1,
                             retry=Retry(NoBackoff(), 0)))
    with pytest.raises(StoreUnavailable) as info:
        dead.add_app(AppSpec("app", "floats"))
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    with pytest.raises(StoreUnavailable):
        dead.load_state()


def test_connect_to_a_dead_url_raises_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="cannot reach Redis"):
        connect(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1)


def test_embedded_redis_keeps_its_data_across_a_restart_on_the_same_port(tmp_path) -> None:
    first = EmbeddedRedis(tmp_path / "state")
    with first:
        port = first.port
        Store(connect(first.url)).add_app(AppSpec("kept", "floats"))
    assert not first.running()
    with pytest.raises(StoreUnavailable):
        connect(first.url, timeout_s=1)
    with EmbeddedRedis(tmp_path / "state", port=port) as second:
        assert second.url == first.url
        assert Store(connect(second.url)).get_app("kept") == AppSpec("kept", "floats")
