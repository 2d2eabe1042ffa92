"""Fuzz a whole deployment's four ports while legitimate queries run; prints one JSON object.

Starts a Stack (embedded Redis, frontend, management service, one noop
replica, CURVE on the replica links), then sends ``--messages`` malformed or
random messages to each port, interleaved with legitimate ZMQ queries:

- client port: mutated QUERY messages (random header maps, wrong types, bit
  flips, huge declared shapes, random frames) and raw garbage;
- replica port: random ZMTP bytes on raw TCP, and random messages from a DEALER
  that holds no registered key (the CURVE handshake must refuse it);
- HTTP: random methods, paths and bodies (deep JSON, wrong types, huge batches);
- management API: random JSON bodies to every /admin endpoint, with the token.

Reports per port: messages sent, crashes (a child process restarted or gone),
5xx answers, legitimate queries lost (unanswered or wrong) and the longest
event-loop stall seen (the slowest ``/health/live`` answer, polled every 20 ms).

    python bench/fuzz_bench.py [--messages 1000] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import threading
import time
from typing import Any

import msgpack
import numpy as np
import requests
import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from schooner import protocol  # noqa: E402
from schooner.curve import KeyPair, client_socket  # noqa: E402

ADMIN_PATHS = ["add_app", "add_model", "add_model_links", "set_model_version", "get_all_applications",
               "get_application", "get_linked_models", "get_all_models", "get_model", "get_all_containers",
               "get_container", "delete_app", "delete_model_links", "delete_versioned_model", "set_num_replicas",
               "get_model_replicas"]


def _junk(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack/JSON-able value."""
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.randint(-2**63, 2**63 - 1)
    if kind == 1:
        return rng.random() * 10 ** rng.randint(-5, 300)
    if kind == 2:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(20)))
    if kind == 3:
        return None
    if kind == 4:
        return rng.choice([True, False])
    if kind == 5:
        return rng.choice(["<f4", "float32", "|O", "<U4", "x" * rng.randrange(1, 5000), "", "a", "s", "b"])
    if kind == 6:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 7:
        return {str(_junk(rng, depth + 1))[:20]: _junk(rng, depth + 1) for _ in range(rng.randrange(5))}
    return [rng.randrange(0, 10**7) for _ in range(rng.randrange(1, 4))]


def client_message(rng: random.Random, i: int) -> list[bytes]:
    """One malformed client message."""
    base = {"v": 1, "type": "query", "id": -i, "app": "echo",
            "items": {"list": [["a", "<f8", [1]]]}}
    kind = rng.randrange(6)
    frames: list[bytes] = [np.ones(1).tobytes()]
    if kind == 0:
        base[rng.choice(list(base))] = _junk(rng)
    elif kind == 1:
        base["items"] = rng.choice([{"stack": [_junk(rng), _junk(rng)]}, {"list": _junk(rng)}, _junk(rng)])
    elif kind == 2:
        base["items"] = {"stack": ["<f8", [rng.randrange(10**7)] + [rng.randrange(10) for _ in range(rng.randrange(3))]]}
        frames = [b""]
    elif kind == 3:
        frames = [os.urandom(rng.randrange(64)) for _ in range(rng.randrange(4))]
    elif kind == 4:
        raw = bytearray(msgpack.packb(base))
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return [bytes(raw), *frames]
    else:
        return [os.urandom(rng.randrange(1, 200))]
    try:
        return [msgpack.packb(base), *frames]
    except (OverflowError, ValueError, TypeError):
        return [os.urandom(16)]


def http_request(rng: random.Random) -> tuple[str, str, bytes]:
    """(method, path, body) of one odd HTTP request."""
    kind = rng.randrange(6)
    if kind == 0:
        body = json.dumps({"input": _junk(rng)}).encode()
    elif kind == 1:
        body = b'{"input": ' + b"[" * rng.randrange(30, 200_000) + b"]}"
    elif kind == 2:
        body = json.dumps({"input_batch": [[rng.random()] for _ in range(rng.randrange(2000))]}).encode()
    elif kind == 3:
        body = os.urandom(rng.randrange(300))
    elif kind == 4:
        body = json.dumps(_junk(rng)).encode()
    else:
        body = json.dumps({"input": [rng.choice([2**40, -2**40, 1e39, 1.0])]}).encode()
    path = rng.choice(["/echo/predict", "/echo/predict", "/nosuch/predict", "/%00/predict", "/metrics",
                       "/replicas", "/" + "a" * rng.randrange(1, 3000)])
    return rng.choice(["POST", "POST", "GET", "PUT"]), path, body


class StallProbe:
    """Polls a URL every 20 ms on a thread; the slowest answer is the longest stall seen."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst_s = 0.0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with requests.Session() as s:
            while not self._stop.wait(0.02):
                t0 = time.perf_counter()
                try:
                    s.get(self.url, timeout=10)
                except requests.RequestException:
                    self.failures += 1
                self.worst_s = max(self.worst_s, time.perf_counter() - t0)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(15)
        return self.worst_s


class Legit:
    """Legitimate ZMQ queries interleaved with the fuzz; every one must be answered right."""

    def __init__(self, ctx: zmq.Context, address: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.sent: dict[int, float] = {}
        self.answered = 0
        self.wrong = 0
        self._next = 1

    def send(self) -> None:
        qid, value = self._next, float(self._next % 1000)
        self._next += 1
        meta, frames = protocol.encode_items([np.full(1, value)])
        self.sock.send_multipart(protocol.query(qid, "echo", meta, frames))
        self.sent[qid] = value

    def collect(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while self.sent and time.monotonic() < deadline:
            if not self.sock.poll(100):
                continue
            hdr, frames = protocol.unpack(self.sock.recv_multipart())
            value = self.sent.pop(hdr.get("id"), None)
            if value is None:
                continue
            if hdr["type"] != "reply" or float(protocol.decode_items(hdr["items"], frames)[0][0]) != value:
                self.wrong += 1
            else:
                self.answered += 1

    @property
    def lost(self) -> int:
        return len(self.sent) + self.wrong


def _pids(stack: Any) -> dict[str, int]:
    return {"frontend": stack.frontend.pid, "management": stack.management.pid, "redis": stack._redis.pid}


def fuzz(stack: Any, messages: int, seed: int) -> dict:
    """Fuzz every port of a started, deployed ``stack``; the report (see the module docstring)."""
    rng = random.Random(seed)
    ctx = zmq.Context()
    pids = _pids(stack)
    report: dict[str, Any] = {}
    legit = Legit(ctx, stack.client_address)
    token = stack.admin_token
    try:
        # client port
        probe = StallProbe(f"{stack.frontend_http_url}/health/live")
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(stack.client_address)
        for i in range(messages):
            sock.send_multipart(client_message(rng, i + 1))
            if i % 3 == 0:
                legit.send()
            while sock.poll(0):
                sock.recv_multipart()
        legit.collect(30)
        sock.close()
        report["client"] = {"messages": messages, "longest_stall_ms": round(probe.stop() * 1e3, 1)}
        # replica port: raw TCP garbage, and a DEALER with an unregistered key
        probe = StallProbe(f"{stack.frontend_http_url}/health/live")
        host, port = stack.replica_address[len("tcp://"):].rsplit(":", 1)
        stranger = ctx.socket(zmq.DEALER)
        stranger.setsockopt(zmq.LINGER, 0)
        server_key = _frontend_key(stack)
        if server_key:
            client_socket(stranger, KeyPair.generate(), server_key)
        stranger.connect(stack.replica_address)
        stranger_answers = 0
        for i in range(messages):
            if i % 2:
                with socket.create_connection((host, int(port)), timeout=5) as raw:
                    raw.sendall(rng.choice([b"\xff" + os.urandom(rng.randrange(200)), os.urandom(rng.randrange(1, 64)),
                                            b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f\x03" + os.urandom(60)]))
            else:
                hello = protocol.pack(protocol.header(protocol.MsgType.HELLO, replica_id=str(_junk(rng))[:50],
                                                      model="noop", version="1", input_type="doubles",
                                                      input_shape=None, pid=1, pidns="", host="x", cpus=[0],
                                                      gpu=None))
                try:
                    stranger.send_multipart(rng.choice([hello, client_message(rng, i)]), zmq.NOBLOCK)
                except zmq.Again:  # the handshake was refused: nothing is ever connected
                    pass
            if i % 3 == 0:
                legit.send()
            while stranger.poll(0):
                stranger.recv_multipart()
                stranger_answers += 1
        legit.collect(30)
        stranger.close()
        report["replica"] = {"messages": messages, "answers_to_stranger": stranger_answers,
                             "longest_stall_ms": round(probe.stop() * 1e3, 1)}
        # HTTP and management API
        for name, base, paths in (("http", stack.frontend_http_url, None),
                                  ("management", stack.management_url, ADMIN_PATHS)):
            probe = StallProbe(f"{stack.frontend_http_url}/health/live")
            five = 0
            statuses: dict[int, int] = {}
            with requests.Session() as s:
                for i in range(messages):
                    if paths is None:
                        method, path, body = http_request(rng)
                        headers = {"Content-Type": "application/json"}
                    else:
                        method, path = "POST", "/admin/" + rng.choice(paths)
                        body = json.dumps(_junk(rng) if rng.random() < 0.3 else
                                          {k: _junk(rng) for k in rng.sample(
                                              ["name", "app_name", "model_name", "model_version", "input_type",
                                               "num_replicas", "model_names", "default_output",
                                               "latency_slo_micros", "cpus_per_replica", "batch_size"],
                                              rng.randrange(1, 6))}).encode()
                        headers = {"Authorization": f"Bearer {token}"} if token else {}
                    try:
                        resp = s.request(method, base + path, data=body, headers=headers, timeout=30)
                        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                        five += resp.status_code >= 500
                    except requests.RequestException:
                        five += 1
                    if i % 3 == 0:
                        legit.send()
            legit.collect(30)
            report[name] = {"messages": messages, "5xx": five, "statuses": dict(sorted(statuses.items())),
                            "longest_stall_ms": round(probe.stop() * 1e3, 1)}
    finally:
        legit.sock.close()
        ctx.destroy(linger=0)
    after = _pids(stack)
    alive = {"frontend": stack.frontend.poll() is None, "management": stack.management.poll() is None,
             "redis": stack._redis.running()}
    crashes = {k: int(after[k] != pids[k] or not alive[k]) for k in pids}
    report["crashes"] = crashes
    report["legit_queries"] = {"sent": legit.answered + legit.lost, "lost": legit.lost}
    report["longest_stall_ms"] = max(v["longest_stall_ms"] for v in report.values()
                                     if isinstance(v, dict) and "longest_stall_ms" in v)
    return report


def _frontend_key(stack: Any) -> str:
    from management.keys import frontend_key_file  # noqa: PLC0415

    path = frontend_key_file(stack.state_dir)
    if not path.exists():
        return ""
    from schooner.curve import read_key_file  # noqa: PLC0415

    return read_key_file(path).public


def deploy(stack: Any) -> None:
    """The echo app (doubles) on one noop replica."""
    token = stack.admin_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def admin(path: str, body: dict) -> None:
        resp = requests.post(f"{stack.management_url}/admin/{path}", json=body, headers=headers, timeout=120)
        assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text}"

    admin("add_app", {"name": "echo", "input_type": "doubles", "latency_slo_micros": 20_000_000})
    admin("add_model", {"model_name": "noop", "model_version": "1", "input_type": "doubles"})
    admin("add_model_links", {"app_name": "echo", "model_names": ["noop"]})
    admin("set_num_replicas", {"model_name": "noop", "num_replicas": 1, "wait_s": 90})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=1000, help="fuzz messages per port")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    import tempfile  # noqa: PLC0415

    from management.stack import Stack  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(state_dir=tmp).start()
        try:
            deploy(stack)
            t0 = time.monotonic()
            out = fuzz(stack, args.messages, args.seed)
            out["seconds"] = round(time.monotonic() - t0, 1)
            out["seed"] = args.seed
        finally:
            stack.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
