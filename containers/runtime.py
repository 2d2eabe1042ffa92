"""The replica runtime: serve one loaded model to the query frontend over ZeroMQ.

A :class:`Replica` (run by ``python -m containers.replica``, which pins the
process and loads the model first) connects a DEALER to the frontend's replica
port, says HELLO and then answers
each PREDICT with one ``model.predict(inputs)`` call: RESULT, or ERROR
``model_error`` for the whole batch when the model raises.

Threads: the main thread owns the data socket and runs each batch inline, right
where it read the PREDICT (no handoff to another thread: that handoff was most
of a noop round trip). A *sideband* thread with a DEALER socket of its own sends
HEARTBEATs every interval (``sideband: true``, carrying ``replica_id``; the
frontend updates liveness by replica id and never answers them), so heartbeats
keep flowing while a long batch holds the main thread; it also sends BYE at
once on SIGTERM.

Registration: HELLO is sent again every heartbeat interval until the frontend
answers (WELCOME, or any HEARTBEAT/PREDICT), and again whenever the frontend
has been silent for ``frontend_timeout_s`` or sends an ERROR without a batch id
(e.g. after a frontend restart it does not know this replica).

Drain: :meth:`Replica.stop` (SIGTERM/SIGINT) sends BYE (from the sideband thread,
at once even while a batch runs), finishes every batch it
already got (including one the frontend sent before it read the BYE), sends
their RESULTs and returns 0.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import zmq

from containers import pinning
from containers.models.base import Model
from schooner import defaults, protocol
from schooner.errors import ProtocolError
from schooner.protocol import ErrorCode
from schooner.types import InputType

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
    spin_us: int = defaults.REPLICA_SPIN_US  # after a batch, poll without blocking this long (0 = off)

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
        if not isinstance(self.spin_us, int) or self.spin_us < 0:
            raise ValueError(f"spin_us must be an integer >= 0, got {self.spin_us!r}")


class Replica:
    """Serves ``model`` to the frontend named in ``config`` until :meth:`stop`."""

    def __init__(self, config: ReplicaConfig, model: Model, ctx: zmq.Context, cpus: list[int],
                 num_threads: int | None = None) -> None:
        self.config = config
        self.num_threads = num_threads  # thread cap applied on the serving thread; None leaves it alone
        self.model = model
        self.cpus = cpus
        self.input_type = config.input_type or getattr(model, "input_type", None) or InputType.FLOATS
        self._ctx = ctx
        self._stop = threading.Event()
        self._done = threading.Event()  # the serving loop returned: the sideband thread ends
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._interval_s = config.heartbeat_interval_s
        self._timeout_s = config.frontend_timeout_s
        self._busy = False  # a batch is running on the serving thread
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
        if self.num_threads:
            # Some thread-count settings (OpenMP's) are per thread; predict runs on this one.
            pinning.limit_threads(self.num_threads)
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.connect(self.config.frontend)
        sideband = threading.Thread(target=self._sideband, name="sideband", daemon=True)
        sideband.start()
        try:
            self._serve(sock)
        finally:
            self._done.set()
            sideband.join(10)
            sock.close(linger=LINGER_MS)
            self._wake_r.close()
            self._wake_w.close()
        log.info("replica %s stopped after %d batches", self.config.replica_id, self.batches_done)
        return 0

    def _sideband(self) -> None:
        """Heartbeats and BYE on a socket of their own, so they flow while predict holds the main thread."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.SNDHWM, 16)
        sock.connect(self.config.frontend)
        rid = self.config.replica_id
        bye_sent = False
        try:
            while True:
                if self._stop.is_set() and not bye_sent:
                    bye_sent = True
                    self._send(sock, protocol.bye(rid))
                    log.info("draining: BYE sent, %d batch(es) in flight", int(self._busy))
                if self._done.is_set():
                    return
                self._send(sock, protocol.heartbeat(rid, sideband=True))
                while sock.poll(0):  # the frontend never answers sideband messages; discard whatever comes
                    sock.recv_multipart()
                if bye_sent:
                    self._done.wait(self._interval_s)
                else:
                    self._stop.wait(self._interval_s)
        finally:
            sock.close()

    def _serve(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        registered = False
        last_hello = next_heartbeat = -float("inf")
        last_heard = last_activity = time.monotonic()
        draining = False
        recv = sock.recv_multipart
        spin_ns = self.config.spin_us * 1000
        spin_until = 0
        clock_ns = time.monotonic_ns
        yield_cpu = os.sched_yield
        while True:
            now = time.monotonic()
            if self._stop.is_set() and not draining:  # the sideband thread sends BYE
                draining, last_activity = True, now
            if draining and now - last_activity >= DRAIN_GRACE_S:
                return
            if registered and now - last_heard > self._timeout_s:
                log.warning("frontend silent for %.1f s; registering again", now - last_heard)
                registered = False
            if not registered and not draining and now - last_hello >= self._interval_s:
                self._send(sock, self._hello())
                last_hello = now
            if now >= next_heartbeat:
                self._send(sock, protocol.heartbeat(self.config.replica_id))
                next_heartbeat = now + self._interval_s
            wait_s = next_heartbeat - now
            if not registered:
                wait_s = min(wait_s, last_hello + self._interval_s - now)
            if draining:
                wait_s = min(wait_s, DRAIN_GRACE_S)
            events = dict(poller.poll(max(0.0, wait_s) * 1000))
            if self._wake_r.fileno() in events:
                self._drain_wake()
            # Read until the socket is empty; a batch runs right here, on the thread that owns the socket.
            # After a batch, keep polling for spin_us: the next PREDICT usually follows within a round
            # trip, and taking it while this core is still awake skips a sleep and a wakeup (tens of µs
            # each way on a virtual machine).
            while True:
                try:
                    frames = recv(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    if spin_until and clock_ns() < spin_until and not self._stop.is_set():
                        yield_cpu()  # lets this process's ZMQ I/O thread, woken by the arrival, run now
                        continue
                    break
                last_heard = time.monotonic()
                registered, ran = self._handle(sock, frames, registered)
                if ran:
                    last_activity = time.monotonic()
                    spin_until = clock_ns() + spin_ns if spin_ns else 0
                    if self._stop.is_set() and not draining:
                        break  # let the loop's top start the drain

    def _handle(self, sock: zmq.Socket, frames: list, registered: bool) -> tuple[bool, bool]:
        """Act on one message; returns (whether the frontend now knows this replica, whether a batch ran)."""
        try:
            hdr, payload = protocol.unpack(frames)
        except ProtocolError as err:
            log.warning("malformed message from the frontend: %s", err)
            self._send(sock, protocol.error(ErrorCode.PROTOCOL_ERROR, str(err)))
            return registered, False
        kind = hdr["type"]
        if kind == "predict":
            self._run_batch(sock, hdr, payload)
            return True, True
        if kind == "heartbeat":
            return True, False
        if kind == "welcome":
            self._adopt_settings(hdr)
            log.info("registered with the frontend at %s", self.config.frontend)
            return True, False
        if kind == "error":
            if "batch_id" in hdr:
                log.warning("frontend error about batch %s: %s", hdr.get("batch_id"), hdr.get("message"))
                return registered, False
            log.warning("frontend error %s: %s; registering again", hdr.get("code"), hdr.get("message"))
            return False, False
        log.warning("ignoring unexpected %s message from the frontend", kind)
        return registered, False

    def _adopt_settings(self, hdr: dict) -> None:
        interval = hdr.get("heartbeat_interval_s")
        timeout = hdr.get("heartbeat_timeout_s")
        if isinstance(interval, (int, float)) and interval > 0:
            self._interval_s = float(interval)
        if isinstance(timeout, (int, float)) and timeout > 0:
            self._timeout_s = float(timeout)

    def _run_batch(self, sock: zmq.Socket, hdr: dict, payload: list) -> None:
        """Run one PREDICT inline and send its RESULT (or ERROR)."""
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
            self._send(sock, protocol.result(batch_id, {"list": []}, ()))
            return
        self._busy = True
        try:
            self._send(sock, self._answer(batch_id, inputs))
        finally:
            self._busy = False
        self.batches_done += 1

    def _answer(self, batch_id: int, inputs: list) -> list:
        """RESULT frames for a batch, or ERROR model_error."""
        n = len(inputs)
        try:
            outputs = self.model.predict(inputs)
            count = len(outputs)
            if count != n:
                raise ValueError(f"model returned {count} outputs for {n} inputs")
            meta, frames = protocol.encode_items(outputs if isinstance(outputs, np.ndarray) else list(outputs))
        except Exception as err:  # the model's own errors, whatever their type
            log.warning("batch %d failed: %s: %s", batch_id, type(err).__name__, err)
            return protocol.error(ErrorCode.MODEL_ERROR, f"{type(err).__name__}: {err}", batch_id=batch_id)
        return protocol.result(batch_id, meta, frames)

    def _hello(self) -> list:
        try:
            pidns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pidns = ""
        shape = getattr(self.model, "input_shape", None)
        return protocol.hello(
            replica_id=self.config.replica_id, model=self.config.name,
            version=self.config.version, input_type=InputType.parse(self.input_type).value,
            input_shape=list(shape) if shape is not None else None, pid=os.getpid(), pidns=pidns,
            host=socket.gethostname(), cpus=list(self.cpus), gpu=self.config.gpu)

    @staticmethod
    def _send(sock: zmq.Socket, frames: list) -> None:
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
