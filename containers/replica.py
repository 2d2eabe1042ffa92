"""The replica runtime: serve one model to the query frontend over ZeroMQ.

``python -m containers.replica --model noop --frontend tcp://127.0.0.1:7000 --cpus 0,1``
(every flag also ``SCHOONER_<FLAG>``). The process pins itself, loads the model,
connects a DEALER to the frontend's replica port, says HELLO and then answers
each PREDICT with one ``model.predict(inputs)`` call: RESULT, or ERROR
``model_error`` for the whole batch when the model raises.

Threads: the main thread owns the socket and never blocks on the model; batches
run one at a time on a worker thread, which wakes the main thread through a
socketpair when a batch is done. So heartbeats keep flowing while a batch runs.

Registration: HELLO is sent again every heartbeat interval until the frontend
answers (WELCOME, or any HEARTBEAT/PREDICT), and again whenever the frontend
has been silent for ``frontend_timeout_s`` or sends an ERROR without a batch id
(e.g. after a frontend restart it does not know this replica).

Drain: :meth:`Replica.stop` (SIGTERM/SIGINT) sends BYE, finishes every batch it
already got (including one the frontend sent before it read the BYE), sends
their RESULTs and returns 0.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from containers import pinning
from containers.errors import ContainerError
from containers.models import load_model
from containers.models.base import Model
from frontend import defaults, protocol
from frontend.errors import ProtocolError
from frontend.protocol import ErrorCode, MsgType
from frontend.types import InputType

log = logging.getLogger(__name__)

DRAIN_GRACE_S = 0.2  # after BYE, wait this long for a PREDICT the frontend sent before reading it
LINGER_MS = 2000


@dataclass
class ReplicaConfig:
    """Everything a replica is told at start."""

    model: str
    frontend: str = f"tcp://{defaults.HOST}:{defaults.REPLICA_PORT}"
    cpus: list[int] | None = None  # None: not pinned, all allowed cpus
    gpu: int | None = None
    name: str = ""  # model name announced to the frontend; "" = model
    version: str = "1"
    replica_id: str = ""  # "" = a fresh uuid
    model_path: str = ""
    model_opts: dict = field(default_factory=dict)
    input_type: InputType | None = None  # None = the model's own
    heartbeat_interval_s: float = defaults.HEARTBEAT_INTERVAL_S
    frontend_timeout_s: float = defaults.HEARTBEAT_TIMEOUT_S  # silence after which HELLO is sent again

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a zoo model name")
        self.name = self.name or self.model
        self.version = str(self.version)
        self.replica_id = self.replica_id or uuid.uuid4().hex
        if self.input_type is not None:
            self.input_type = InputType.parse(self.input_type)
        if not isinstance(self.model_opts, dict):
            raise ValueError("model_opts must be a JSON object")
        if self.heartbeat_interval_s <= 0:
            raise ValueError("heartbeat_interval_s must be > 0")
        if self.frontend_timeout_s <= 0:
            raise ValueError("frontend_timeout_s must be > 0")


class Replica:
    """Serves ``model`` to the frontend named in ``config`` until :meth:`stop`."""

    def __init__(self, config: ReplicaConfig, model: Model, ctx: zmq.Context, cpus: list[int],
                 num_threads: int | None = None) -> None:
        self.config = config
        self.num_threads = num_threads  # thread cap for the predict thread; None leaves it alone
        self.model = model
        self.cpus = cpus
        self.input_type = config.input_type or getattr(model, "input_type", None) or InputType.FLOATS
        self._ctx = ctx
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._interval_s = config.heartbeat_interval_s
        self._timeout_s = config.frontend_timeout_s
        self.batches_done = 0

    def stop(self) -> None:
        """Begin draining (thread- and signal-safe)."""
        self._stop.set()
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending

    def run(self) -> int:
        """Serve until stopped and drained; returns the exit status (0)."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.connect(self.config.frontend)
        # Some thread-count settings (OpenMP's) are per thread, so the predict thread sets its own.
        worker = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="predict",
            initializer=pinning.limit_threads if self.num_threads else None,
            initargs=(self.num_threads,) if self.num_threads else ())
        try:
            self._serve(sock, worker)
        finally:
            worker.shutdown(wait=True)
            sock.close(linger=LINGER_MS)
            self._wake_r.close()
            self._wake_w.close()
        log.info("replica %s stopped after %d batches", self.config.replica_id, self.batches_done)
        return 0

    def _serve(self, sock: zmq.Socket, worker: concurrent.futures.ThreadPoolExecutor) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        inflight: dict[int, tuple[concurrent.futures.Future, int, float]] = {}
        registered = False
        last_hello = next_heartbeat = -float("inf")
        last_heard = last_activity = time.monotonic()
        bye_sent = False
        while True:
            now = time.monotonic()
            if self._stop.is_set() and not bye_sent:
                self._send(sock, protocol.pack(protocol.header(
                    MsgType.BYE, replica_id=self.config.replica_id, inflight=len(inflight))))
                log.info("draining: BYE sent, %d batch(es) in flight", len(inflight))
                bye_sent, last_activity = True, now
            if bye_sent and not inflight and now - last_activity >= DRAIN_GRACE_S:
                return
            if registered and now - last_heard > self._timeout_s:
                log.warning("frontend silent for %.1f s; registering again", now - last_heard)
                registered = False
            if not registered and not bye_sent and now - last_hello >= self._interval_s:
                self._send(sock, protocol.pack(self._hello()))
                last_hello = now
            if now >= next_heartbeat:
                self._send(sock, protocol.pack(protocol.header(
                    MsgType.HEARTBEAT, replica_id=self.config.replica_id, busy=bool(inflight))))
                next_heartbeat = now + self._interval_s
            wait_s = next_heartbeat - now
            if not registered:
                wait_s = min(wait_s, last_hello + self._interval_s - now)
            if bye_sent:
                wait_s = min(wait_s, DRAIN_GRACE_S)
            events = dict(poller.poll(max(0.0, wait_s) * 1000))
            if sock in events:
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    last_heard = time.monotonic()
                    registered = self._handle(sock, worker, frames, inflight, registered)
            if self._wake_r.fileno() in events:
                self._drain_wake()
            for batch_id in [b for b, (fut, _, _) in inflight.items() if fut.done()]:
                fut, n, started = inflight.pop(batch_id)
                self._send(sock, self._answer(batch_id, fut, n, started))
                self.batches_done += 1
                last_activity = time.monotonic()

    def _handle(self, sock: zmq.Socket, worker: concurrent.futures.ThreadPoolExecutor,
                frames: list, inflight: dict, registered: bool) -> bool:
        """Act on one message; returns whether the frontend now knows this replica."""
        try:
            hdr, payload = protocol.unpack(frames)
        except ProtocolError as err:
            log.warning("malformed message from the frontend: %s", err)
            self._send(sock, protocol.error(ErrorCode.PROTOCOL_ERROR, str(err)))
            return registered
        kind = hdr["type"]
        if kind == MsgType.WELCOME.value:
            self._adopt_settings(hdr)
            log.info("registered with the frontend at %s", self.config.frontend)
            return True
        if kind == MsgType.HEARTBEAT.value:
            return True
        if kind == MsgType.PREDICT.value:
            self._accept_batch(sock, worker, hdr, payload, inflight)
            return True
        if kind == MsgType.ERROR.value:
            if "batch_id" in hdr:
                log.warning("frontend error about batch %s: %s", hdr.get("batch_id"), hdr.get("message"))
                return registered
            log.warning("frontend error %s: %s; registering again", hdr.get("code"), hdr.get("message"))
            return False
        log.warning("ignoring unexpected %s message from the frontend", kind)
        return registered

    def _adopt_settings(self, hdr: dict) -> None:
        interval = hdr.get("heartbeat_interval_s")
        timeout = hdr.get("heartbeat_timeout_s")
        if isinstance(interval, (int, float)) and interval > 0:
            self._interval_s = float(interval)
        if isinstance(timeout, (int, float)) and timeout > 0:
            self._timeout_s = float(timeout)

    def _accept_batch(self, sock: zmq.Socket, worker: concurrent.futures.ThreadPoolExecutor,
                      hdr: dict, payload: list, inflight: dict) -> None:
        batch_id = hdr.get("batch_id")
        if not isinstance(batch_id, int):
            self._send(sock, protocol.error(ErrorCode.PROTOCOL_ERROR, "PREDICT needs an integer batch_id"))
            return
        try:
            inputs = protocol.decode_items(hdr.get("items"), payload)
        except ProtocolError as err:
            self._send(sock, protocol.error(ErrorCode.PROTOCOL_ERROR, str(err), batch_id=batch_id))
            return
        if not inputs:
            self._send(sock, protocol.pack(protocol.header(MsgType.RESULT, batch_id=batch_id,
                                                           items={"list": []})))
            return
        fut = worker.submit(self.model.predict, inputs)
        fut.add_done_callback(lambda _f: self._wake())
        inflight[batch_id] = (fut, len(inputs), time.monotonic())

    def _answer(self, batch_id: int, fut: concurrent.futures.Future, n: int, started: float) -> list:
        """RESULT frames for a finished batch, or ERROR model_error."""
        try:
            outputs = fut.result()
            count = len(outputs)
            if count != n:
                raise ValueError(f"model returned {count} outputs for {n} inputs")
            meta, frames = protocol.encode_items(outputs if isinstance(outputs, np.ndarray) else list(outputs))
        except Exception as err:  # the model's own errors, whatever their type
            log.warning("batch %d failed: %s: %s", batch_id, type(err).__name__, err)
            return protocol.error(ErrorCode.MODEL_ERROR, f"{type(err).__name__}: {err}", batch_id=batch_id)
        predict_s = time.monotonic() - started
        log.debug("batch %d: %d inputs in %.2f ms", batch_id, n, predict_s * 1e3)
        return protocol.pack(protocol.header(MsgType.RESULT, batch_id=batch_id, items=meta,
                                             predict_s=predict_s), frames)

    def _hello(self) -> dict:
        try:
            pidns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pidns = ""
        shape = getattr(self.model, "input_shape", None)
        return protocol.header(
            MsgType.HELLO, replica_id=self.config.replica_id, model=self.config.name,
            version=self.config.version, input_type=InputType.parse(self.input_type).value,
            input_shape=list(shape) if shape is not None else None, pid=os.getpid(), pidns=pidns,
            host=socket.gethostname(), cpus=list(self.cpus), gpu=self.config.gpu)

    def _send(self, sock: zmq.Socket, frames: list) -> None:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.warning("frontend unreachable (send queue full); dropped a %d-frame message", len(frames))

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass


def _parse_args(argv: list[str] | None) -> ReplicaConfig:
    p = argparse.ArgumentParser(prog="schooner-replica", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="zoo model to serve (SCHOONER_MODEL)")
    p.add_argument("--frontend", help="frontend replica address, default tcp://127.0.0.1:7000")
    p.add_argument("--cpus", help="cpus to pin to, e.g. 0,1 or 0-3,6 (default: not pinned)")
    p.add_argument("--gpu", help="gpu index to use (default: none)")
    p.add_argument("--name", help="model name announced to the frontend (default: --model)")
    p.add_argument("--version", help="model version (default 1)")
    p.add_argument("--replica-id", help="replica id (default: a fresh uuid)")
    p.add_argument("--model-path", help="model data path passed to the loader")
    p.add_argument("--model-opts", help="JSON object of loader options, e.g. '{\"a_ms\": 5}'")
    p.add_argument("--input-type", help="input type announced (default: the model's own)")
    p.add_argument("--heartbeat-interval-s", help="seconds between heartbeats (default 1)")
    p.add_argument("--frontend-timeout-s", help="frontend silence before registering again (default 5)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING... (default INFO)")
    args = p.parse_args(argv)

    def opt(flag: str, cast: Any = str) -> Any:
        return defaults.resolve(getattr(args, flag), flag, None, cast)

    try:
        logging.basicConfig(stream=sys.stderr, level=(opt("log_level") or "INFO").upper(),
                            format="%(asctime)s %(levelname)s replica[%(process)d] %(name)s: %(message)s")
        model = opt("model")
        if not model:
            p.error("--model (or SCHOONER_MODEL) is required")
        cpus_spec = opt("cpus")
        gpu = opt("gpu")
        opts = json.loads(opt("model_opts") or "{}")
        return ReplicaConfig(
            model=model,
            frontend=opt("frontend") or ReplicaConfig.frontend,
            cpus=pinning.parse_cpus(cpus_spec) if cpus_spec else None,
            gpu=int(gpu) if gpu not in (None, "", "none") else None,
            name=opt("name") or "",
            version=opt("version") or "1",
            replica_id=opt("replica_id") or "",
            model_path=opt("model_path") or "",
            model_opts=opts,
            input_type=opt("input_type") or None,
            heartbeat_interval_s=float(opt("heartbeat_interval_s") or defaults.HEARTBEAT_INTERVAL_S),
            frontend_timeout_s=float(opt("frontend_timeout_s") or defaults.HEARTBEAT_TIMEOUT_S),
        )
    except (ValueError, json.JSONDecodeError) as err:
        p.error(str(err))
        raise  # p.error exits; this satisfies the type checker


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse flags/env, pin, load the model, serve until SIGTERM/SIGINT."""
    config = _parse_args(argv)
    try:
        cpus = pinning.pin_cpus(config.cpus) if config.cpus else pinning.allowed_cpus()
        device = pinning.select_gpu(config.gpu)
    except ContainerError as err:
        log.error("%s", err)
        return 2
    try:
        model = load_model(config.model, model_path=config.model_path, num_threads=len(cpus),
                           gpu=device, **config.model_opts)
    except (ContainerError, ValueError, OSError) as err:
        log.error("cannot load model %r: %s", config.model, err)
        return 3
    if config.cpus:
        pinning.limit_threads(len(cpus))  # again: the model may have imported torch or a BLAS
    ctx = zmq.Context()
    replica = Replica(config, model, ctx, cpus, num_threads=len(cpus) if config.cpus else None)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: replica.stop())
    log.info("replica %s serving %s:%s (cpus %s, gpu %s) to %s", config.replica_id, config.name,
             config.version, pinning.format_cpus(cpus), config.gpu, config.frontend)
    try:
        return replica.run()
    finally:
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
