"""ReplicaManager against real Redis, a real frontend process and real replica processes."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from schooner.types import ModelSpec
from management.allocator import CpuAllocator
from management.backends.local import LocalProcessBackend
from management.errors import AllocationError, ModelFailed, NotFound
from management.manager import ReplicaManager
from management_support import add_noop, frontend_rows, predict
from polling import wait_for_async

READY_S = 90.0  # a replica on a loaded 2-core machine: python start + imports + register
CPUS = sorted(os.sched_getaffinity(0))
TWO_CORES = pytest.mark.skipif(len(CPUS) < 2, reason="needs two cores")


@pytest.fixture
def process_backend(tmp_path):
    process_backend = LocalProcessBackend(log_dir=tmp_path / "replicas")
    try:
        yield process_backend
    finally:
        for replica in process_backend.list():
            process_backend.stop(replica.replica_id, timeout_s=5.0)


def make_manager(store, process_backend, frontend_process=None, **kwargs) -> ReplicaManager:
    return ReplicaManager(store, process_backend, CpuAllocator(), frontend_rpc=frontend_process["rpc"] if frontend_process else
                          "tcp://127.0.0.1:9", frontend_http_url=frontend_process["http"] if frontend_process else "",
                          reconcile_interval_s=0.3, restart_backoff_s=(0.2, 2.0), stop_timeout_s=20.0,
                          **kwargs)


def cpus_allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


# -- refusals: fast, nothing may start ------------------------------------------------------------

def test_impossible_allocations_are_refused_before_anything_starts(store, process_backend):
    add_noop(store)
    manager = make_manager(store, process_backend)
    too_many = len(CpuAllocator().available) + 1

    async def scenario():
        with pytest.raises(AllocationError, match="need"):
            await manager.set_num_replicas("noop", "1", too_many, cpus_per_replica=1)
        with pytest.raises(AllocationError, match=r"\[9999\] do not exist"):
            await manager.set_num_replicas("noop", "1", 1, model_cpus=[0, 9999])
        with pytest.raises(AllocationError, match="gpu"):
            await manager.set_num_replicas("noop", "1", 1, gpus=[4242])
        with pytest.raises(AllocationError, match="cpus_per_replica"):
            await manager.set_num_replicas("noop", "1", 1, cpus_per_replica=0)
        with pytest.raises(NotFound):
            await manager.set_num_replicas("nosuchmodel", None, 1)
        await manager.shutdown()

    asyncio.run(scenario())
    assert process_backend.list() == []
    assert store.replicas.find() == []
    assert store.replicas.get_desired("noop", "1") is None


def test_describe_of_unknown_model_is_not_found(store, process_backend):
    manager = make_manager(store, process_backend)
    with pytest.raises(NotFound):
        asyncio.run(manager.describe("ghost", "1"))


@TWO_CORES
def test_replica_is_pinned_to_its_cores_even_when_the_manager_is_not(process_backend):
    from management.backends.base import LaunchSpec

    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CPUS[0]})  # like `numactl -C 0 schooner up`
    try:
        running = process_backend.start(LaunchSpec(replica_id="pin-1", model_name="noop", model_version="1", model="noop",
                                           frontend_address="tcp://127.0.0.1:9", cpus=[CPUS[1]]))
    finally:
        os.sched_setaffinity(0, before)
    assert cpus_allowed(int(running.handle)) == str(CPUS[1])
    assert [r.alive for r in process_backend.list()] == [True]
    process_backend.stop("pin-1", timeout_s=20)
    assert process_backend.list() == []
    assert "--replica-id pin-1" in process_backend.logs("pin-1")


# -- real replicas ---------------------------------------------------------------------------------

@TWO_CORES
@pytest.mark.slow
def test_two_replicas_are_pinned_to_their_own_cores_and_both_serve(store, process_backend, frontend_process):
    add_noop(store)
    manager = make_manager(store, process_backend, frontend_process)

    async def scenario():
        replicas = await manager.set_num_replicas("noop", "1", 2, model_cpus=CPUS[:2], wait_s=READY_S)
        assert sorted(tuple(r["cpus"]) for r in replicas) == [(CPUS[0],), (CPUS[1],)]
        for r in replicas:
            assert r["state"] in ("ready", "busy")
            assert cpus_allowed(r["pid"]) == str(r["cpus"][0])
        assert store.replicas.get_desired("noop", "1")["num_replicas"] == 2
        # Concurrent queries keep both replicas busy: each must take batches.
        await asyncio.gather(*(asyncio.to_thread(lambda i=i: [predict(frontend_process["http"], float(i))
                                                              for _ in range(15)]) for i in range(6)))
        rows = await asyncio.to_thread(frontend_rows, frontend_process["http"])
        assert all(rows[r["replica_id"]]["batches_done"] > 0 for r in replicas), rows
        await manager.shutdown()

    asyncio.run(scenario())
    assert all(not r.alive for r in process_backend.list()) or process_backend.list() == []


@TWO_CORES
@pytest.mark.slow
def test_scale_down_drains_the_newest_replica_without_failing_a_query(store, process_backend, frontend_process):
    add_noop(store)
    manager = make_manager(store, process_backend, frontend_process)
    failures: list[str] = []
    done = threading.Event()
    answered = [0]

    def load():
        while not done.is_set():
            try:
                out = predict(frontend_process["http"], 3.0)
                if out.get("default"):
                    failures.append(f"default output: {out}")
                answered[0] += 1
            except AssertionError as err:
                failures.append(str(err))
            except requests.RequestException as err:
                failures.append(repr(err))

    async def scenario():
        replicas = await manager.set_num_replicas("noop", "1", 2, model_cpus=CPUS[:2], wait_s=READY_S)
        oldest, newest = sorted(replicas, key=lambda r: r["created_s"])
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            await asyncio.sleep(1.0)
            after = await manager.set_num_replicas("noop", "1", 1, model_cpus=CPUS[:2])
            await asyncio.sleep(1.0)
        finally:
            done.set()
            for t in threads:
                await asyncio.to_thread(t.join, 60)
        assert [r["replica_id"] for r in after] == [oldest["replica_id"]]
        assert not Path(f"/proc/{newest['pid']}").exists() or _is_zombie(newest["pid"])
        assert [r.replica_id for r in store.replicas.find("noop", "1")] == [oldest["replica_id"]]
        assert newest["replica_id"] not in {r.replica_id for r in process_backend.list()}
        await manager.shutdown()

    asyncio.run(scenario())
    assert failures == []
    assert answered[0] > 0


@pytest.mark.slow
def test_killed_replica_is_restarted_on_the_same_cores_and_serves(store, process_backend, frontend_process):
    add_noop(store)
    manager = make_manager(store, process_backend, frontend_process)

    async def scenario():
        stop = asyncio.Event()
        loop_task = asyncio.create_task(manager.run(stop))
        try:
            [before] = await manager.set_num_replicas("noop", "1", 1, model_cpus=CPUS[-1:], wait_s=READY_S)
            os.kill(before["pid"], signal.SIGKILL)

            def restarted():
                rec = store.replicas.get("noop", "1", before["replica_id"])
                return rec.to_dict() if rec and rec.pid != before["pid"] and rec.restarts == 1 else None

            after = await wait_for_async(restarted, 30, "the restart")
            assert after["cpus"] == before["cpus"]
            await manager.wait_ready("noop", "1", READY_S)
            assert cpus_allowed(after["pid"]) == str(before["cpus"][0])
            out = await asyncio.to_thread(predict, frontend_process["http"], 5.0)
            assert not out.get("default"), out
            [described] = await manager.describe("noop", "1")
            assert described["restarts"] == 1 and described["pid"] == after["pid"]
        finally:
            stop.set()
            await loop_task
            await manager.shutdown()

    asyncio.run(scenario())


@pytest.mark.slow
def test_reconcile_starts_missing_replicas_and_delete_model_stops_them(store, process_backend, frontend_process):
    add_noop(store)
    store.replicas.set_desired("noop", "1", {"num_replicas": 1, "cpus_per_replica": 1, "model_cpus": [], "gpus": []})
    manager = make_manager(store, process_backend, frontend_process)

    async def scenario():
        await manager.reconcile_once()
        [record] = store.replicas.find("noop", "1")
        assert [r.replica_id for r in process_backend.list()] == [record.replica_id]
        await manager.wait_ready("noop", "1", READY_S)
        await manager.delete_model("noop", "1")
        assert process_backend.list() == [] and store.replicas.find() == []
        assert store.replicas.get_desired("noop", "1") is None
        assert not Path(f"/proc/{record.pid}").exists() or _is_zombie(record.pid)
        await manager.shutdown()

    asyncio.run(scenario())


@pytest.mark.slow
def test_crash_looping_replica_is_restarted_with_growing_delays(store, process_backend, frontend_process):
    store.add_model(ModelSpec(name="broken", version="1", input_type="doubles", launcher="no-such-zoo-model"))
    manager = ReplicaManager(store, process_backend, CpuAllocator(), frontend_rpc=frontend_process["rpc"],
                             frontend_http_url=frontend_process["http"], reconcile_interval_s=0.1,
                             restart_backoff_s=(0.3, 30.0), failed_after_starts=10)

    async def scenario():
        stop = asyncio.Event()
        loop_task = asyncio.create_task(manager.run(stop))
        seen: list[float] = []
        try:
            [replica] = await manager.set_num_replicas("broken", "1", 1)
            deadline = time.monotonic() + 60
            while len(seen) < 4 and time.monotonic() < deadline:
                rec = await asyncio.to_thread(store.replicas.get, "broken", "1", replica["replica_id"])
                if rec.restarts > len(seen):
                    seen.append(time.monotonic())
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await loop_task
            await manager.shutdown()
        assert len(seen) == 4, "the crashing replica was not restarted 4 times"
        gaps = [b - a for a, b in zip(seen, seen[1:])]
        # Backoff 0.3, 0.6, 1.2, 2.4 s on top of the (noisy) time the process takes to die.
        assert gaps[-1] > gaps[0] + 0.8, gaps
        assert "no-such-zoo-model" in process_backend.logs(replica["replica_id"], tail=50)

    asyncio.run(scenario())


def test_model_that_never_loads_is_marked_failed_and_waiting_answers_the_reason(store, process_backend, frontend_process):
    store.add_model(ModelSpec(name="broken", version="1", input_type="doubles", launcher="no-such-zoo-model"))
    manager = ReplicaManager(store, process_backend, CpuAllocator(), frontend_rpc=frontend_process["rpc"],
                             frontend_http_url=frontend_process["http"], reconcile_interval_s=0.1,
                             restart_backoff_s=(0.1, 1.0), failed_after_starts=2)

    async def scenario():
        stop = asyncio.Event()
        loop_task = asyncio.create_task(manager.run(stop))
        try:
            with pytest.raises(ModelFailed, match="unknown launcher 'no-such-zoo-model'"):
                await manager.set_num_replicas("broken", "1", 1, wait_s=120)
            [replica] = await manager.describe("broken", "1")
            assert replica["state"] == "failed" and "no-such-zoo-model" in replica["error"]
            restarts = replica["restarts"]
            await asyncio.sleep(1.0)
            assert (await manager.describe("broken", "1"))[0]["restarts"] == restarts  # no more restarts
        finally:
            stop.set()
            await loop_task
            await manager.shutdown()

    asyncio.run(scenario())


@TWO_CORES
@pytest.mark.slow
def test_scale_up_from_one_to_two_time_until_the_new_replica_serves(store, process_backend, frontend_process):
    add_noop(store)
    manager = make_manager(store, process_backend, frontend_process)

    async def scenario():
        await manager.set_num_replicas("noop", "1", 1, model_cpus=CPUS[:2], wait_s=READY_S)
        start = time.monotonic()
        replicas = await manager.set_num_replicas("noop", "1", 2, model_cpus=CPUS[:2], wait_s=READY_S)
        elapsed = time.monotonic() - start
        assert len(replicas) == 2 and all(r["state"] in ("ready", "busy") for r in replicas)
        print(f"\nscale-up 1 -> 2 noop replicas: new replica serving after {elapsed:.2f}s")
        await manager.shutdown()

    asyncio.run(scenario())


def _is_zombie(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


@pytest.mark.slow
def test_new_manager_takes_over_replicas_recorded_by_a_dead_one(store, frontend_process, tmp_path):
    add_noop(store)
    first_backend = LocalProcessBackend(log_dir=tmp_path / "first")
    second_backend = LocalProcessBackend(log_dir=tmp_path / "second")
    try:
        async def scenario():
            first = make_manager(store, first_backend, frontend_process)
            [old] = await first.set_num_replicas("noop", "1", 1, model_cpus=CPUS[-1:], wait_s=READY_S)
            # The first manager dies without stopping anything; a second one starts on the same Redis.
            await first.close()
            second = make_manager(store, second_backend, frontend_process)
            stop = asyncio.Event()
            loop_task = asyncio.create_task(second.run(stop))
            try:
                def restarted():
                    return [r.replica_id for r in second_backend.list() if r.alive] == [old["replica_id"]]

                await wait_for_async(restarted, 30, "the second manager to restart the replica")
                assert not Path(f"/proc/{old['pid']}").exists() or _is_zombie(old["pid"])
                await second.wait_ready("noop", "1", READY_S)
                [now] = await second.describe("noop", "1")
                assert now["cpus"] == old["cpus"] and now["pid"] != old["pid"]
                assert cpus_allowed(now["pid"]) == str(old["cpus"][0])
            finally:
                stop.set()
                await loop_task
                await second.shutdown()

        asyncio.run(scenario())
    finally:
        for b in (first_backend, second_backend):
            for r in b.list():
                b.stop(r.replica_id, timeout_s=5.0)

