"""The follower keeps a frontend's deployment in step with a real Redis, through outages."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable

import pytest
import zmq.asyncio

from frontend.config import FrontendConfig
from frontend.server import Frontend
from schooner.types import AppSpec, DeploymentState, ModelSpec
from management.embedded_redis import PASSWORD_FILE, EmbeddedRedis, connect, free_port, load_or_create_password
from frontend.follower import follow
from management.store import Store

WAIT_S = 30.0  # generous: a loaded 2-core machine


class Recorder:
    """A sink that keeps every state it is given."""

    def __init__(self, fail_first: int = 0) -> None:
        self.states: list[DeploymentState] = []
        self.fail_first = fail_first
        self.calls = 0

    def apply_state(self, state: DeploymentState) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise ValueError("refused on purpose")
        self.states.append(state)

    @property
    def apps(self) -> set[str]:
        return set(self.states[-1].apps) if self.states else set()


async def _eventually(check: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def _following(sink: Any, url: str, body: Callable[[], Awaitable[None]], retry_s: float = 0.2) -> None:
    """Run ``body`` while a follower drives ``sink``; the follower must stop promptly afterwards."""
    stop = asyncio.Event()
    task = asyncio.create_task(follow(sink, url, stop, retry_s=retry_s))
    try:
        await body()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def _run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


def test_initial_state_is_applied_then_every_change(store: Store, redis_server: EmbeddedRedis) -> None:
    store.add_app(AppSpec("before", "floats"))
    store.add_model(ModelSpec("m", "1", "floats"))
    sink = Recorder()

    async def body() -> None:
        await _eventually(lambda: sink.states)
        assert sink.apps == {"before"} and ("m", "1") in sink.states[0].models
        await asyncio.to_thread(store.add_links, "before", ["m"])
        await _eventually(lambda: sink.states[-1].links.get("before") == ["m"])
        await asyncio.to_thread(store.add_model, ModelSpec("m", "2", "floats"))
        await asyncio.to_thread(store.set_current_version, "m", "2")
        await _eventually(lambda: sink.states[-1].current_versions == {"m": "2"})

    _run(_following(sink, redis_server.url, body))


def test_a_burst_of_changes_is_applied_in_few_reloads(store: Store, redis_server: EmbeddedRedis) -> None:
    sink = Recorder()

    async def body() -> None:
        await _eventually(lambda: sink.states)
        applied_before = len(sink.states)

        def burst() -> None:
            for i in range(60):
                store.add_app(AppSpec(f"app{i}", "floats"))

        await asyncio.to_thread(burst)
        await _eventually(lambda: len(sink.apps) == 60)
        assert len(sink.states) - applied_before <= 40  # one reload per write would be 60

    _run(_following(sink, redis_server.url, body))


def test_replica_record_writes_do_not_reapply_the_deployment(store: Store,
                                                             redis_server: EmbeddedRedis) -> None:
    sink = Recorder()

    async def body() -> None:
        await _eventually(lambda: sink.states)
        for i in range(10):
            await asyncio.to_thread(store.replicas.put, {"model_name": "m", "model_version": "1",
                                                        "replica_id": f"r{i}", "last_heartbeat": i})
        await asyncio.to_thread(store.replicas.set_desired, "m", "1", {"num_replicas": 10})
        await asyncio.to_thread(store.add_app, AppSpec("marker", "floats"))
        await _eventually(lambda: "marker" in sink.apps)
        assert len(sink.states) == 2  # initial load + the app, nothing for the replica writes

    _run(_following(sink, redis_server.url, body))


def test_malformed_events_are_ignored_and_unknown_kinds_reload(store: Store,
                                                               redis_server: EmbeddedRedis) -> None:
    sink = Recorder()

    async def body() -> None:
        await _eventually(lambda: sink.states)
        client = store.client
        await asyncio.to_thread(client.publish, store.events_channel, "{not json")
        await asyncio.to_thread(client.hset, "unrelated", "x", "1")
        await asyncio.to_thread(client.publish, store.events_channel, json.dumps({"kind": "from_the_future"}))
        await _eventually(lambda: len(sink.states) == 2)
        await asyncio.to_thread(store.add_app, AppSpec("still-following", "floats"))
        await _eventually(lambda: "still-following" in sink.apps)

    _run(_following(sink, redis_server.url, body))


def test_a_rejected_state_does_not_stop_the_follower(store: Store,
                                                     redis_server: EmbeddedRedis) -> None:
    sink = Recorder(fail_first=1)

    async def body() -> None:
        await _eventually(lambda: sink.calls >= 1)
        await asyncio.to_thread(store.add_app, AppSpec("second", "floats"))
        await _eventually(lambda: "second" in sink.apps)

    _run(_following(sink, redis_server.url, body))


def test_frontend_serves_its_last_state_while_redis_is_down_and_resyncs_after_restart(tmp_path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()

    async def scenario() -> None:
        ctx = zmq.asyncio.Context()
        fe = Frontend(FrontendConfig(client_port=0, replica_port=0, http_port=None), ctx=ctx)
        await fe.start()
        try:
            store = Store(connect(server.url))
            store.add_app(AppSpec("kept", "floats"))
            store.add_model(ModelSpec("m", "1", "floats"))
            store.add_links("kept", ["m"])
            store.client.close()

            async def body() -> None:
                await _eventually(lambda: fe.state.links.get("kept") == ["m"])
                await asyncio.to_thread(server.stop)
                await asyncio.sleep(1.0)  # the follower notices and retries meanwhile
                assert set(fe.state.apps) == {"kept"} and fe.state.links == {"kept": ["m"]}
                await asyncio.to_thread(server.start)  # same port, same data directory
                again = Store(connect(server.url))
                await asyncio.to_thread(again.add_app, AppSpec("after-restart", "floats"))
                await asyncio.to_thread(again.set_current_version, "m", "1")
                await _eventually(lambda: "after-restart" in fe.state.apps)
                assert "kept" in fe.state.apps and fe.state.current_versions == {"m": "1"}
                again.client.close()

            await _following(fe, server.url, body)
        finally:
            await fe.stop()
            ctx.term()

    try:
        _run(scenario())
    finally:
        server.stop()


def test_follower_started_before_redis_syncs_once_redis_appears(tmp_path) -> None:
    port = free_port()
    (tmp_path / "redis").mkdir()
    password = load_or_create_password(tmp_path / "redis" / PASSWORD_FILE)  # the one it will start with
    server = EmbeddedRedis(tmp_path / "redis", port=port)
    sink = Recorder()

    async def body() -> None:
        await asyncio.sleep(0.6)
        assert sink.states == []
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(lambda: Store(connect(server.url)).add_app(AppSpec("late", "floats")))
        await _eventually(lambda: "late" in sink.apps)

    try:
        _run(_following(sink, f"redis://:{password}@127.0.0.1:{port}/0", body))
    finally:
        server.stop()


def test_follower_stops_promptly_while_redis_is_down() -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(follow(Recorder(), f"redis://127.0.0.1:{free_port()}/0", stop, retry_s=5.0))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 10)
        assert time.monotonic() - started < 5.0

    _run(scenario())


@pytest.mark.parametrize("sink, url, retry_s, error", [
    (object(), "redis://127.0.0.1:1/0", 0.5, TypeError),
    (Recorder(), "", 0.5, ValueError),
    (Recorder(), "redis://127.0.0.1:1/0", 0.0, ValueError),
])
def test_follow_validates_its_arguments(sink: Any, url: str, retry_s: float, error: type) -> None:
    with pytest.raises(error):
        asyncio.run(follow(sink, url, asyncio.Event(), retry_s=retry_s))
