"""Helpers for the frontend tests: a real Frontend on its own loop thread, real replica processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from typing import Any, Callable

import pytest
import zmq.asyncio

from polling import wait_for

from frontend.config import FrontendConfig
from frontend.server import Frontend
from schooner.types import AppSpec, DeploymentState, ModelSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FrontendThread:
    """A Frontend on free loopback ports, serving from an event loop in a background thread."""

    def __init__(self, **config: Any) -> None:
        config.setdefault("client_port", 0)
        config.setdefault("replica_port", 0)
        config.setdefault("http_port", 0)
        config.setdefault("heartbeat_interval_s", 0.2)
        config.setdefault("heartbeat_timeout_s", 3.0)
        self.config = FrontendConfig(**config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="frontend-loop", daemon=True)
        self.fe: Frontend | None = None
        self.ctx: zmq.asyncio.Context | None = None

    def start(self) -> FrontendThread:
        """Start the loop thread and the frontend on it."""
        self.thread.start()

        async def _start() -> None:
            self.ctx = zmq.asyncio.Context()
            self.fe = Frontend(self.config, ctx=self.ctx)
            await self.fe.start()

        asyncio.run_coroutine_threadsafe(_start(), self.loop).result(30)
        return self

    def call(self, fn: Callable, *args: Any) -> Any:
        """Run ``fn(*args)`` on the loop thread and return its result."""

        async def _call() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(_call(), self.loop).result(30)

    def stop(self) -> None:
        """Stop the frontend and its loop thread."""
        if self.fe is not None:
            asyncio.run_coroutine_threadsafe(self.fe.stop(), self.loop).result(30)
            self.ctx.term()
            self.fe = None
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    @property
    def client_address(self) -> str:
        return self.fe.client_address

    @property
    def replica_address(self) -> str:
        return self.fe.replica_address

    @property
    def http_url(self) -> str:
        return self.fe.http_url

    def deploy(self, apps: list[AppSpec], models: list[ModelSpec], links: dict[str, list[str]]) -> None:
        """Serve exactly these apps, models and links (first version of each model current)."""
        state = DeploymentState(apps={a.name: a for a in apps}, models={m.key: m for m in models},
                                links=links, current_versions={m.name: m.version for m in models})
        self.call(self.fe.apply_state, state)

    def metrics(self) -> dict:
        """The metrics dump, as JSON would carry it."""
        return json.loads(json.dumps(self.call(self.fe.metrics.dump)))

    def replica_states(self) -> dict[str, str]:
        """replica_id -> state."""
        return {r.replica_id: r.state.value for r in self.call(self.fe.replicas)}

    def wait_ready(self, n: int, timeout_s: float = 30.0) -> None:
        """Wait until ``n`` replicas are registered and ready or busy."""
        wait_for(lambda: sum(s in ("ready", "busy") for s in self.replica_states().values()) >= n,
                 timeout_s, f"{n} ready replicas")


def metric(dump: dict, kind: str, name: str) -> dict:
    """The entry named ``name`` in a dump's ``kind`` list (e.g. "histograms")."""
    for entry in dump[kind]:
        if name in entry:
            return entry[name]
    raise KeyError(f"no {kind} entry {name!r}")


def start_replica(address: str, model: str = "noop", name: str | None = None, version: str = "1",
                  cpus: str = "0", opts: dict | None = None, input_type: str = "floats",
                  replica_id: str = "r1", heartbeat_interval_s: float = 0.2,
                  spin_us: int | None = None) -> subprocess.Popen:
    """A real ``python -m containers.replica`` process connected to ``address``."""
    cmd = [sys.executable, "-m", "containers.replica", "--model", model, "--frontend", address,
           "--cpus", cpus, "--name", name or model, "--version", version, "--replica-id", replica_id,
           "--input-type", input_type, "--heartbeat-interval-s", str(heartbeat_interval_s),
           "--log-level", "WARNING"]
    if opts:
        cmd += ["--model-opts", json.dumps(opts)]
    if spin_us is not None:
        cmd += ["--spin-us", str(spin_us)]
    return subprocess.Popen(cmd, cwd=ROOT)


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate (then kill) a process and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def frontend_thread():
    """A real Frontend on free loopback ports, in a background thread of this process; stopped after the test."""
    ft = FrontendThread().start()
    yield ft
    ft.stop()


@pytest.fixture
def procs():
    """Replica processes a test starts; each is stopped after the test."""
    started: list = []
    yield started
    for proc in started:
        stop_process(proc)
