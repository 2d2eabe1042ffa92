"""CurveZMQ replica links against a real frontend and real replica processes.

Only a replica holding a key the manager registered gets batches; a key speaks
only for the replica it was issued to (spoofed BYE/HELLO change nothing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
from frontend_support import ROOT, FrontendThread, stop_process, wait_for

from frontend.client import Client
from schooner import curve, protocol
from schooner.curve import KeyPair
from schooner.protocol import MsgType
from schooner.types import AppSpec, ModelSpec


def _replica(address: str, rid: str, key_file: str, server_key: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT, **{curve.ENV_SECRET_FILE: key_file, curve.ENV_SERVER_KEY: server_key})
    cmd = [sys.executable, "-m", "containers.replica", "--model", "noop", "--frontend", address, "--cpus", "0",
           "--replica-id", rid, "--input-type", "floats", "--heartbeat-interval-s", "0.2",
           "--frontend-timeout-s", "1", "--log-level", "WARNING"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    server = curve.load_or_create(root / "frontend.key_secret")
    pairs = {rid: KeyPair.generate() for rid in ("r1", "r2", "late")}
    files = {rid: str(curve.write_key_file(root / f"{rid}.key_secret", p)) for rid, p in pairs.items()}
    return {"server": server, "server_file": str(root / "frontend.key_secret"), "pairs": pairs, "files": files}


@pytest.fixture(scope="module")
def frontend(keys):
    ft = FrontendThread(curve_secret_file=keys["server_file"]).start()
    ft.deploy([AppSpec("app", "floats", latency_slo_micros=20_000_000)],
              [ModelSpec("noop", "1", "floats", batch_size=4)], {"app": ["noop"]})
    for rid in ("r1", "r2"):
        ft.call(ft.fe.auth.add_replica_key, keys["pairs"][rid].public, rid)
    procs = [_replica(ft.replica_address, rid, keys["files"][rid], keys["server"].public) for rid in ("r1", "r2")]
    ft.wait_ready(2)
    yield ft
    for proc in procs:
        stop_process(proc)
    ft.stop()


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _dealer(ctx: zmq.Context, address: str, pair: KeyPair | None = None, server_key: str = "") -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if pair is not None:
        curve.client_socket(sock, pair, server_key)
    sock.connect(address)
    return sock


def _hello(rid: str) -> list:
    return protocol.pack(protocol.header(MsgType.HELLO, replica_id=rid, model="noop", version="1",
                                         input_type="floats", input_shape=None, pid=0, pidns="", host="h",
                                         cpus=[0], gpu=None))


def _serve_queries(frontend, n: int = 40) -> None:
    with Client(frontend.client_address, timeout_s=30) as client:
        for i in range(n):
            out = client.predict("app", np.full(4, i, dtype=np.float32))
            assert not out.default and float(out.output[0]) == i


def test_registered_replicas_serve_over_curve(frontend):
    _serve_queries(frontend)
    assert frontend.replica_states() == {"r1": "ready", "r2": "ready"}


@pytest.mark.parametrize("kind", ["plain", "unregistered key"])
def test_fake_replica_without_a_registered_key_gets_no_batch(frontend, keys, ctx, kind):
    pair = KeyPair.generate() if kind != "plain" else None
    fake = _dealer(ctx, frontend.replica_address, pair, keys["server"].public)
    fake.send_multipart(_hello("evil"))
    _serve_queries(frontend)
    assert not fake.poll(500), "the fake replica was answered"
    assert "evil" not in frontend.replica_states()


def test_spoofed_bye_and_hello_for_another_replica_change_nothing(frontend, keys, ctx):
    # r2's own key, used to speak for r1: refused, r1 stays ready and keeps its batches.
    sock = _dealer(ctx, frontend.replica_address, keys["pairs"]["r2"], keys["server"].public)
    sock.send_multipart(protocol.bye("r1"))
    sock.send_multipart(_hello("r1"))
    hdr, _ = protocol.unpack(sock.recv_multipart())
    assert hdr["type"] == MsgType.ERROR.value and "may not speak for" in hdr["message"], hdr
    time.sleep(0.3)
    assert frontend.replica_states() == {"r1": "ready", "r2": "ready"}
    _serve_queries(frontend)


def test_replica_whose_key_is_registered_late_connects_again(frontend, keys):
    proc = _replica(frontend.replica_address, "late", keys["files"]["late"], keys["server"].public)
    try:
        time.sleep(1.0)
        assert "late" not in frontend.replica_states()
        frontend.call(frontend.fe.auth.add_replica_key, keys["pairs"]["late"].public, "late")
        wait_for(lambda: frontend.replica_states().get("late") == "ready", 30, "the late replica registered")
    finally:
        stop_process(proc)


def test_key_file_readable_by_others_is_refused(tmp_path):
    path = curve.write_key_file(tmp_path / "k", KeyPair.generate())
    os.chmod(path, 0o644)
    with pytest.raises(curve.CurveError, match="0600"):
        curve.read_key_file(path)
    os.chmod(path, 0o600)
    assert curve.read_key_file(path).public


def test_secret_in_env_is_removed_once_read():
    pair = KeyPair.generate()
    env = {curve.ENV_SECRET_KEY: pair.secret}
    assert curve.pair_from_env(env) == pair and curve.ENV_SECRET_KEY not in env
    assert "secret" not in repr(pair) or pair.secret not in repr(pair)


def test_client_port_curve_and_https(tmp_path, keys):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    ft = FrontendThread(curve_secret_file=keys["server_file"], client_curve=True, tls_cert_file=str(cert),
                        tls_key_file=str(key)).start()
    try:
        ft.deploy([AppSpec("app", "floats")], [ModelSpec("noop", "1", "floats")], {"app": ["noop"]})
        assert ft.http_url.startswith("https://")
        import requests
        resp = requests.get(f"{ft.http_url}/health", verify=str(cert), timeout=10)
        assert resp.status_code == 200
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(ft.http_url.replace("https", "http") + "/health", timeout=5)
        # With the frontend's key the client is answered (no_model: no replica, a real answer);
        # a plain client is not heard at all.
        from schooner.errors import NoModel, QueryTimeout
        ft.deploy([AppSpec("app", "floats")], [], {})
        with Client(ft.client_address, timeout_s=10, server_key=keys["server"].public) as client:
            with pytest.raises(NoModel):
                client.predict("app", np.ones(4, dtype=np.float32))
        with Client(ft.client_address, timeout_s=1) as plain:
            with pytest.raises(QueryTimeout):
                plain.predict("app", np.ones(4, dtype=np.float32))
    finally:
        ft.stop()
