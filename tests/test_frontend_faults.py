"""Deadlines, dead replicas, model errors and misbehaving replicas: every query still gets an answer."""

from __future__ import annotations

import os
import signal
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from frontend_support import FrontendThread, metric, start_replica
from polling import wait_for
from frontend_support import frontend_thread, procs  # noqa: F401 - fixtures

from schooner import protocol
from frontend.client import Client
from schooner.errors import ModelError, ReplicaLost
from schooner.protocol import MsgType
from schooner.types import AppSpec, ModelSpec


def _x(v: float = 1.0) -> np.ndarray:
    return np.full(4, v, dtype=np.float32)


def test_query_past_its_deadline_gets_the_default_output(frontend_thread, procs):
    frontend_thread.deploy([AppSpec("app", "floats", default_output="fallback", latency_slo_micros=100_000)],
                    [ModelSpec("sleep", "1", "floats", batch_size=1)], {"app": ["sleep"]})
    procs.append(start_replica(frontend_thread.replica_address, "sleep", opts={"a_ms": 600, "b_ms": 0}))
    frontend_thread.wait_ready(1)
    with Client(frontend_thread.client_address, timeout_s=30) as client:
        results = client.predict_many("app", [_x(i) for i in range(3)], concurrency=3)
    for r in results:
        assert r.default is True
        assert r.output == "fallback"
        assert "latency objective" in r.default_explanation
    # The first query's output arrives late and is counted; the two left in the queue never ran.
    wait_for(lambda: metric(frontend_thread.metrics(), "counters", "model:sleep:1:late_outputs")["count"] == 1,
             10, "the late output to be counted")
    dump = frontend_thread.metrics()
    assert int(metric(dump, "counters", "model:sleep:1:num_predictions")["count"]) == 1
    assert metric(dump, "ratio_counters", "app:app:default_prediction_ratio")["ratio"] == 1.0


@pytest.mark.slow
def test_killed_replica_batch_is_requeued_to_another_replica(frontend_thread, procs):
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=60_000_000)],
                    [ModelSpec("sleep", "1", "floats", batch_size=4)], {"app": ["sleep"]})
    victim = start_replica(frontend_thread.replica_address, "sleep", replica_id="victim", cpus="0",
                           opts={"a_ms": 2000, "b_ms": 0})
    procs.append(victim)
    frontend_thread.wait_ready(1)
    results: list = []
    with Client(frontend_thread.client_address, timeout_s=60) as client:
        worker = threading.Thread(target=lambda: results.extend(
            client.predict_many("app", [_x(i) for i in range(8)], concurrency=8)))
        worker.start()
        wait_for(lambda: frontend_thread.replica_states().get("victim") == "busy", 20, "the victim to take a batch")
        procs.append(start_replica(frontend_thread.replica_address, "sleep", replica_id="survivor", cpus="1",
                                   opts={"a_ms": 200, "b_ms": 0}))
        wait_for(lambda: frontend_thread.replica_states().get("survivor") in ("ready", "busy"), 20, "the survivor")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        worker.join(60)
    assert len(results) == 8
    assert all(not isinstance(r, Exception) and not r.default for r in results), results
    assert frontend_thread.replica_states()["victim"] == "dead"


def test_model_error_reaches_the_client_and_the_replica_keeps_serving(frontend_thread, procs):
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=20_000_000)],
                    [ModelSpec("noop", "1", "floats", batch_size=1)], {"app": ["noop"]})
    procs.append(start_replica(frontend_thread.replica_address, "noop"))
    frontend_thread.wait_ready(1)
    with Client(frontend_thread.client_address, timeout_s=30) as client:
        with pytest.raises(ModelError):
            client.predict("app", _x(-999.0))
        assert not client.predict("app", _x(1.0)).default
    assert frontend_thread.replica_states()["r1"] == "ready"


def test_draining_replica_finishes_its_batch_and_takes_no_new_one(frontend_thread, procs):
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=4_000_000)],
                    [ModelSpec("sleep", "1", "floats", batch_size=1)], {"app": ["sleep"]})
    proc = start_replica(frontend_thread.replica_address, "sleep", opts={"a_ms": 800, "b_ms": 0})
    procs.append(proc)
    frontend_thread.wait_ready(1)
    results: list = []
    with Client(frontend_thread.client_address, timeout_s=60) as client:
        worker = threading.Thread(target=lambda: results.extend(
            client.predict_many("app", [_x(), _x(), _x()], concurrency=3)))
        worker.start()
        wait_for(lambda: frontend_thread.replica_states().get("r1") == "busy", 20, "the replica to take a batch")
        time.sleep(0.2)  # the other two queries are in: one pipelined behind the running batch, one queued
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        worker.join(60)
    # The batch running and the one already behind it completed; the queued one was never given to the
    # draining replica and expired.
    assert len(results) == 3
    assert sum(1 for r in results if not isinstance(r, Exception) and not r.default) == 2
    wait_for(lambda: frontend_thread.replica_states()["r1"] == "stopped", 10, "the replica to be stopped")


class FakeReplica:
    """A hand-driven DEALER speaking the replica protocol, to misbehave on purpose."""

    def __init__(self, address: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 10_000)
        self.sock.connect(address)

    def send(self, hdr: dict, payload: list | None = None) -> None:
        self.sock.send_multipart(protocol.pack(hdr, payload or []))

    def recv(self, msg_type: str) -> tuple[dict, list]:
        while True:
            hdr, payload = protocol.unpack(self.sock.recv_multipart())
            if hdr["type"] == msg_type:
                return hdr, payload

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def fake_replica(frontend_thread):
    fake = FakeReplica(frontend_thread.replica_address)
    yield fake
    fake.close()


def test_result_with_wrong_item_count_fails_those_queries(frontend_thread, fake_replica):
    frontend_thread.deploy([AppSpec("app", "floats", latency_slo_micros=20_000_000)],
                    [ModelSpec("m", "1", "floats", batch_size=2)], {"app": ["m"]})
    fake_replica.send(protocol.header(MsgType.HELLO, replica_id="fake", model="m", version="1",
                                      input_type="floats", pid=0, cpus=[]))
    fake_replica.recv("welcome")
    with Client(frontend_thread.client_address, timeout_s=30) as client:
        errors: list = []

        def query() -> None:
            try:
                client.predict_batch("app", np.ones((2, 4), dtype=np.float32))
            except Exception as err:  # collected for the assertion below
                errors.append(err)

        worker = threading.Thread(target=query)
        worker.start()
        hdr, payload = fake_replica.recv("predict")
        assert len(protocol.decode_items(hdr["items"], payload)) == 2
        meta, frames = protocol.encode_items(np.zeros((3, 1), dtype=np.float32))
        fake_replica.send(protocol.header(MsgType.RESULT, batch_id=hdr["batch_id"], items=meta), frames)
        worker.join(30)
    assert len(errors) == 1 and isinstance(errors[0], ModelError), errors
    assert "3 outputs for a batch of 2" in str(errors[0])


def test_malformed_replica_message_gets_an_error_and_the_loop_continues(frontend_thread, fake_replica):
    fake_replica.sock.send_multipart([b"\xc1 not msgpack"])
    hdr, _ = fake_replica.recv("error")
    assert hdr["code"] == "protocol_error"
    fake_replica.sock.send_multipart([msgpack.packb({"v": 1, "type": "heartbeat"})])
    hdr, _ = fake_replica.recv("error")
    assert "hello" in hdr["message"]
    fake_replica.send(protocol.header(MsgType.HELLO, replica_id="fake", model="m", version="1",
                                      input_type="floats", pid=0, cpus=[]))
    hdr, _ = fake_replica.recv("welcome")
    assert hdr["heartbeat_interval_s"] == frontend_thread.config.heartbeat_interval_s


def test_batch_whose_replicas_keep_dying_gets_replica_lost():
    ft = FrontendThread(heartbeat_timeout_s=1.0, max_batch_retries=0).start()
    fake = FakeReplica(ft.replica_address)
    try:
        ft.deploy([AppSpec("app", "floats", latency_slo_micros=30_000_000)],
                  [ModelSpec("m", "1", "floats")], {"app": ["m"]})
        fake.send(protocol.header(MsgType.HELLO, replica_id="mute", model="m", version="1",
                                  input_type="floats", pid=0, cpus=[]))
        fake.recv("welcome")
        with Client(ft.client_address, timeout_s=30) as client:
            out: list = []
            worker = threading.Thread(target=lambda: out.extend(client.predict_many("app", [_x()], concurrency=1)))
            worker.start()
            fake.recv("predict")  # take the batch, then fall silent: no heartbeat, no result
            worker.join(30)
        assert len(out) == 1 and isinstance(out[0], ReplicaLost), out
        assert ft.replica_states()["mute"] == "dead"
    finally:
        fake.close()
        ft.stop()


@pytest.mark.slow
def test_replica_stuck_in_predict_is_declared_dead_and_its_batch_retried_elsewhere(procs):
    # The stuck replica's sideband thread keeps heartbeating; only the batch timeout can catch it.
    ft = FrontendThread(batch_timeout_s=1.0).start()
    try:
        ft.deploy([AppSpec("app", "floats", default_output="fallback", latency_slo_micros=20_000_000)],
                  [ModelSpec("sleep", "1", "floats", batch_size=1)], {"app": ["sleep"]})
        stuck = start_replica(ft.replica_address, "sleep", replica_id="stuck", cpus="0",
                              opts={"a_ms": 60_000, "b_ms": 0})
        procs.append(stuck)
        ft.wait_ready(1)
        results: list = []
        with Client(ft.client_address, timeout_s=30) as client:
            worker = threading.Thread(target=lambda: results.extend(
                client.predict_many("app", [_x()], concurrency=1)))
            worker.start()
            wait_for(lambda: ft.replica_states().get("stuck") == "busy", 20, "the stuck replica to take the batch")
            procs.append(start_replica(ft.replica_address, "sleep", replica_id="healthy", cpus="1",
                                       opts={"a_ms": 10, "b_ms": 0}))
            worker.join(30)
        assert len(results) == 1
        assert not isinstance(results[0], Exception) and not results[0].default, results
        # Still dead a few heartbeat intervals later, though its sideband keeps talking.
        assert stuck.poll() is None
        time.sleep(1.0)
        assert ft.replica_states() == {"stuck": "dead", "healthy": "ready"}
        assert metric(ft.metrics(), "counters", "model:sleep:1:batch_timeouts")["count"] == 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        ft.stop()


def test_late_result_after_batch_timeout_is_discarded_until_the_replica_says_hello():
    ft = FrontendThread(batch_timeout_s=0.5).start()
    fake = FakeReplica(ft.replica_address)
    hello = protocol.header(MsgType.HELLO, replica_id="slow", model="m", version="1",
                            input_type="floats", pid=0, cpus=[])
    try:
        ft.deploy([AppSpec("app", "floats", latency_slo_micros=30_000_000)],
                  [ModelSpec("m", "1", "floats", batch_size=1)], {"app": ["m"]})
        fake.send(hello)
        fake.recv("welcome")
        with Client(ft.client_address, timeout_s=30) as client:
            out: list = []
            worker = threading.Thread(target=lambda: out.extend(client.predict_many("app", [_x()], concurrency=1)))
            worker.start()
            hdr, _ = fake.recv("predict")
            wait_for(lambda: ft.replica_states()["slow"] == "dead", 10, "the batch timeout")
            meta, frames = protocol.encode_items(np.zeros((1, 1), dtype=np.float32))
            fake.send(protocol.header(MsgType.RESULT, batch_id=hdr["batch_id"], items=meta), frames)
            fake.send(protocol.header(MsgType.HEARTBEAT, replica_id="slow", busy=False))
            wait_for(lambda: metric(ft.metrics(), "counters", "model:m:1:late_outputs")["count"] == 1,
                     10, "the late output to be counted")
            assert ft.replica_states()["slow"] == "dead" and not out
            # Registering again brings it back, and the requeued query is retried on it.
            fake.send(hello)
            fake.recv("welcome")
            hdr, _ = fake.recv("predict")
            meta, frames = protocol.encode_items(np.ones((1, 1), dtype=np.float32))
            fake.send(protocol.header(MsgType.RESULT, batch_id=hdr["batch_id"], items=meta), frames)
            worker.join(30)
        assert len(out) == 1 and not isinstance(out[0], Exception) and not out[0].default, out
        assert ft.replica_states()["slow"] == "ready"
        assert metric(ft.metrics(), "counters", "model:m:1:batch_timeouts")["count"] == 1
    finally:
        fake.close()
        ft.stop()
