"""Fixtures for tests that need a real Redis: an embedded redis-server per module, a clean Store per test.

Import them into a test module: ``from conftest_redis import redis_server, store  # noqa: F401``.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from management.embedded_redis import EmbeddedRedis, connect
from management.store import Store


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real redis-server on a free loopback port, stopped after the module."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(redis_server: EmbeddedRedis) -> Iterator[Store]:
    """A Store on an emptied database."""
    client = connect(redis_server.url)
    client.flushdb()
    try:
        yield Store(client)
    finally:
        client.close()
