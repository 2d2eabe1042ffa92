"""The replica runtime: serve one loaded model to the query frontend over ZeroMQ.

A :class:`Replica` (run by ``python -m containers.replica``, which pins the
process and loads the model first) connects a DEALER to each frontend's replica
port, says HELLO and then answers
each PREDICT with one ``model.predict(inputs)`` call: RESULT, or ERROR
``model_error`` for the whole batch when the model raises.

Several frontends: the replica starts from the frontend address(es) it is given
(``--frontend a,b``) and learns the others from the frontends themselves:
WELCOME and heartbeats carry ``frontends``, the replica addresses of every live
frontend in Redis's directory. It connects a link (data + sideband socket) to
each one it learns of, and closes a learnt link that is no longer listed and has
been silent for ``frontend_timeout_s``. Each frontend sends this replica at most
one batch at a time (it is "busy" in that frontend's pool until the RESULT), so
a replica serving F frontends holds at most F batches; it runs them one at a
time, reading its links in turn so that no frontend starves the others.

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
from containers.spin import CONTENDED_YIELD_NS, SpinMode, SpinPolicy
from containers.models.base import Model
from schooner import curve, defaults, protocol
from schooner.curve import KeyPair
from schooner.errors import ProtocolError
from schooner.protocol import ErrorCode
from schooner.transport import recv_frames, send_frames
from schooner.types import InputType

log = logging.getLogger(__name__)


DRAIN_GRACE_S = 0.2  # after BYE, wait this long for a PREDICT the frontend sent before reading it
LINGER_MS = 2000


@dataclass
class ReplicaConfig:
    """Everything a replica is told at start."""

    model: str
    frontend: str = f"tcp://{defaults.HOST}:{defaults.REPLICA_PORT}"  # one address, or several joined by ","
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
    spin_us: int = defaults.REPLICA_SPIN_US  # after a batch, poll without blocking up to this long (0 = off)
    spin_mode: SpinMode | str = SpinMode.PLACEMENT  # see containers/spin.py
    owns_cores: bool | None = None  # the manager's word: no other process is placed on these cores
    # CURVE: this replica's key pair (from the manager, via a 0600 file or env, never argv) and the
    # frontend's public key; both set, every link is authenticated and encrypted.
    curve_pair: KeyPair | None = None
    curve_server_key: str = ""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a zoo model name")
        if not self.frontends:
            raise ValueError("frontend must name at least one tcp:// (or ipc://) address")
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
        try:
            self.spin_mode = SpinMode(self.spin_mode)
        except ValueError:
            raise ValueError(f"spin_mode must be one of {', '.join(m.value for m in SpinMode)}, "
                             f"got {self.spin_mode!r}") from None
        if self.owns_cores is not None and not isinstance(self.owns_cores, bool):
            raise ValueError(f"owns_cores must be true, false or unset, got {self.owns_cores!r}")
        if bool(self.curve_pair) != bool(self.curve_server_key):
            raise ValueError("CURVE needs both this replica's key pair and the frontend's public key "
                             f"({curve.ENV_SECRET_FILE} or {curve.ENV_SECRET_KEY}, and {curve.ENV_SERVER_KEY})")
        if self.curve_server_key:
            curve.check_public_key(self.curve_server_key, "the frontend's public key")


    @property
    def frontends(self) -> list[str]:
        """The frontend addresses given at start (``frontend`` split on commas)."""
        return [a.strip() for a in str(self.frontend).split(",") if a.strip()]


class _Link:
    """The replica's connection to one frontend: its data socket and registration state."""

    __slots__ = ("address", "sock", "seed", "registered", "last_hello", "last_heard", "next_heartbeat",
                 "frontend", "empty_at", "done_at")

    def __init__(self, address: str, sock: zmq.Socket, seed: bool, now: float) -> None:
        self.address = address
        self.sock = sock
        self.seed = seed  # given at start: kept even while silent
        self.registered = False
        self.last_hello = -float("inf")
        self.last_heard = now
        self.next_heartbeat = -float("inf")
        self.frontend = ""  # the frontend's own address, as its WELCOME names it
        self.empty_at = now  # when this link was last seen with nothing to read (a PREDICT came after)
        self.done_at = now  # when this link's last batch ended (a PREDICT pipelined behind it waited for it)


class Replica:
    """Serves ``model`` to the frontend(s) named in ``config``, and those they name, until :meth:`stop`."""

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
        self.spin = SpinPolicy(config.spin_us, config.spin_mode, config.owns_cores)
        self._links: dict[str, _Link] = {}  # owned by the serving thread
        self._generation = 0  # bumped when a link is connected afresh; the sideband thread follows
        # Addresses the sideband thread keeps a socket to; replaced (never mutated) by the serving thread.
        self._addresses: tuple[str, ...] = tuple(config.frontends)
        self._listed: set[str] = set()  # the frontends the latest WELCOME/heartbeat named
        # Listed addresses a link already reaches under another name (its WELCOME said "frontend": it).
        self._aliases: set[str] = set()
        self._duplicates: set[str] = set()  # links that reach a frontend another link reaches: closed

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
        poller = zmq.Poller()
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        now = time.monotonic()
        for address in self.config.frontends:
            self._open_link(poller, address, seed=True, now=now)
        sideband = threading.Thread(target=self._sideband, name="sideband", daemon=True)
        sideband.start()
        try:
            self._serve(poller)
        finally:
            self._done.set()
            sideband.join(10)
            for link in self._links.values():
                link.sock.close(linger=LINGER_MS)
            self._wake_r.close()
            self._wake_w.close()
        log.info("replica %s stopped after %d batches", self.config.replica_id, self.batches_done)
        return 0

    def _socket(self) -> zmq.Socket:
        """A DEALER for one frontend, a CURVE client when keys were given."""
        sock = self._ctx.socket(zmq.DEALER)
        if self.config.curve_pair is not None:
            curve.client_socket(sock, self.config.curve_pair, self.config.curve_server_key)
        return sock

    def _open_link(self, poller: zmq.Poller, address: str, seed: bool, now: float) -> None:
        sock = self._socket()
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.RECONNECT_IVL, defaults.REPLICA_RECONNECT_INTERVAL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, defaults.REPLICA_RECONNECT_INTERVAL_MAX_MS)
        # Queue nothing for a frontend not (yet) connected: HELLO and heartbeats are resent each interval
        # anyway, and a dead frontend must not collect a backlog of them.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(address)
        poller.register(sock, zmq.POLLIN)
        self._links[address] = _Link(address, sock, seed, now)
        self._addresses = tuple(self._links)
        if not seed:
            log.info("connecting to frontend %s", address)

    def _reopen_link(self, poller: zmq.Poller, link: _Link, now: float) -> _Link:
        log.info("no answer from frontend %s; connecting again", link.address)
        poller.unregister(link.sock)
        link.sock.close(linger=0)
        del self._links[link.address]
        self._open_link(poller, link.address, link.seed, now)
        self._generation += 1  # the sideband thread reconnects too
        return self._links[link.address]

    def _close_link(self, poller: zmq.Poller, link: _Link) -> None:
        log.info("frontend %s left the deployment; closing its link", link.address)
        poller.unregister(link.sock)
        link.sock.close(linger=0)
        del self._links[link.address]
        self._addresses = tuple(self._links)

    def _learn(self, hdr: dict) -> None:
        """Note the frontends a WELCOME or heartbeat names (links open at the serving loop's top)."""
        names = hdr.get("frontends")
        if isinstance(names, list) and all(isinstance(a, str) and a for a in names):
            self._listed = set(names)

    def _welcomed(self, link: _Link, own: object) -> None:
        """Note which frontend ``link`` reaches; a second link to the same frontend (two names for it, or
        a Service address that landed on a frontend already linked) is closed, keeping the direct one."""
        if not isinstance(own, str) or not own:
            return
        link.frontend = own
        self._aliases = {lk.frontend for lk in self._links.values() if lk.frontend and lk.frontend != lk.address}
        for other in self._links.values():
            if other is not link and other.frontend == own and other.address not in self._duplicates:
                self._duplicates.add(link.address if link.address != own else other.address)

    def _sync_links(self, poller: zmq.Poller, now: float) -> None:
        for address in sorted(self._duplicates):
            link = self._links.get(address)
            if link is not None and len(self._links) > 1:
                log.info("frontend %s is also linked as %s; closing this link", link.frontend, address)
                self._close_link(poller, link)
                for kept in self._links.values():
                    if kept.frontend == link.frontend:
                        # Register again on the link kept, so the frontend's entry for this replica is the
                        # kept link's (the closed one may have registered last).
                        kept.registered, kept.last_hello = False, -float("inf")
        self._duplicates.clear()
        for address in sorted(self._listed - set(self._links) - self._aliases):
            self._open_link(poller, address, seed=False, now=now)
        for link in list(self._links.values()):
            if (not link.seed and link.address not in self._listed
                    and now - link.last_heard > self._timeout_s and len(self._links) > 1):
                self._close_link(poller, link)

    def _sideband(self) -> None:
        """Heartbeats and BYE on sockets of their own, so they flow while predict holds the main thread."""
        socks: dict[str, zmq.Socket] = {}
        rid = self.config.replica_id
        bye_sent = False
        generation = self._generation
        try:
            while True:
                wanted = self._addresses
                if generation != self._generation:
                    generation = self._generation
                    for address in list(socks):
                        socks.pop(address).close(linger=0)
                for address in [a for a in socks if a not in wanted]:
                    socks.pop(address).close(linger=0)
                for address in wanted:
                    if address not in socks:
                        sock = socks[address] = self._socket()
                        sock.setsockopt(zmq.LINGER, LINGER_MS)
                        sock.setsockopt(zmq.SNDHWM, 16)
                        sock.connect(address)
                if self._stop.is_set() and not bye_sent:
                    bye_sent = True
                    for sock in socks.values():
                        self._send(sock, protocol.bye(rid))
                    log.info("draining: BYE sent, %d batch(es) in flight", int(self._busy))
                if self._done.is_set():
                    return
                for sock in socks.values():
                    self._send(sock, protocol.heartbeat(rid, sideband=True))
                    while sock.poll(0):  # the frontend never answers sideband messages; discard whatever comes
                        sock.recv_multipart()
                if bye_sent:
                    self._done.wait(self._interval_s)
                else:
                    self._stop.wait(self._interval_s)
        finally:
            for sock in socks.values():
                sock.close()

    def _serve(self, poller: zmq.Poller) -> None:
        last_activity = time.monotonic()
        draining = False
        spin = self.spin
        adaptive = spin.adaptive
        spin_until = 0  # monotonic ns; 0 = not spinning
        late = False  # this spin's last yield came back late: another process wants the core
        clock_ns = time.monotonic_ns
        yield_cpu = os.sched_yield
        stopping = self._stop.is_set
        turn = 0  # which link is read first, rotated so that no frontend starves the others
        while True:
            now = time.monotonic()
            if self._stop.is_set() and not draining:  # the sideband thread sends BYE
                draining, last_activity = True, now
            if draining and now - last_activity >= DRAIN_GRACE_S:
                return
            self._sync_links(poller, now)
            wait_s = float("inf")
            for link in list(self._links.values()):
                if (self.config.curve_pair is not None and not link.registered
                        and now - link.last_heard > self._timeout_s):
                    # A CURVE handshake the frontend refused (our key not registered yet) is not
                    # retried by libzmq: connect afresh.
                    link = self._reopen_link(poller, link, now)
                if link.registered and now - link.last_heard > self._timeout_s:
                    log.warning("frontend %s silent for %.1f s; registering again", link.address,
                                now - link.last_heard)
                    link.registered = False
                if not link.registered and not draining and now - link.last_hello >= self._interval_s:
                    self._send(link.sock, self._hello(), quiet=True)
                    link.last_hello = now
                if now >= link.next_heartbeat:
                    self._send(link.sock, protocol.heartbeat(self.config.replica_id), quiet=True)
                    link.next_heartbeat = now + self._interval_s
                wait_s = min(wait_s, link.next_heartbeat - now)
                if not link.registered:
                    wait_s = min(wait_s, link.last_hello + self._interval_s - now)
            if draining:
                wait_s = min(wait_s, DRAIN_GRACE_S)
            events = dict(poller.poll(max(0.0, min(wait_s, self._interval_s)) * 1000))
            # Every link was empty when the last round ended and the poll watched them since: whatever
            # is pending arrived just now. (A PREDICT's wait behind other frontends' batches is counted
            # from its link's empty_at, so the frontend learns what the batch really cost it.)
            polled = time.monotonic()
            links = list(self._links.values())
            for link in links:
                link.empty_at = polled
            if self._wake_r.fileno() in events:
                self._drain_wake()
            # Read until every socket is empty, one message per link in turn; a batch runs right here, on
            # the thread that owns the sockets. After a batch the spin policy may keep polling a while
            # (containers/spin.py): the next PREDICT usually follows within a round trip, and taking it
            # while this core is still awake skips a sleep and a wakeup (tens of µs each way on a VM).
            while True:
                got = False
                turn += 1
                round_at = time.monotonic()
                for i in range(len(links)):
                    link = links[(turn + i) % len(links)]
                    try:
                        frames = recv_frames(link.sock)
                    except zmq.Again:
                        link.empty_at = round_at
                        continue
                    got = True
                    if spin_until:  # the spin found work
                        spin.ended(hit=True, contended=late)
                        spin_until = 0
                    link.last_heard = time.monotonic()
                    link.registered, ran = self._handle(link, frames)
                    if ran:
                        last_activity = link.done_at = time.monotonic()
                        window = spin.after_batch()
                        if window:
                            spin_until, late = clock_ns() + window, False
                if got:
                    if stopping() and not draining:
                        break  # let the loop's top start the drain
                    continue
                if spin_until:
                    t = clock_ns()
                    if t < spin_until and not late and not stopping():
                        yield_cpu()  # lets this process's ZMQ I/O thread, woken by the arrival, run now
                        late = adaptive and clock_ns() - t > CONTENDED_YIELD_NS
                        continue
                    spin.ended(hit=False, contended=late)
                    spin_until = 0
                break

    def _handle(self, link: _Link, frames: list) -> tuple[bool, bool]:
        """Act on one message; returns (whether the frontend now knows this replica, whether a batch ran)."""
        sock, registered = link.sock, link.registered
        try:
            hdr, payload = protocol.unpack(frames)
        except ProtocolError as err:
            log.warning("malformed message from the frontend: %s", err)
            self._send(sock, protocol.error(ErrorCode.PROTOCOL_ERROR, str(err)))
            return registered, False
        kind = hdr["type"]
        if kind == "predict":
            # Its wait behind this frontend's own previous batch (pipelined) is not the batch's cost.
            self._run_batch(sock, hdr, payload, max(link.empty_at, link.done_at))
            return True, True
        if kind == "heartbeat":
            self._learn(hdr)
            return True, False
        if kind == "welcome":
            self._adopt_settings(hdr)
            self._learn(hdr)
            self._welcomed(link, hdr.get("frontend"))
            log.info("registered with the frontend at %s", link.address)
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

    def _run_batch(self, sock: zmq.Socket, hdr: dict, payload: list, arrived_after: float) -> None:
        """Run one PREDICT inline and send its RESULT (or ERROR).

        The RESULT's service time counts from ``arrived_after`` (the PREDICT came
        later): the batch's own time plus, at most, its wait behind other links' batches.
        """
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
            self._send(sock, self._answer(batch_id, inputs, arrived_after))
        finally:
            self._busy = False
        self.batches_done += 1

    def _answer(self, batch_id: int, inputs: list, started: float) -> list:
        """RESULT frames for a batch (with the seconds since ``started``), or ERROR model_error."""
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
        return protocol.result(batch_id, meta, frames, time.monotonic() - started)

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
    def _send(sock: zmq.Socket, frames: list, quiet: bool = False) -> None:
        try:
            send_frames(sock, frames)
        except zmq.Again:
            if quiet:  # HELLO or heartbeat to a frontend not connected yet: sent again next interval
                log.debug("frontend not connected; a %d-frame message was not sent", len(frames))
            else:
                log.warning("frontend unreachable (send queue full); dropped a %d-frame message", len(frames))

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
