"""DockerBackend against a real Docker engine, real replica containers and a real frontend.

The Docker tests skip (with the reason) when no engine answers or the replica image
is missing; CI starts the engine and builds the images first (bin/start_dockerd.sh,
bin/build_local_base_image.sh, bin/build_docker_images.sh). Every test works in
its own label namespace, and a finalizer removes every container in it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid

import pytest
import requests

from frontend.client import Client
from schooner.types import AppSpec, ModelSpec
from management.backends.base import LaunchSpec, ReplicaBackend
from management.backends.docker import DEFAULT_IMAGE, NAMESPACE, DockerBackend, container_name, replica_command
from management.config import ServiceConfig, parse_args
from management.errors import BackendError
from management_support import add_noop, frontend_rows, predict
from polling import wait_for

READY_S = 120.0  # container start + python imports + register, on a loaded 2-core machine
CPUS = sorted(os.sched_getaffinity(0))


def _engine_and_image():
    """(docker client, None) when the engine answers and the image exists, else (None, why)."""
    try:
        import docker  # noqa: PLC0415 - only these tests need the SDK
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as err:  # any failure means: no usable engine here
        return None, f"no Docker engine answers ({err}); run bin/start_dockerd.sh"
    try:
        client.images.get(DEFAULT_IMAGE)
    except Exception:
        return None, f"image {DEFAULT_IMAGE} is missing; run bin/build_docker_images.sh"
    return client, None


@pytest.fixture(scope="module")
def docker_client():
    client, why = _engine_and_image()
    if client is None:
        pytest.skip(why)
    yield client
    client.close()


@pytest.fixture
def docker_backend(docker_client):
    """A DockerBackend in a fresh label namespace; every container in it is removed afterwards."""
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    try:
        yield DockerBackend(client=docker_client, namespace=namespace)
    finally:
        leftovers = docker_client.containers.list(
            all=True, filters={"label": ["schooner.managed=true", f"schooner.namespace={namespace}"]})
        for container in leftovers:
            container.remove(force=True)


def noop_spec(frontend_rpc: str, cpus: list[int], replica_id: str | None = None, **kwargs) -> LaunchSpec:
    return LaunchSpec(replica_id=replica_id or f"noop-1-{uuid.uuid4().hex[:6]}", model_name="noop",
                      model_version="1", model="noop", frontend_address=frontend_rpc, cpus=cpus,
                      input_type="doubles", **kwargs)


def serving(http: str, replica_id: str) -> bool:
    return frontend_rows(http).get(replica_id, {}).get("state") in ("ready", "busy")


def cpus_allowed_in(container) -> str:
    code, out = container.exec_run(["cat", "/proc/1/status"])
    assert code == 0, out
    for line in out.decode().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list in the container's /proc/1/status")


# -- without an engine: the command line and names the backend builds -----------------------------

def test_replica_command_carries_every_launch_setting():
    spec = LaunchSpec(replica_id="r1", model_name="m", model_version="2", model="sleep",
                      frontend_address="tcp://127.0.0.1:7000", cpus=[2, 3], model_data_path="/data/m",
                      model_opts={"a_ms": 5}, input_type="floats")
    cmd = replica_command(spec, gpu_in_container=0)
    assert cmd[:3] == ["python3", "-m", "containers.replica"]
    flags = dict(zip(cmd[3::2], cmd[4::2]))
    assert flags == {"--model": "sleep", "--frontend": "tcp://127.0.0.1:7000", "--cpus": "2,3", "--name": "m",
                     "--version": "2", "--replica-id": "r1", "--gpu": "0", "--model-path": "/data/m",
                     "--model-opts": '{"a_ms": 5}', "--input-type": "floats"}
    assert "--gpu" not in replica_command(spec, gpu_in_container=None)


def test_container_names_are_docker_safe_and_namespaced():
    spec = LaunchSpec(replica_id="r 1/x", model_name="my model", model_version="1.0", model="noop",
                      frontend_address="tcp://127.0.0.1:7000", cpus=[0])
    assert container_name(spec) == "schooner-my_model-1.0-r_1_x"
    assert container_name(spec, "ci") == "schooner-ci-my_model-1.0-r_1_x"


def test_bad_constructor_arguments_are_refused():
    with pytest.raises(ValueError, match="namespace"):
        DockerBackend(client=object(), namespace="a b")
    with pytest.raises(ValueError, match="label_prefix"):
        DockerBackend(client=object(), label_prefix="schooner")
    with pytest.raises(ValueError, match="nano_cpus"):
        DockerBackend(client=object(), nano_cpus=0)


def test_each_deployment_gets_its_own_stable_docker_namespace(tmp_path, monkeypatch):
    monkeypatch.delenv("SCHOONER_DOCKER_NAMESPACE", raising=False)
    one = parse_args(["--redis-url", "redis://127.0.0.1:6379/0", "--backend", "docker"])
    other = parse_args(["--redis-url", "redis://127.0.0.1:6380/0", "--backend", "docker"])
    assert one.docker_namespace != other.docker_namespace
    assert parse_args(["--redis-url", "redis://127.0.0.1:6379/0"]).docker_namespace == one.docker_namespace
    embedded_a = parse_args(["--state-dir", str(tmp_path / "a")]).docker_namespace
    embedded_b = parse_args(["--state-dir", str(tmp_path / "b")]).docker_namespace
    assert embedded_a != embedded_b and NAMESPACE not in (embedded_a, embedded_b)
    assert parse_args(["--docker-namespace", "ci-1"]).docker_namespace == "ci-1"
    monkeypatch.setenv("SCHOONER_DOCKER_NAMESPACE", "from-env")
    assert parse_args([]).docker_namespace == "from-env"
    with pytest.raises(ValueError, match="docker_namespace"):
        ServiceConfig(docker_namespace="a b")


def test_images_are_chosen_by_spec_then_mapping_then_default():
    docker_backend = DockerBackend(client=object(), image_for={"lgbm": "classic:1"}, default_image="base:1")
    spec = noop_spec("tcp://127.0.0.1:7000", [0])
    assert docker_backend.image_for(spec) == "base:1"
    spec.model = "lgbm"
    assert docker_backend.image_for(spec) == "classic:1"
    spec.image = "mine:2"
    assert docker_backend.image_for(spec) == "mine:2"
    assert DockerBackend(client=object(), image_for=lambda m: f"img-{m}").image_for(noop_spec("x", [0])) == "img-noop"


# -- a real engine -------------------------------------------------------------------------------

@pytest.mark.docker
def test_backend_implements_the_replica_backend_protocol(docker_backend):
    assert isinstance(docker_backend, ReplicaBackend)
    assert docker_backend.name == "docker"
    assert docker_backend.list() == []


@pytest.mark.docker
def test_missing_image_is_a_backend_error_and_starts_nothing(docker_backend):
    spec = noop_spec("tcp://127.0.0.1:9", [CPUS[0]], image="schooner/no-such-image:never")
    with pytest.raises(BackendError, match="not found"):
        docker_backend.start(spec)
    assert docker_backend.list() == []
    with pytest.raises(BackendError, match="no container"):
        docker_backend.logs(spec.replica_id)
    docker_backend.stop(spec.replica_id, timeout_s=1)  # unknown replica: a no-op, so stops can be retried


@pytest.mark.docker
@pytest.mark.slow
def test_container_replica_is_pinned_serves_queries_and_drains_on_stop(docker_backend, docker_client, store, frontend_process,
                                                                      caplog):
    add_noop(store)
    cpu = CPUS[-1]
    spec = noop_spec(frontend_process["rpc"], [cpu])
    started = time.monotonic()
    running = docker_backend.start(spec)
    assert running.backend == "docker" and running.alive and running.cpus == [cpu]
    wait_for(lambda: serving(frontend_process["http"], spec.replica_id), READY_S, "the container replica to register")
    out = predict(frontend_process["http"], 1.0)
    logging.getLogger(__name__).warning("container replica start to first answer: %.2fs",
                                        time.monotonic() - started)
    assert not out["default"], out

    container = docker_client.containers.get(running.handle)
    assert container.name == container_name(spec, docker_backend.namespace)
    assert container.name.startswith(f"schooner-{docker_backend.namespace}-noop-1-")
    assert container.attrs["HostConfig"]["CpusetCpus"] == str(cpu)
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    assert container.labels["schooner.replica_id"] == spec.replica_id
    assert container.labels["schooner.model"] == "noop" and container.labels["schooner.version"] == "1"
    assert cpus_allowed_in(container) == str(cpu)
    row = frontend_rows(frontend_process["http"])[spec.replica_id]
    assert row["cpus"] == [cpu]

    # Queries over HTTP and over the ZMQ client, all answered by the container (no defaults).
    answers = [predict(frontend_process["http"], float(i)) for i in range(10)]
    assert all(not a["default"] for a in answers), answers
    with Client(frontend_process["client"], timeout_s=60) as client:
        zmq_answers = [client.predict("echo", [float(i), 1.0], dtype="doubles") for i in range(10)]
    assert all(not p.default for p in zmq_answers), zmq_answers
    [listed] = docker_backend.list()
    assert (listed.replica_id, listed.handle, listed.cpus, listed.alive) == (spec.replica_id, running.handle,
                                                                            [cpu], True)
    assert spec.replica_id in docker_backend.logs(spec.replica_id)  # the replica's own start-up line

    with caplog.at_level(logging.INFO, logger="management.backends.docker"):
        docker_backend.stop(spec.replica_id, timeout_s=30)
    assert "exit 0" in caplog.text, caplog.text  # SIGTERM: the replica drained and exited cleanly
    assert docker_backend.list() == []
    assert docker_client.containers.list(all=True, filters={"id": running.handle}) == []
    wait_for(lambda: not serving(frontend_process["http"], spec.replica_id), 30, "the frontend to drop the replica")


@pytest.mark.docker
@pytest.mark.slow
def test_killed_container_is_listed_dead_with_logs_and_can_be_started_again(docker_backend, docker_client, store,
                                                                           frontend_process):
    add_noop(store)
    spec = noop_spec(frontend_process["rpc"], [CPUS[0]])
    first = docker_backend.start(spec)
    with pytest.raises(BackendError, match="cannot start"):
        docker_backend.start(spec)  # same replica twice: its name is taken by a running container
    wait_for(lambda: serving(frontend_process["http"], spec.replica_id), READY_S, "the replica to register")
    docker_client.containers.get(first.handle).kill()
    [dead] = wait_for(lambda: [r for r in docker_backend.list() if not r.alive], 30, "the container to be seen dead")
    assert dead.replica_id == spec.replica_id and dead.cpus == [CPUS[0]]
    assert docker_backend.exit_code(spec.replica_id) == 137
    assert spec.replica_id in docker_backend.logs(spec.replica_id, tail=50)

    # A dead container's name is reused on restart (the stale container is replaced).
    second = docker_backend.start(spec)
    assert second.handle != first.handle
    wait_for(lambda: serving(frontend_process["http"], spec.replica_id), READY_S, "the restarted replica")
    assert not predict(frontend_process["http"], 2.0)["default"]
    assert [r.handle for r in docker_backend.list()] == [second.handle]


@pytest.mark.docker
@pytest.mark.slow
def test_lgbm_replica_runs_in_the_classic_image_chosen_for_it(docker_backend, docker_client, store, frontend_process):
    from management.backends.docker import CLASSIC_IMAGE  # noqa: PLC0415

    try:
        docker_client.images.get(CLASSIC_IMAGE)
    except Exception:
        pytest.skip(f"image {CLASSIC_IMAGE} is missing; run bin/build_docker_images.sh")
    store.add_app(AppSpec(name="trees", input_type="floats", latency_slo_micros=60_000_000))
    store.add_model(ModelSpec(name="lgbm", version="1", input_type="floats", batch_size=1))
    store.add_links("trees", ["lgbm"])
    spec = LaunchSpec(replica_id=f"lgbm-1-{uuid.uuid4().hex[:6]}", model_name="lgbm", model_version="1",
                      model="lgbm", frontend_address=frontend_process["rpc"], cpus=[CPUS[0]], input_type="floats")
    running = docker_backend.start(spec)
    # Images carry the version tag beside :latest; the classic image is the one chosen.
    assert CLASSIC_IMAGE in docker_client.containers.get(running.handle).image.tags
    wait_for(lambda: serving(frontend_process["http"], spec.replica_id), READY_S, "the lgbm replica to register")
    with Client(frontend_process["client"], timeout_s=60) as client:
        answer = client.predict("trees", [0.5] * 2048, dtype="floats")
    assert not answer.default, answer
    assert len(answer.output) == 10  # class probabilities of the zoo's 10-class model


# -- the replica manager on the Docker backend -----------------------------------------------------

def _manager(store, docker_backend, frontend_process):
    from management.allocator import CpuAllocator  # noqa: PLC0415
    from management.manager import ReplicaManager  # noqa: PLC0415

    return ReplicaManager(store, docker_backend, CpuAllocator(), frontend_rpc=frontend_process["rpc"],
                          frontend_http_url=frontend_process["http"], reconcile_interval_s=0.5,
                          restart_backoff_s=(0.2, 2.0), stop_timeout_s=20.0)


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.skipif(len(CPUS) < 2, reason="needs two cores")
def test_manager_scales_containers_up_and_down_and_restarts_a_killed_one(docker_backend, docker_client, store,
                                                                         frontend_process):
    add_noop(store, model="dnoop")
    manager = _manager(store, docker_backend, frontend_process)

    async def scenario():
        stop = asyncio.Event()
        loop_task = asyncio.create_task(manager.run(stop))
        try:
            two = await manager.set_num_replicas("dnoop", "1", 2, model_cpus=CPUS[:2], wait_s=READY_S)
            assert sorted(tuple(r["cpus"]) for r in two) == [(CPUS[0],), (CPUS[1],)]
            for r in two:
                c = docker_client.containers.get(r["container_id"])
                assert c.attrs["HostConfig"]["CpusetCpus"] == str(r["cpus"][0])
            out = await asyncio.to_thread(predict, frontend_process["http"], 1.0)
            assert not out["default"], out

            oldest, newest = sorted(two, key=lambda r: r["created_s"])
            [kept] = await manager.set_num_replicas("dnoop", "1", 1, model_cpus=CPUS[:2])
            assert kept["replica_id"] == oldest["replica_id"]
            assert [r.replica_id for r in docker_backend.list()] == [oldest["replica_id"]]

            docker_client.containers.get(kept["container_id"]).kill()

            def restarted():
                rec = store.replicas.get("dnoop", "1", kept["replica_id"])
                return rec.to_dict() if rec and rec.container_id != kept["container_id"] else None

            after = await asyncio.to_thread(wait_for, restarted, 60, "the reconcile loop to restart it")
            assert after["cpus"] == kept["cpus"] and after["restarts"] == 1
            await manager.wait_ready("dnoop", "1", READY_S)
            out = await asyncio.to_thread(predict, frontend_process["http"], 2.0)
            assert not out["default"], out
            c = docker_client.containers.get(after["container_id"])
            assert c.status == "running" and c.attrs["HostConfig"]["CpusetCpus"] == str(kept["cpus"][0])
        finally:
            stop.set()
            await loop_task
            await manager.shutdown()

    asyncio.run(scenario())
    assert docker_backend.list() == []


@pytest.mark.docker
@pytest.mark.slow
def test_two_deployments_on_one_engine_do_not_stop_each_others_containers(docker_client, store, frontend_process,
                                                                          redis_server, monkeypatch):
    from management.service import build_manager  # noqa: PLC0415

    monkeypatch.delenv("SCHOONER_DOCKER_NAMESPACE", raising=False)
    mine = ServiceConfig(redis_url=redis_server.url, backend="docker", frontend_http=frontend_process["http"],
                         frontend_rpc=frontend_process["rpc"])
    theirs = ServiceConfig(redis_url=f"redis://127.0.0.1:{redis_server.port + 1}/0", backend="docker")
    manager = build_manager(mine, store)
    assert manager.backend.namespace == mine.docker_namespace != theirs.docker_namespace
    other = DockerBackend(client=docker_client, namespace=theirs.docker_namespace)
    same = DockerBackend(client=docker_client, namespace=mine.docker_namespace)
    async def scenario():
        try:
            foreign = await asyncio.to_thread(other.start, noop_spec(frontend_process["rpc"], CPUS[:1]))
            await manager.reconcile_once()  # our Redis knows no replica: strays of ours are stopped
            assert [r.replica_id for r in other.list() if r.alive] == [foreign.replica_id]
            # The same pass does stop an unknown container in its own namespace.
            stray = await asyncio.to_thread(same.start, noop_spec(frontend_process["rpc"], CPUS[:1]))
            await manager.reconcile_once()
            assert stray.replica_id not in [r.replica_id for r in same.list() if r.alive]
            assert [r.replica_id for r in other.list() if r.alive] == [foreign.replica_id]
        finally:
            await manager.close()

    try:
        asyncio.run(scenario())
    finally:
        for namespace in (mine.docker_namespace, theirs.docker_namespace):
            for leftover in docker_client.containers.list(
                    all=True, filters={"label": ["schooner.managed=true", f"schooner.namespace={namespace}"]}):
                leftover.remove(force=True)


# -- the whole stack: `schooner up`'s processes with the management service on --backend docker ----

@pytest.mark.docker
@pytest.mark.slow
def test_stack_with_docker_backend_deploys_serves_and_removes_containers_on_stop(docker_client, tmp_path):
    from management.stack import Stack  # noqa: PLC0415

    namespace = f"test-{uuid.uuid4().hex[:8]}"
    scope = {"label": ["schooner.managed=true", f"schooner.namespace={namespace}"]}

    token: list[str] = []

    def admin(url: str, path: str, body: dict) -> requests.Response:
        resp = requests.post(f"{url}/admin/{path}", json=body, timeout=READY_S + 30,
                             headers={"Authorization": f"Bearer {token[0]}"})
        assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text}"
        return resp

    try:
        with Stack(backend="docker", state_dir=tmp_path / "state", heartbeat_interval_s=0.25,
                   env={"SCHOONER_DOCKER_NAMESPACE": namespace}) as stack:
            url = stack.management_url
            token.append(stack.admin_token)
            admin(url, "add_app", {"name": "echo", "input_type": "doubles", "latency_slo_micros": 20_000_000})
            admin(url, "add_model", {"model_name": "noop", "model_version": "1", "input_type": "doubles"})
            admin(url, "add_model_links", {"app_name": "echo", "model_names": ["noop"]})
            [replica] = admin(url, "set_num_replicas", {"model_name": "noop", "num_replicas": 1,
                                                        "cpus_per_replica": 1, "wait_s": READY_S}).json()
            assert replica["backend"] == "docker" and replica["state"] in ("ready", "busy"), replica
            [container] = docker_client.containers.list(filters=scope)
            assert container.id == replica["container_id"]
            assert container.attrs["HostConfig"]["CpusetCpus"] == ",".join(map(str, replica["cpus"]))
            assert not predict(stack.frontend_http_url, 4.0)["default"]
        assert docker_client.containers.list(all=True, filters=scope) == []
    finally:
        for leftover in docker_client.containers.list(all=True, filters=scope):
            leftover.remove(force=True)
