"""The management REST API over real HTTP, backed by a real Redis (and, in the slow test, real processes)."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Callable, Iterator

import pytest
import redis
import requests
from aiohttp import web
from redis.backoff import NoBackoff
from redis.retry import Retry

from management.api import make_app
from management.embedded_redis import EmbeddedRedis, free_port
from management.store import Store
from polling import wait_for

HTTP_TIMEOUT_S = 30
READY_S = 90.0  # a replica on a loaded 2-core machine: interpreter start, imports, register


class ApiServer:
    """The management app served on a free loopback port by an event loop in a thread."""

    def __init__(self, build: Callable[[], web.Application]) -> None:
        self._build = build
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ApiServer:
        self._thread.start()
        self.run(self._serve())
        return self

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self._build(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def run(self, coro: Any, timeout_s: float = 60.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        if self._runner is not None:
            self.run(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def post(self, path: str, body: Any = None, token: str | None = None, raw: bytes | None = None
             ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        if raw is not None:
            return requests.post(f"{self.url}{path}", data=raw, headers=headers, timeout=HTTP_TIMEOUT_S)
        return requests.post(f"{self.url}{path}", json=body, headers=headers, timeout=HTTP_TIMEOUT_S)


@pytest.fixture
def serve() -> Iterator[Callable[..., ApiServer]]:
    """Factory: serve make_app(store, manager, ...) on a real port; stops every server it started."""
    servers: list[ApiServer] = []

    def start(store: Store, manager: Any = None, *, frontend_http_url: str | None = None,
              admin_token: str = "") -> ApiServer:
        url = frontend_http_url or f"http://127.0.0.1:{free_port()}"
        server = ApiServer(lambda: make_app(store, manager, frontend_http_url=url, admin_token=admin_token))
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def api(serve: Callable[..., ApiServer], store: Store) -> ApiServer:
    """The registry-only API (no replica manager) on a clean Redis."""
    return serve(store)


def _ok(resp: requests.Response) -> Any:
    assert resp.status_code == 200, resp.text
    return resp.json() if resp.headers.get("Content-Type", "").startswith("application/json") else resp.text


def _add_app(api: ApiServer, name: str = "app", input_type: str = "floats", **extra: Any) -> None:
    assert _ok(api.post("/admin/add_app", {"name": name, "input_type": input_type, "default_output": "-1",
                                           "latency_slo_micros": 50_000, **extra})) == "Success!"


def _add_model(api: ApiServer, name: str = "m", version: Any = 1, input_type: str = "floats",
               **extra: Any) -> None:
    extra.setdefault("launcher", "" if "container_name" in extra else "noop")
    body = {"model_name": name, "model_version": version, "labels": ["a"], "input_type": input_type,
            "container_name": "", "model_data_path": "", **extra}
    assert _ok(api.post("/admin/add_model", body)) == "Success!"


# -- Clipper's registry endpoints --------------------------------------------------------------

def test_ping_answers_pong(api: ApiServer) -> None:
    resp = requests.get(f"{api.url}/admin/ping", timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 200 and resp.text == "pong"


def test_added_app_is_listed_and_described(api: ApiServer) -> None:
    _add_app(api, "b")
    _add_app(api, "a", "strings", policy="default", on_overload="default")
    assert _ok(api.post("/admin/get_all_applications", {"verbose": False})) == ["a", "b"]
    assert _ok(api.post("/admin/get_all_applications", {})) == ["a", "b"]
    verbose = _ok(api.post("/admin/get_all_applications", {"verbose": True}))
    assert verbose[1] == {"name": "b", "input_type": "floats", "default_output": "-1",
                          "latency_slo_micros": 50_000, "policy": "default", "on_overload": "reject",
                          "linked_models": []}
    described = _ok(api.post("/admin/get_application", {"name": "a"}))
    assert described["input_type"] == "strings" and described["on_overload"] == "default"


@pytest.mark.parametrize("body, field", [
    ({"input_type": "floats"}, "name"),
    ({"name": 7, "input_type": "floats"}, "name"),
    ({"name": "a"}, "input_type"),
    ({"name": "a", "input_type": "complex"}, "input_type"),
    ({"name": "a", "input_type": "floats", "latency_slo_micros": "fast"}, "latency_slo_micros"),
    ({"name": "a", "input_type": "floats", "latency_slo_micros": 0}, "latency_slo_micros"),
    ({"name": "a", "input_type": "floats", "latency_slo_micros": True}, "latency_slo_micros"),
    ({"name": "a", "input_type": "floats", "default_output": 3}, "default_output"),
    ({"name": "a:b", "input_type": "floats"}, "name"),
    ({"name": "a", "input_type": "floats", "on_overload": "queue"}, "on_overload"),
])
def test_bad_add_app_body_is_400_naming_the_field(api: ApiServer, body: dict, field: str) -> None:
    resp = api.post("/admin/add_app", body)
    assert resp.status_code == 400
    assert resp.json()["error"] == "bad_request"
    assert field in resp.json()["message"]
    assert _ok(api.post("/admin/get_all_applications", {})) == []


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"'])
def test_a_body_that_is_not_a_json_object_is_400(api: ApiServer, raw: bytes) -> None:
    resp = api.post("/admin/add_app", raw=raw)
    assert resp.status_code == 400 and "JSON object" in resp.json()["message"]


def test_adding_an_existing_app_is_409(api: ApiServer) -> None:
    _add_app(api)
    resp = api.post("/admin/add_app", {"name": "app", "input_type": "ints"})
    assert resp.status_code == 409 and resp.json()["error"] == "conflict"


def test_deleting_an_unknown_app_is_404_and_reading_it_is_clippers_empty_answer(api: ApiServer) -> None:
    resp = api.post("/admin/delete_app", {"name": "ghost"})
    assert resp.status_code == 404
    assert resp.json()["error"] == "not_found" and "ghost" in resp.json()["cause"]
    assert _ok(api.post("/admin/get_application", {"name": "ghost"})) == {}
    assert _ok(api.post("/admin/get_linked_models", {"app_name": "ghost"})) == []


def test_added_model_keeps_clipper_and_schooner_fields(api: ApiServer) -> None:
    _add_model(api, "sleepy", 3, launcher="sleep", model_opts={"a_ms": 2, "b_ms": 0.5}, batch_size=8,
               max_batch_size=16, batch_wait_timeout_micros=100, input_shape=[4], cpus_per_replica=2, gpus=[0])
    info = _ok(api.post("/admin/get_model", {"model_name": "sleepy", "model_version": 3}))
    assert info["model_name"] == "sleepy" and info["model_version"] == "3" and info["is_current_version"]
    assert (info["launcher"], info["model_opts"], info["batch_size"], info["max_batch_size"]) == \
        ("sleep", {"a_ms": 2, "b_ms": 0.5}, 8, 16)
    assert (info["input_shape"], info["cpus_per_replica"], info["gpus"], info["labels"]) == ([4], 2, [0], ["a"])
    assert _ok(api.post("/admin/get_model", {"model_name": "sleepy"}))["model_version"] == "3"
    assert _ok(api.post("/admin/get_all_models", {"verbose": False})) == ["sleepy:3"]
    assert _ok(api.post("/admin/get_all_models", {"verbose": True}))[0]["launcher"] == "sleep"


def test_launcher_defaults_to_the_model_name_and_image_to_container_name(api: ApiServer) -> None:
    _add_model(api, "noop", "v1", container_name="schooner/noop:1")
    info = _ok(api.post("/admin/get_model", {"model_name": "noop", "model_version": "v1"}))
    assert info["launcher"] == "noop" and info["image"] == "schooner/noop:1"
    assert info["container_name"] == "schooner/noop:1"


@pytest.mark.parametrize("change, field", [
    ({"model_version": None}, "model_version"),
    ({"model_version": True}, "model_version"),
    ({"labels": "a"}, "labels"),
    ({"labels": [1]}, "labels"),
    ({"batch_size": "8"}, "batch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"input_shape": [3, 0]}, "input_shape"),
    ({"model_opts": [1]}, "model_opts"),
    ({"gpus": [-1]}, "gpus"),
    ({"cpus_per_replica": 1.5}, "cpus_per_replica"),
    ({"input_type": "tensor"}, "input_type"),
])
def test_bad_add_model_body_is_400_naming_the_field(api: ApiServer, change: dict, field: str) -> None:
    body = {"model_name": "m", "model_version": 1, "labels": [], "input_type": "floats", **change}
    body = {k: v for k, v in body.items() if v is not None}
    resp = api.post("/admin/add_model", body)
    assert resp.status_code == 400 and field in resp.json()["message"], resp.text
    assert _ok(api.post("/admin/get_all_models", {})) == []


def test_adding_an_existing_model_version_is_409(api: ApiServer) -> None:
    _add_model(api)
    assert api.post("/admin/add_model", {"model_name": "m", "model_version": 1, "input_type": "floats",
                                         "launcher": "noop"}
                    ).status_code == 409


def test_links_versions_and_their_errors(api: ApiServer) -> None:
    _add_app(api)
    _add_model(api, "m", 1)
    _add_model(api, "m", 2)
    _add_model(api, "intm", 1, "ints")
    assert api.post("/admin/add_model_links", {"app_name": "app", "model_names": ["intm"]}).status_code == 409
    assert api.post("/admin/add_model_links", {"app_name": "ghost", "model_names": ["m"]}).status_code == 404
    assert api.post("/admin/add_model_links", {"app_name": "app", "model_names": ["ghost"]}).status_code == 404
    assert api.post("/admin/add_model_links", {"app_name": "app", "model_names": "m"}).status_code == 400
    assert api.post("/admin/add_model_links", {"app_name": "app", "model_names": ["m", "intm"]}
                    ).status_code == 400
    assert _ok(api.post("/admin/add_model_links", {"app_name": "app", "model_names": ["m"]})) == "Success!"
    assert _ok(api.post("/admin/get_linked_models", {"app_name": "app"})) == ["m"]
    assert _ok(api.post("/admin/get_application", {"name": "app"}))["linked_models"] == ["m"]
    assert api.post("/admin/set_model_version", {"model_name": "m", "model_version": 9}).status_code == 404
    assert _ok(api.post("/admin/set_model_version", {"model_name": "m", "model_version": 2})) == "Success!"
    assert _ok(api.post("/admin/get_model", {"model_name": "m"}))["model_version"] == "2"
    assert not _ok(api.post("/admin/get_model", {"model_name": "m", "model_version": 1}))["is_current_version"]


def test_delete_endpoints_remove_links_apps_and_versions(api: ApiServer, store: Store) -> None:
    _add_app(api)
    _add_model(api, "m", 1)
    _add_model(api, "m", 2)
    api.post("/admin/add_model_links", {"app_name": "app", "model_names": ["m"]})
    assert api.post("/admin/delete_model_links", {"app_name": "app", "model_names": ["other"]}).status_code == 404
    assert _ok(api.post("/admin/delete_model_links", {"app_name": "app", "model_names": ["m"]})) == "Success!"
    assert store.get_links("app") == []
    assert _ok(api.post("/admin/delete_versioned_model", {"model_name": "m", "model_version": 1})) == "Success!"
    assert api.post("/admin/delete_versioned_model", {"model_name": "m", "model_version": 1}).status_code == 404
    assert store.get_current_version("m") == "2"
    assert _ok(api.post("/admin/delete_app", {"name": "app"})) == "Success!"
    assert store.load_state().apps == {}
    assert _ok(api.post("/admin/get_model", {"model_name": "m", "model_version": 1})) == {}


def test_clipper_admin_reads_of_missing_things_answer_200_empty(api: ApiServer) -> None:
    # clipper_admin's get_app_info / get_model_info / get_container_info return None on an empty
    # JSON object and raise on any other status: Clipper's management frontend answers 200 {}.
    assert _ok(api.post("/admin/get_application", {"name": "nobody"})) == {}
    assert _ok(api.post("/admin/get_model", {"model_name": "nobody", "model_version": "1"})) == {}
    assert _ok(api.post("/admin/get_container", {"model_name": "nobody", "model_version": "1",
                                                 "replica_id": "0"})) == {}
    assert _ok(api.post("/admin/get_linked_models", {"app_name": "nobody"})) == []


def test_replica_records_carry_clippers_container_fields(api: ApiServer, store: Store) -> None:
    _add_model(api, "m", 1, input_type="doubles")
    store.replicas.put({"model_name": "m", "model_version": "1", "replica_id": "m-1-r1", "backend": "process",
                        "handle": "1", "cpus": [0], "gpu": None, "state": "ready", "seq": 0})
    [record] = _ok(api.post("/admin/get_all_containers", {"verbose": True}))
    assert record["model_id"] == "m:1" and record["model_replica_id"] == 0
    assert record["input_type"] == "doubles"


def test_error_bodies_carry_clippers_cause(api: ApiServer) -> None:
    resp = api.post("/admin/add_app", {"name": "x"})
    assert resp.status_code == 400
    body = resp.json()
    assert body["error"] == "bad_request" and "input_type" in body["cause"]


def test_containers_come_from_the_replica_records(api: ApiServer, store: Store) -> None:
    record = {"model_name": "m", "model_version": "1", "replica_id": "m-1-r1", "backend": "process",
              "handle": "123", "cpus": [0], "gpu": None, "state": "ready"}
    store.replicas.put(record)
    assert _ok(api.post("/admin/get_all_containers", {"verbose": False})) == ["m:1:m-1-r1"]
    [listed] = _ok(api.post("/admin/get_all_containers", {"verbose": True}))
    assert {k: v for k, v in listed.items() if k in record} == record
    assert listed["model_id"] == "m:1" and "input_type" not in listed  # no model m registered
    assert _ok(api.post("/admin/get_container", {"model_name": "m", "model_version": 1,
                                                 "replica_id": "m-1-r1"})) == listed
    assert _ok(api.post("/admin/get_container", {"model_name": "m", "model_version": 1, "replica_id": "x"})) == {}
    assert api.post("/admin/get_all_containers", {"verbose": "yes"}).status_code == 400


def test_set_model_batching_updates_the_model_and_validates(api: ApiServer, store: Store) -> None:
    _add_model(api, "m", 1, batch_size=4)
    info = _ok(api.post("/admin/set_model_batching", {"model_name": "m", "batch_size": -1, "max_batch_size": 32,
                                                      "batch_wait_timeout_micros": 200}))
    assert (info["batch_size"], info["max_batch_size"], info["batch_wait_timeout_micros"]) == (-1, 32, 200)
    assert store.get_model("m", "1").max_batch_size == 32
    for body, status in (({"model_name": "m", "batch_size": 0}, 400),
                         ({"model_name": "m", "batch_size": "4"}, 400),
                         ({"model_name": "m"}, 400),
                         ({"model_name": "m", "model_version": 5, "batch_size": 4}, 404),
                         ({"model_name": "ghost", "batch_size": 4}, 404)):
        assert api.post("/admin/set_model_batching", body).status_code == status, body
    assert store.get_model("m", "1").batch_size == -1


def test_prediction_cache_is_set_per_model_version(api: ApiServer, store: Store) -> None:
    _add_model(api, "m", 1)
    _add_model(api, "m", 2, cache_enabled=True, cache_size_bytes=4096)
    assert store.get_model("m", "1").cache_enabled is False
    assert (store.get_model("m", "2").cache_enabled, store.get_model("m", "2").cache_size_bytes) == (True, 4096)
    info = _ok(api.post("/admin/set_model_cache", {"model_name": "m", "model_version": 1, "enabled": True,
                                                   "size_bytes": 1 << 20}))
    assert (info["cache_enabled"], info["cache_size_bytes"]) == (True, 1 << 20)
    info = _ok(api.post("/admin/set_model_cache", {"model_name": "m", "model_version": 2, "enabled": False}))
    assert (info["cache_enabled"], info["cache_size_bytes"]) == (False, 4096)
    for body, status in (({"model_name": "m", "enabled": "yes"}, 400),
                         ({"model_name": "m", "enabled": True, "size_bytes": -1}, 400),
                         ({"model_name": "m"}, 400),
                         ({"model_name": "ghost", "enabled": True}, 404)):
        assert api.post("/admin/set_model_cache", body).status_code == status, body
    assert api.post("/admin/add_model", {"model_name": "n", "model_version": 1, "input_type": "floats",
                                         "cache_enabled": 1}).status_code == 400


def test_replica_endpoints_answer_503_without_a_manager(api: ApiServer) -> None:
    _add_model(api)
    for path, body in (("/admin/set_num_replicas", {"model_name": "m", "num_replicas": 1}),
                       ("/admin/get_model_replicas", {"model_name": "m"}),
                       ("/admin/get_replica_logs", {"replica_id": "r"})):
        resp = api.post(path, body)
        assert resp.status_code == 503 and resp.json()["error"] == "no_manager", path


def test_writes_need_the_admin_token_when_one_is_set(serve: Callable[..., ApiServer],
                                                      store: Store) -> None:
    api = serve(store, admin_token="s3cret")
    body = {"name": "app", "input_type": "floats"}
    assert api.post("/admin/add_app", body).status_code == 401
    assert api.post("/admin/add_app", body, token="wrong").json()["error"] == "unauthorized"
    assert store.get_app("app") is None
    assert _ok(api.post("/admin/add_app", body, token="s3cret")) == "Success!"
    assert _ok(api.post("/admin/get_all_applications", {})) == ["app"]  # reads stay open
    assert api.post("/admin/delete_app", {"name": "app"}).status_code == 401
    assert requests.get(f"{api.url}/admin/ping", timeout=HTTP_TIMEOUT_S).text == "pong"


def test_metrics_is_502_when_the_frontend_is_down(api: ApiServer) -> None:
    resp = requests.get(f"{api.url}/admin/metrics", timeout=HTTP_TIMEOUT_S)
    assert resp.status_code == 502 and resp.json()["error"] == "frontend_unavailable"


def test_redis_down_is_503_store_unavailable(serve: Callable[..., ApiServer], tmp_path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url, decode_responses=True, retry=Retry(NoBackoff(), 0),
                                  socket_connect_timeout=2)
    api = serve(Store(client))
    _add_app(api)
    server.stop()
    resp = api.post("/admin/get_all_applications", {})
    assert resp.status_code == 503 and resp.json()["error"] == "store_unavailable"
    assert api.post("/admin/add_app", {"name": "b", "input_type": "floats"}).status_code == 503
    client.close()


def test_wait_s_running_out_is_504_replicas_not_ready_and_replicas_keep_starting(
        serve: Callable[..., ApiServer], store: Store, tmp_path) -> None:
    from management.allocator import CpuAllocator
    from management.backends.local import LocalProcessBackend
    from management.manager import ReplicaManager

    nobody = f"http://127.0.0.1:{free_port()}"  # no frontend: no replica ever shows ready
    backend = LocalProcessBackend(log_dir=tmp_path / "replicas")
    manager = ReplicaManager(store, backend, CpuAllocator(), frontend_rpc=f"tcp://127.0.0.1:{free_port()}",
                             frontend_http_url=nobody)
    api = serve(store, manager, frontend_http_url=nobody)
    try:
        _add_model(api, "noop", 1, launcher="noop")
        resp = api.post("/admin/set_num_replicas", {"model_name": "noop", "num_replicas": 1, "wait_s": 0.5})
        assert resp.status_code == 504, resp.text
        error = resp.json()
        assert error["error"] == "replicas_not_ready" and "0.5s" in error["message"], error
        [record] = store.replicas.find("noop", "1")
        assert [r.replica_id for r in backend.list()] == [record.replica_id]
    finally:
        api.run(manager.shutdown(), timeout_s=60)
        for replica in backend.list():
            backend.stop(replica.replica_id, timeout_s=5.0)


def test_make_app_validates_its_arguments(store: Store) -> None:
    with pytest.raises(TypeError, match="store"):
        make_app(object(), None, frontend_http_url="http://127.0.0.1:1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="frontend_http_url"):
        make_app(store, None, frontend_http_url="127.0.0.1:1337")


# -- the whole path: REST -> Redis -> follower -> frontend process; manager -> replica processes ---

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_deploy_scale_query_and_delete_through_the_api(serve: Callable[..., ApiServer], store: Store,
                                                       frontend_process: dict, tmp_path) -> None:
    from management.allocator import CpuAllocator
    from management.backends.local import LocalProcessBackend
    from management.manager import ReplicaManager

    backend = LocalProcessBackend(log_dir=tmp_path / "replicas")
    manager = ReplicaManager(store, backend, CpuAllocator(), frontend_rpc=frontend_process["rpc"],
                             frontend_http_url=frontend_process["http"], reconcile_interval_s=0.5)
    api = serve(store, manager, frontend_http_url=frontend_process["http"])
    try:
        _add_app(api, "echo")
        _add_model(api, "noop", 1, launcher="noop")
        api.post("/admin/add_model_links", {"app_name": "echo", "model_names": ["noop"]})
        impossible = api.post("/admin/set_num_replicas", {"model_name": "noop", "num_replicas": 1,
                                                          "cpus_per_replica": 4096})
        assert impossible.status_code == 400, impossible.text
        assert api.post("/admin/set_num_replicas", {"model_name": "noop", "num_replicas": "1"}
                        ).status_code == 400
        replicas = _ok(api.post("/admin/set_num_replicas", {"model_name": "noop", "num_replicas": 1,
                                                            "wait_s": READY_S}))
        assert len(replicas) == 1 and replicas[0]["state"] in ("ready", "busy")
        pid = int(replicas[0]["pid"])

        answer = wait_for(lambda: _predict(frontend_process["http"], "echo"), 60, "a model answer",
                          why=frontend_process["log"].read_text)
        assert answer["default"] is False
        described = _ok(api.post("/admin/get_model_replicas", {"model_name": "noop", "model_version": 1}))
        assert [r["replica_id"] for r in described] == [replicas[0]["replica_id"]]
        logs = _ok(api.post("/admin/get_replica_logs", {"replica_id": replicas[0]["replica_id"], "tail": 50}))
        assert isinstance(logs["logs"], str)
        assert api.post("/admin/get_replica_logs", {"replica_id": "nope"}).status_code == 404
        metrics = _ok(requests.get(f"{api.url}/admin/metrics", timeout=HTTP_TIMEOUT_S))
        names = {name for c in metrics["counters"] for name in c}
        assert "app:echo:num_predictions" in names, metrics["counters"]

        assert _ok(api.post("/admin/delete_versioned_model", {"model_name": "noop", "model_version": 1}))
        assert _ok(api.post("/admin/get_all_containers", {})) == []
        wait_for(lambda: not _pid_alive(pid), 30, "the replica process to exit")
    finally:
        api.run(manager.shutdown(), timeout_s=60)
        for replica in backend.list():
            backend.stop(replica.replica_id, timeout_s=5.0)


def _predict(http: str, app: str) -> dict | None:
    try:
        resp = requests.post(f"{http}/{app}/predict", json={"input": [1.0, 2.0]}, timeout=10)
    except requests.RequestException:
        return None
    return resp.json() if resp.status_code == 200 and not resp.json().get("default") else None
