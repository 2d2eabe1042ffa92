"""The embedded Redis needs its password, has its dangerous commands disabled, and shows no secret in ps."""

from __future__ import annotations

import os
import stat

import psutil
import pytest
import redis

from management.embedded_redis import DISABLED_COMMANDS, PASSWORD_FILE, EmbeddedRedis
from schooner.urls import redact


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = EmbeddedRedis(tmp_path_factory.mktemp("redis-auth")).start()
    yield srv
    srv.stop()


def test_unauthenticated_commands_are_refused(server):
    plain = redis.Redis(host=server.host, port=server.port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        plain.set("k", "v")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=server.host, port=server.port, password="wrong", socket_timeout=5).ping()


def test_url_carries_the_password(server):
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    assert client.set("k", "v") and client.get("k") == b"v"
    assert server.password not in redact(server.url) and "***" in redact(server.url)


@pytest.mark.parametrize("command", [("CONFIG", "SET", "dir", "/tmp"), ("DEBUG", "SLEEP", "0"),
                                     ("MODULE", "LIST"), ("SAVE",), ("SLAVEOF", "127.0.0.1", "1"), ("ACL", "LIST")])
def test_dangerous_commands_are_disabled_even_with_the_password(server, command):
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    with pytest.raises(redis.ResponseError, match="unknown command"):
        client.execute_command(*command)
    assert command[0] in DISABLED_COMMANDS


def test_password_file_is_private_and_no_secret_is_on_the_command_line(server):
    mode = stat.S_IMODE(os.stat(server.state_dir / PASSWORD_FILE).st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(server.state_dir).st_mode) == 0o700
    cmdline = " ".join(psutil.Process(server.pid).cmdline())
    assert server.password not in cmdline


def test_restart_keeps_the_password(tmp_path):
    with EmbeddedRedis(tmp_path / "r") as first:
        password, port = first.password, first.port
    with EmbeddedRedis(tmp_path / "r", port=port) as second:
        assert second.password == password
        assert redis.Redis.from_url(second.url, socket_timeout=5).ping()
