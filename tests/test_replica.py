"""Replica runtime: real replica processes against a real ROUTER socket acting as the frontend."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from containers import pinning
from containers.errors import PinningError
from containers.replica import Replica, ReplicaConfig
from schooner import protocol
from schooner.protocol import ErrorCode, MsgType

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 60.0  # generous: a replica start on a loaded 2-core machine
CPUS = sorted(os.sched_getaffinity(0))


class Router:
    """The test's frontend: a ROUTER on a free loopback port."""

    def __init__(self, ctx: zmq.Context, port: int = 0) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if not port:
            port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        else:
            for attempt in range(50):  # a just-closed socket may hold the port for a moment
                try:
                    self.sock.bind(f"tcp://127.0.0.1:{port}")
                    break
                except zmq.ZMQError:
                    if attempt == 49:
                        raise
                    time.sleep(0.1)
        self.address = f"tcp://127.0.0.1:{port}"
        self.ident: bytes | None = None

    def recv(self, timeout_s: float = WAIT_S, skip: tuple[str, ...] = ("heartbeat",)) -> tuple[dict, list]:
        """The next message whose type is not in ``skip``."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(remaining * 1000):
                raise AssertionError(f"no message within {timeout_s} s")
            ident, *frames = self.sock.recv_multipart(copy=False)
            hdr, payload = protocol.unpack(frames)
            if not hdr.get("sideband"):  # answer the data socket, not the heartbeat one
                self.ident = ident.bytes
            if hdr["type"] not in skip:
                return hdr, payload

    def send(self, frames: list) -> None:
        assert self.ident is not None, "no replica has spoken yet"
        self.sock.send_multipart([self.ident, *frames], copy=False)

    def welcome(self, **fields) -> None:
        self.send(protocol.pack(protocol.header(MsgType.WELCOME, **fields)))

    def predict(self, batch_id: int, items) -> None:
        meta, frames = protocol.encode_items(items)
        self.send(protocol.pack(protocol.header(MsgType.PREDICT, batch_id=batch_id, items=meta), frames))


@pytest.fixture
def router():
    ctx = zmq.Context()
    r = Router(ctx)
    yield r
    r.sock.close(linger=0)
    ctx.term()


@pytest.fixture
def spawn():
    procs: list[subprocess.Popen] = []

    def start(*args: str, env: dict | None = None) -> subprocess.Popen:
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        proc = subprocess.Popen([sys.executable, "-m", "containers.replica", *args], cwd=ROOT, env=full_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def start_registered(spawn, router, *args: str) -> tuple[subprocess.Popen, dict]:
    proc = spawn("--frontend", router.address, *args)
    hello, _ = router.recv()
    assert hello["type"] == "hello"
    router.welcome()
    return proc, hello


def test_hello_carries_model_identity_and_pinning(spawn, router):
    cpu = CPUS[-1]
    proc, hello = start_registered(spawn, router, "--model", "noop", "--name", "m1", "--version", "3",
                                   "--replica-id", "r-1", "--cpus", str(cpu), "--input-type", "doubles")
    assert hello["replica_id"] == "r-1"
    assert (hello["model"], hello["version"], hello["input_type"]) == ("m1", "3", "doubles")
    assert hello["pid"] == proc.pid
    assert hello["pidns"] == os.readlink("/proc/self/ns/pid")
    assert hello["cpus"] == [cpu] and hello["gpu"] is None
    assert hello["host"]


def test_process_is_pinned_to_the_requested_cpus(spawn, router):
    cpu = CPUS[-1]
    proc, _ = start_registered(spawn, router, "--model", "noop", "--cpus", str(cpu))
    status = Path(f"/proc/{proc.pid}/status").read_text()
    allowed = next(line.split(":", 1)[1].strip() for line in status.splitlines()
                   if line.startswith("Cpus_allowed_list"))
    assert allowed == str(cpu)
    for tid in os.listdir(f"/proc/{proc.pid}/task"):  # every thread, not just the main one
        assert os.sched_getaffinity(int(tid)) == {cpu}


def test_env_vars_configure_the_replica(spawn, router):
    spawn(env={"SCHOONER_MODEL": "noop", "SCHOONER_FRONTEND": router.address, "SCHOONER_VERSION": "7",
               "SCHOONER_CPUS": str(CPUS[0])})
    hello, _ = router.recv()
    assert (hello["model"], hello["version"], hello["cpus"]) == ("noop", "7", [CPUS[0]])


def test_predict_returns_one_output_per_input_in_order(spawn, router):
    start_registered(spawn, router, "--model", "noop")
    router.predict(11, np.arange(10, dtype=np.float32).reshape(5, 2))
    hdr, payload = router.recv()
    assert hdr["type"] == "result" and hdr["batch_id"] == 11
    outputs = protocol.decode_items(hdr["items"], payload)
    assert [float(o[0]) for o in outputs] == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_result_reports_the_replicas_own_time_on_the_batch(spawn, router):
    start_registered(spawn, router, "--model", "sleep", "--model-opts", '{"a_ms": 30, "b_ms": 10}')
    t0 = time.monotonic()
    router.predict(3, np.zeros((2, 4), dtype=np.float32))
    hdr, _ = router.recv()
    round_trip_us = (time.monotonic() - t0) * 1e6
    assert hdr["type"] == "result" and 50_000 <= hdr["service_us"] <= round_trip_us  # 30 + 10·2 ms


def test_service_time_counts_the_wait_behind_another_frontends_batch(spawn, router):
    # Two frontends send a batch at once; the replica runs one, then the other. The second
    # one's service time holds its wait: what that frontend's batch really cost it.
    ctx = zmq.Context()
    other = Router(ctx)
    try:
        spawn("--frontend", router.address, "--model", "sleep", "--model-opts", '{"a_ms": 200, "b_ms": 0}')
        assert router.recv()[0]["type"] == "hello"
        router.welcome(frontends=[router.address, other.address], frontend=router.address)
        assert other.recv()[0]["type"] == "hello"
        other.welcome(frontends=[router.address, other.address], frontend=other.address)
        time.sleep(0.3)  # both links registered and idle
        router.predict(1, [np.zeros(2, dtype=np.float32)])
        other.predict(2, [np.zeros(2, dtype=np.float32)])
        served = sorted([router.recv()[0]["service_us"], other.recv()[0]["service_us"]])
        assert 190_000 <= served[0] < 300_000 and served[1] >= 380_000, served
    finally:
        ctx.destroy(linger=0)


def test_string_inputs_get_string_outputs(spawn, router):
    start_registered(spawn, router, "--model", "noop", "--input-type", "strings")
    router.predict(1, ["a", "bb", "ccc"])
    hdr, payload = router.recv()
    assert protocol.decode_items(hdr["items"], payload) == ["ok", "ok", "ok"]


def test_model_error_answers_error_and_keeps_serving(spawn, router):
    start_registered(spawn, router, "--model", "noop")
    router.predict(1, [np.array([1.0]), np.array([-999.0])])
    hdr, _ = router.recv()
    assert hdr["type"] == "error" and hdr["batch_id"] == 1
    assert hdr["code"] == ErrorCode.MODEL_ERROR.value and "fault-injection" in hdr["message"]
    router.predict(2, [np.array([4.0])])
    hdr, payload = router.recv()
    assert hdr["type"] == "result" and hdr["batch_id"] == 2
    assert float(protocol.decode_items(hdr["items"], payload)[0][0]) == 4.0


def test_malformed_predict_gets_a_protocol_error_and_replica_keeps_serving(spawn, router):
    start_registered(spawn, router, "--model", "noop")
    router.send(protocol.pack(protocol.header(MsgType.PREDICT, batch_id=5,
                                              items={"stack": ["<f4", [3, 3]]}), [b"short"]))
    hdr, _ = router.recv()
    assert hdr["type"] == "error" and hdr["code"] == "protocol_error" and hdr["batch_id"] == 5
    router.send([b"\xc1 not msgpack"])
    hdr, _ = router.recv()
    assert hdr["type"] == "error" and hdr["code"] == "protocol_error"
    router.predict(6, [np.array([1.0])])
    assert router.recv()[0]["type"] == "result"


def test_heartbeats_keep_arriving_while_a_batch_runs(spawn, router):
    start_registered(spawn, router, "--model", "sleep", "--model-opts", '{"a_ms": 1500, "b_ms": 0}',
                     "--heartbeat-interval-s", "0.1")
    router.predict(1, [np.array([1.0])])
    busy_beats = 0
    while True:
        hdr, _ = router.recv(skip=())
        if hdr["type"] == "result":
            break
        if hdr["type"] == "heartbeat" and hdr.get("sideband"):  # the main thread is in predict
            busy_beats += 1
    assert busy_beats >= 3


def test_sigterm_sends_bye_finishes_the_batch_and_exits_zero(spawn, router):
    proc, _ = start_registered(spawn, router, "--model", "sleep", "--model-opts", '{"a_ms": 1000, "b_ms": 0}')
    router.predict(9, [np.array([3.0]), np.array([4.0])])
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    order = []
    while True:
        hdr, payload = router.recv()
        order.append(hdr["type"])
        if hdr["type"] == "result":
            assert hdr["batch_id"] == 9
            assert [float(o[0]) for o in protocol.decode_items(hdr["items"], payload)] == [3.0, 4.0]
            break
    assert order == ["bye", "result"]
    assert proc.wait(WAIT_S) == 0


def test_idle_replica_exits_zero_on_sigterm_after_bye(spawn, router):
    proc, _ = start_registered(spawn, router, "--model", "noop")
    proc.send_signal(signal.SIGTERM)
    assert router.recv()[0]["type"] == "bye"
    assert proc.wait(WAIT_S) == 0


def test_hello_is_resent_until_the_frontend_answers(spawn, router):
    spawn("--frontend", router.address, "--model", "noop", "--heartbeat-interval-s", "0.1")
    assert router.recv()[0]["type"] == "hello"
    assert router.recv()[0]["type"] == "hello"


def test_registers_again_after_an_unknown_replica_error(spawn, router):
    start_registered(spawn, router, "--model", "noop", "--heartbeat-interval-s", "0.1")
    router.send(protocol.error(ErrorCode.PROTOCOL_ERROR, "unknown replica"))
    assert router.recv()[0]["type"] == "hello"


def test_registers_again_when_the_frontend_goes_silent(spawn, router):
    start_registered(spawn, router, "--model", "noop", "--heartbeat-interval-s", "0.1",
                     "--frontend-timeout-s", "0.5")
    assert router.recv(timeout_s=WAIT_S)[0]["type"] == "hello"


def test_registers_with_a_restarted_frontend_on_the_same_port(spawn):
    ctx = zmq.Context()
    first = Router(ctx)
    try:
        start_registered(spawn, first, "--model", "noop", "--heartbeat-interval-s", "0.1")
        first.sock.close(linger=0)
        second = Router(ctx, port=int(first.address.rsplit(":", 1)[1]))
        # The new frontend does not know the replica: it answers its heartbeats with an error
        # (sideband heartbeats, which a frontend never answers, aside).
        hdr, _ = second.recv(skip=())
        while hdr.get("sideband"):
            hdr, _ = second.recv(skip=())
        if hdr["type"] == "heartbeat":
            second.send(protocol.error(ErrorCode.PROTOCOL_ERROR, "heartbeat from an unregistered replica"))
            hdr, _ = second.recv()
        assert hdr["type"] == "hello"
        second.welcome()
        second.predict(1, [np.array([5.0])])
        assert second.recv()[0]["type"] == "result"
    finally:
        ctx.destroy(linger=0)  # closes whichever routers are still open


def test_bad_cpus_exit_with_a_clear_error(spawn, router):
    proc = spawn("--frontend", router.address, "--model", "noop", "--cpus", "9999")
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 2
    assert "9999" in err and "not available" in err
    proc = spawn("--frontend", router.address, "--model", "noop", "--cpus", "one-two")
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 2 and "one-two" in err


def test_unknown_model_exits_with_the_zoo_names(spawn, router):
    proc = spawn("--frontend", router.address, "--model", "no-such-model")
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 3
    assert "no-such-model" in err and "noop" in err


class _CountingModel:
    """A real in-process model that returns one output too few (a buggy model)."""

    name = "short"
    input_type = "floats"
    input_shape = None

    def predict(self, inputs):
        return np.zeros((len(inputs) - 1, 1), dtype=np.float32)


def test_wrong_number_of_outputs_is_a_model_error(router):
    ctx = zmq.Context()
    replica = Replica(ReplicaConfig(model="short", frontend=router.address), _CountingModel(), ctx, CPUS)
    thread = threading.Thread(target=replica.run, daemon=True)
    thread.start()
    try:
        assert router.recv()[0]["type"] == "hello"
        router.predict(4, [np.array([1.0]), np.array([2.0])])
        hdr, _ = router.recv()
        assert hdr["type"] == "error" and hdr["code"] == "model_error" and hdr["batch_id"] == 4
        assert "1 outputs for 2 inputs" in hdr["message"]
    finally:
        replica.stop()
        thread.join(WAIT_S)
        ctx.term()
    assert not thread.is_alive()


def test_parse_cpus_accepts_lists_and_ranges():
    assert pinning.parse_cpus("0-3,6") == [0, 1, 2, 3, 6]
    assert pinning.parse_cpus("2,1,1") == [1, 2]
    assert pinning.parse_cpus([3, 1]) == [1, 3]
    assert pinning.format_cpus([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    for bad in ("", "a", "3-1", "-1", "1-"):
        with pytest.raises(PinningError):
            pinning.parse_cpus(bad)


def test_validate_cpus_names_the_missing_ones():
    with pytest.raises(PinningError, match="4096"):
        pinning.validate_cpus([CPUS[0], 4096])
    assert pinning.validate_cpus([CPUS[0]]) == [CPUS[0]]


def test_zoo_lists_every_model_and_loads_test_models_by_name():
    from containers.errors import ModelLoadError, UnknownModel
    from containers.models import MODEL_NAMES, load_model

    assert MODEL_NAMES == ("noop", "sleep", "vgg", "inception", "resnet18", "lgbm", "kpca-svm",
                           "kernel-svm", "elastic-net")
    assert load_model("noop", input_type="strings").input_type.value == "strings"
    with pytest.raises(UnknownModel, match="noop"):
        load_model("nope")
    with pytest.raises(ModelLoadError, match="colour"):
        load_model("noop", colour="red")
    with pytest.raises(ValueError, match="a_ms"):
        load_model("sleep", a_ms=-1)


def test_sleep_model_takes_a_plus_b_times_n_and_fault_hook_raises():
    from containers.models import load_model

    model = load_model("sleep", a_ms=20, b_ms=10)
    batch = [np.array([float(i)]) for i in range(5)]
    started = time.monotonic()
    out = model.predict(batch)
    assert time.monotonic() - started >= 0.070  # 20 + 10 * 5 ms, at least
    assert out.shape == (5, 1) and [float(v) for v in out[:, 0]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="fault"):
        model.predict([np.array([1.0]), np.array([-999.0, 2.0])])
    with pytest.raises(ValueError, match="fault"):
        load_model("noop").predict([b"ok", b"raise"])
