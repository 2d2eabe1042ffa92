"""Several frontends, one deployment: the frontend directory in Redis, replicas serving every frontend."""

from __future__ import annotations

import time

import numpy as np
import pytest
from frontend_support import FrontendThread, start_replica
from polling import wait_for
from frontend_support import procs  # noqa: F401 - fixture

from frontend.client import Client
from management.embedded_redis import connect
from management.store import FrontendDirectory
from schooner.types import AppSpec, ModelSpec

APPS = [AppSpec("a1", "floats", latency_slo_micros=5_000_000), AppSpec("a2", "floats",
                                                                     latency_slo_micros=5_000_000)]
MODELS = [ModelSpec("noop", "1", "floats", batch_size=4)]
LINKS = {"a1": ["noop"], "a2": ["noop"]}


@pytest.fixture
def two_frontends():
    """Two Frontends that know each other as peers (what the announcer does from Redis)."""
    fronts = [FrontendThread().start(), FrontendThread().start()]
    try:
        peers = [f.replica_address for f in fronts]
        for f in fronts:
            f.deploy(APPS, MODELS, LINKS)
            f.call(f.fe.set_peers, peers, f.replica_address)
        yield fronts
    finally:
        for f in fronts:
            f.stop()


def test_replica_given_one_frontend_serves_every_frontend_it_is_told_of(two_frontends, procs):
    first, second = two_frontends
    procs.append(start_replica(first.replica_address, "noop", replica_id="shared"))
    first.wait_ready(1)
    second.wait_ready(1)  # learnt from the first frontend's WELCOME
    x = np.ones(4, dtype=np.float32)
    for f in two_frontends:
        with Client(f.client_address, timeout_s=30) as client:
            for app in ("a1", "a2"):
                results = client.predict_many(app, [x] * 20, concurrency=8)
                assert all(not isinstance(r, Exception) and not r.default for r in results), results


def test_replica_keeps_serving_when_a_frontend_goes_away(two_frontends, procs):
    first, second = two_frontends
    procs.append(start_replica(second.replica_address, "noop", replica_id="shared"))
    first.wait_ready(1)
    second.wait_ready(1)
    second.stop()
    for _ in range(3):  # past the silence after which the replica registers again: it must not stall
        with Client(first.client_address, timeout_s=30) as client:
            assert not client.predict("a1", np.ones(4, dtype=np.float32)).default
        time.sleep(0.5)


def test_frontend_directory_lists_live_frontends_and_forgets_expired_ones(redis_url):
    client = connect(redis_url)
    try:
        directory = FrontendDirectory(client)
        directory.announce({"frontend_id": "f1", "client": "tcp://h:1", "http": "http://h:2",
                            "replica": "tcp://h:3", "pid": 7}, ttl_s=30)
        directory.announce({"frontend_id": "f2", "client": "tcp://h:4", "http": "http://h:5",
                            "replica": "tcp://h:6"}, ttl_s=0.3)
        assert [r["frontend_id"] for r in directory.live()] == ["f1", "f2"]
        assert directory.live()[0]["pid"] == 7
        assert directory.addresses("http") == ["http://h:2", "http://h:5"]
        wait_for(lambda: [r["frontend_id"] for r in directory.live()] == ["f1"], 10, "f2's record to expire")
        directory.withdraw("f1")
        assert directory.live() == []
        with pytest.raises(ValueError):
            directory.addresses("grpc")
    finally:
        client.close()


def test_haproxy_configuration_follows_the_frontend_directory(redis_url, tmp_path):
    from management import haproxy

    client = connect(redis_url)
    try:
        directory = FrontendDirectory(client)
        out = str(tmp_path / "haproxy.cfg")
        config = haproxy.BalancerConfig(bind="127.0.0.1:9")
        assert haproxy.sync(directory, out, config)
        assert "every request gets 503" in open(out).read()
        directory.announce({"frontend_id": "f:1", "http": "http://10.0.0.1:1337", "client": "tcp://10.0.0.1:4455",
                            "replica": "tcp://10.0.0.1:7000"}, ttl_s=30)
        assert haproxy.sync(directory, out, config)
        assert not haproxy.sync(directory, out, config)  # unchanged: not rewritten, HAProxy not reloaded
        text = open(out).read()
        assert "server f_1 10.0.0.1:1337 check" in text and "bind 127.0.0.1:9" in text
        directory.announce({"frontend_id": "f2", "http": "https://10.0.0.2:1337"}, ttl_s=30)
        haproxy.sync(directory, out, haproxy.BalancerConfig(bind="127.0.0.1:9", ca_file="/etc/ca.pem"))
        assert "server f2 10.0.0.2:1337 check" in open(out).read()
        assert "ssl verify required ca-file /etc/ca.pem" in open(out).read()
        with pytest.raises(ValueError):
            haproxy.BalancerConfig(bind="nowhere")
    finally:
        client.close()


def test_two_names_for_one_frontend_make_one_link(two_frontends, procs):
    first, second = two_frontends
    port = first.replica_address.rsplit(":", 1)[1]
    procs.append(start_replica(f"{first.replica_address},tcp://localhost:{port}", "noop", replica_id="dup"))

    def live_entries() -> int:
        return sum(1 for r in first.call(first.fe.replicas)
                   if r.replica_id == "dup" and r.state.value in ("ready", "busy"))
    # Both names register at first; the replica then closes the second link to the same frontend.
    wait_for(lambda: live_entries() == 1, 60, "one live entry for the replica")
    second.wait_ready(1)
    time.sleep(1.5)
    assert live_entries() == 1
    with Client(first.client_address, timeout_s=30) as client:
        results = client.predict_many("a1", [np.ones(4, dtype=np.float32)] * 20, concurrency=4)
    assert all(not isinstance(r, Exception) and not r.default for r in results)


def test_manager_view_reads_another_frontend_when_its_own_is_down(two_frontends, procs):
    import asyncio

    from management.embedded_redis import free_port
    from management.frontend_client import FrontendView

    first, second = two_frontends
    procs.append(start_replica(first.replica_address, "noop", replica_id="seen"))
    second.wait_ready(1)
    down = f"http://127.0.0.1:{free_port()}"  # nobody listens here

    async def read() -> dict:
        view = FrontendView(down, 5.0, others=lambda: [down, second.http_url])
        try:
            return await view.rows()
        finally:
            await view.close()
    assert "seen" in asyncio.run(read())


def test_async_client_with_a_dead_address_is_served_by_the_live_one(two_frontends, procs):
    import asyncio

    from frontend.client import AsyncClient
    from management.embedded_redis import free_port

    first, _ = two_frontends
    procs.append(start_replica(first.replica_address, "noop", replica_id="async"))
    first.wait_ready(1)

    async def run() -> list:
        async with AsyncClient([f"tcp://127.0.0.1:{free_port()}", first.client_address], timeout_s=30) as client:
            return await client.predict_many("a1", [np.ones(4, dtype=np.float32)] * 20, concurrency=4)
    results = asyncio.run(run())
    assert all(not isinstance(r, Exception) and not r.default for r in results), results


def test_frontend_that_joins_later_is_picked_up_by_a_running_replica(procs):
    fronts = [FrontendThread().start(), FrontendThread().start()]
    try:
        first, second = fronts
        for f in fronts:
            f.deploy(APPS, MODELS, LINKS)
        first.call(first.fe.set_peers, [first.replica_address], first.replica_address)
        procs.append(start_replica(first.replica_address, "noop", replica_id="late"))
        first.wait_ready(1)
        assert second.replica_states() == {}
        peers = [f.replica_address for f in fronts]  # the second frontend announces itself
        for f in fronts:
            f.call(f.fe.set_peers, peers, f.replica_address)
        second.wait_ready(1)  # told by the first frontend's next heartbeat
        with Client(second.client_address, timeout_s=30) as client:
            assert not client.predict("a2", np.ones(4, dtype=np.float32)).default
    finally:
        for f in fronts:
            f.stop()
