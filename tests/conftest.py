"""Shared fixtures: a real Redis, a Store on it, and a real frontend process following it.

Every fixture cleans up what it started, even when the test fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from management.embedded_redis import EmbeddedRedis, connect, free_port
from management.store import Store
from management_support import http_ok
from polling import wait_for

ROOT = Path(__file__).resolve().parents[1]
FRONTEND_START_S = 60.0  # interpreter start + imports on a loaded 2-core machine


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real redis-server on a free loopback port, stopped after the module."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The module's Redis, emptied for this test."""
    client = connect(redis_server.url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def store(redis_url: str) -> Iterator[Store]:
    """A Store on an emptied database."""
    client = connect(redis_url)
    try:
        yield Store(client)
    finally:
        client.close()


@pytest.fixture
def frontend_process(redis_url: str, tmp_path: Path) -> Iterator[dict]:
    """A real ``python -m frontend`` process following the test's Redis.

    Yields ``{"http", "rpc", "client", "log"}``: its REST base URL, the replica and
    client ZMQ addresses, and the path of its log.
    """
    ports = {name: free_port() for name in ("client", "replica", "http")}
    log_path = tmp_path / "frontend.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "frontend", "--host", "127.0.0.1", "--client-port", str(ports["client"]),
             "--replica-port", str(ports["replica"]), "--http-port", str(ports["http"]),
             "--redis-url", redis_url, "--heartbeat-interval-s", "0.25", "--heartbeat-timeout-s", "3"],
            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    http = f"http://127.0.0.1:{ports['http']}"
    try:
        wait_for(lambda: http_ok(f"{http}/health"), FRONTEND_START_S, "the frontend to answer /health",
                 alive=proc, why=log_path.read_text)
        yield {"http": http, "rpc": f"tcp://127.0.0.1:{ports['replica']}",
               "client": f"tcp://127.0.0.1:{ports['client']}", "log": log_path}
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
