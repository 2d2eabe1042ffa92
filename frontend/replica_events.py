"""What replicas say, and what happens when one goes away.

:class:`ReplicaEvents` reads replica messages (HELLO, RESULT, ERROR, HEARTBEAT,
BYE) and watches liveness. It changes replica state only through the
:class:`~frontend.replicas.ReplicaPool`, and hands batches and queries to the
:class:`~frontend.dispatch.Dispatcher`: finished batches to be matched to their
queries, lost ones to be requeued at the head of their queue (at most
``max_batch_retries`` times), freed replicas to take the next batch.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from schooner import protocol
from frontend.admission import check_outputs, split_items
from frontend.badmsg import BadMessages
from frontend.config import FrontendConfig
from frontend.dispatch import Dispatcher
from schooner.errors import ModelError, ProtocolError, SchoonerError, from_code
from schooner.protocol import ErrorCode, short
from frontend.replicas import Replica, ReplicaPool, info_from_hello
from schooner.types import ReplicaState

log = logging.getLogger(__name__)

MAX_ERROR_MESSAGE = 2000  # characters of a replica's error message passed on to clients


class ReplicaEvents:
    """Handles replica messages and replica loss for one frontend."""

    def __init__(self, config: FrontendConfig, pool: ReplicaPool, dispatcher: Dispatcher) -> None:
        self.config = config
        self.pool = pool
        self.dispatcher = dispatcher
        # Replica addresses of every live frontend (this one's is ``own``), from Redis's frontend
        # directory; WELCOME and heartbeats carry them, so each replica serves every frontend.
        self.peers: list[str] = []
        self.own = ""
        self.bad = BadMessages("replica", dispatcher.metrics, log)
        # CURVE on: every connection is a replica the ZAP handler named; messages must agree with it.
        self.authenticated = False

    def set_peers(self, addresses: list[str], own: str = "") -> None:
        """Tell replicas (now, and in every WELCOME and heartbeat) which frontends to serve."""
        peers = sorted(set(addresses))
        self.own = own
        if peers == self.peers:
            return
        log.info("frontends of this deployment: %s", peers)
        self.peers = peers
        for replica in self.pool.live():
            self._send(protocol.heartbeat(to=replica.identity, frontends=peers))

    def _send(self, frames: list) -> None:
        self.dispatcher.send_replica(frames)

    def on_burst(self, burst: list[list[Any]]) -> None:
        """Handle a burst of replica messages, then dispatch what they made possible.

        Each message on its own: a bad one gets its own ERROR (or is counted)
        and changes nothing for another message of the burst or another replica.
        """
        now = time.monotonic()
        for frames in burst:
            identity = frames[0].bytes
            hdr: dict = {}
            try:
                hdr, payload = protocol.unpack(frames[1:])
                if self.authenticated:
                    self._check_sender(frames[0], hdr)
                self._on_message(identity, hdr, payload, now)
            except ProtocolError as err:
                self.bad.note(logging.WARNING, "replica %r: %s", identity, err)
                batch_id = hdr.get("batch_id")
                self._send(protocol.error(ErrorCode.PROTOCOL_ERROR, str(err),
                                          batch_id=batch_id if batch_id.__class__ is int else None, to=identity))
            except Exception as err:  # a bug met by one message must not cost the rest of the burst
                self.bad.note(logging.ERROR, "replica %r: message handling failed: %r", identity, err)
        self.dispatcher.pump_dirty()

    @staticmethod
    def _check_sender(frame: Any, hdr: dict) -> None:
        # CURVE: the ZAP handler named the connection's replica (User-Id); a message naming
        # another replica is a spoof (a BYE or HELLO for a replica this key was not issued to).
        named = hdr.get("replica_id")
        if named is None:
            return
        user = frame.get("User-Id")
        if named != user:
            raise ProtocolError(f"this connection is replica {short(user)}; it may not speak for {short(named)}")

    def _on_message(self, identity: bytes, hdr: dict, payload: list, now: float) -> None:
        kind = hdr["type"]
        if kind == "hello":
            self._on_hello(identity, hdr, now)
            return
        if hdr.get("sideband"):
            self._on_sideband(kind, hdr, now)
            return
        replica = self.pool.get(identity)
        if replica is None:
            raise ProtocolError(f"{kind} from an unregistered replica: send hello first")
        if replica.timed_out_batch is not None:
            self._on_timed_out_replica(replica, kind, hdr)
            return
        if self.pool.heard_from(replica, now):
            log.warning("replica %s declared dead is talking again; taking it back", replica.info.replica_id)
            self.dispatcher.replica_free(replica)
        if kind == "result":
            self._on_result(replica, hdr, payload, now)
        elif kind == "error":
            self._on_error(replica, hdr, now)
        elif kind == "heartbeat":
            pass
        elif kind == "bye":
            log.info("replica %s is draining", replica.info.replica_id)
            self.pool.drain(replica)
        else:
            raise ProtocolError(f"replicas may not send {short(kind)} messages")

    def _on_timed_out_replica(self, replica: Replica, kind: str, hdr: dict) -> None:
        # A replica that held a batch past the batch timeout may be wedged; it talking again does not
        # prove otherwise, so it stays dead until it registers again (HELLO, after the silence it sees).
        batch = replica.timed_out_batch
        if kind == "result" and batch is not None and hdr.get("batch_id") == batch.batch_id:
            n = len(batch.entries)
            batch.queue.late_outputs.inc(n)
            log.warning("replica %s answered batch %d after the batch timeout; %d outputs discarded",
                        replica.info.replica_id, batch.batch_id, n)
        elif kind != "heartbeat":
            log.info("replica %s, dead after a batch timeout, sent %s; ignored until it sends hello",
                     replica.info.replica_id, kind)

    def _on_sideband(self, kind: str, hdr: dict, now: float) -> None:
        # A replica's second socket: heartbeats while a batch holds its main thread, and BYE.
        # Never answered; an unknown replica_id (e.g. after a frontend restart) is ignored, its
        # main socket registers again.
        replica = self.pool.get_by_id(hdr.get("replica_id"))
        if replica is None:
            return
        self.pool.heard_from(replica, now)
        if kind == "bye":
            log.info("replica %s is draining", replica.info.replica_id)
            self.pool.drain(replica)
        elif kind != "heartbeat":
            log.warning("replica %s sent %r on its sideband socket; ignored", replica.info.replica_id, kind)

    def _on_hello(self, identity: bytes, hdr: dict, now: float) -> None:
        # Checked before anything changes: a refused HELLO leaves every replica as it was.
        self.dispatcher.check_replica(identity, info_from_hello(hdr, now))
        replica, displaced = self.pool.register(identity, hdr, now)
        info = replica.info
        self.dispatcher.requeue(displaced, f"replica {info.replica_id} re-registered")
        log.info("replica %s of %s:%s registered (pid %s, cpus %s)", info.replica_id, info.model_name,
                 info.model_version, info.pid, info.cpus)
        self._send(protocol.welcome(info.replica_id, self.config.heartbeat_interval_s,
                                    self.config.heartbeat_timeout_s, to=identity, frontends=self.peers,
                                    frontend=self.own))
        self.dispatcher.replica_registered(replica)

    def _on_result(self, replica: Replica, hdr: dict, payload: list, now: float) -> None:
        batch = self.pool.finish_batch(replica, hdr.get("batch_id"), now)
        if batch is None:
            log.info("replica %s answered unknown batch %s", replica.info.replica_id, short(hdr.get("batch_id")))
            self.dispatcher.replica_free(replica)
            return
        try:
            n = len(batch.entries)
            metas, outputs = split_items(hdr.get("items"), payload, max(n, self.config.max_items_per_query))
            if len(metas) != n:
                raise ProtocolError(f"{len(metas)} outputs for a batch of {n}")
            check_outputs(metas, outputs)
        except SchoonerError as err:
            self.dispatcher.fail_batch(batch, ModelError(
                f"replica {replica.info.replica_id} sent malformed outputs: {err}"), now)
        else:
            service_us = hdr.get("service_us")
            service_s = service_us * 1e-6 if service_us.__class__ is int and service_us >= 0 else None
            self.dispatcher.complete_batch(batch, metas, outputs, now, service_s)
        finally:
            self.dispatcher.replica_free(replica)

    def _on_error(self, replica: Replica, hdr: dict, now: float) -> None:
        batch = self.pool.finish_batch(replica, hdr.get("batch_id"), now)
        try:
            message = hdr.get("message")
            message = message[:MAX_ERROR_MESSAGE] if message.__class__ is str else "replica reported an error"
            if batch is None:
                log.warning("replica %s reported an error outside a batch: %s", replica.info.replica_id, message)
            else:
                code = hdr.get("code")
                code = code if code.__class__ is str else ErrorCode.MODEL_ERROR.value
                err = from_code(code, message) if code != ErrorCode.INTERNAL.value else ModelError(message)
                self.dispatcher.fail_batch(batch, err, now)
        finally:
            self.dispatcher.replica_free(replica)

    # ---- liveness ---------------------------------------------------------------------------

    def check(self, send_heartbeats: bool) -> None:
        """Declare silent or vanished replicas gone, forget long-gone ones; optionally heartbeat the live."""
        now = time.monotonic()
        for replica in self.pool.lost(now, self.config.heartbeat_timeout_s):
            self.replica_gone(replica, now)
        for replica in self.pool.overdue(now, self.config.batch_timeout_s):
            self._batch_timed_out(replica, now)
        self.pool.prune(now)
        if send_heartbeats:
            for replica in self.pool.live():
                self._send(protocol.heartbeat(to=replica.identity, frontends=self.peers))
        self.dispatcher.pump_dirty()

    def replica_gone(self, replica: Replica, now: float) -> None:
        """A replica died or left: requeue its batch at the head of its queue."""
        if replica.state in (ReplicaState.DEAD, ReplicaState.STOPPED):
            return
        batches = self.pool.lose(replica, now)
        log.warning("replica %s of %s:%s is %s", replica.info.replica_id, *replica.key, replica.state.value)
        self.dispatcher.requeue(batches, f"replica {replica.info.replica_id} was lost")

    def _batch_timed_out(self, replica: Replica, now: float) -> None:
        # Heartbeats come from the replica's sideband thread, so a replica stuck in predict still
        # looks alive; only the age of its batch gives it away.
        batches = self.pool.time_out(replica, now)
        if not batches:
            return
        batch = batches[0]
        why = (f"replica {replica.info.replica_id} held batch {batch.batch_id} for {now - batch.sent_at:.1f} s, "
               f"over the batch timeout of {self.config.batch_timeout_s} s")
        log.warning("replica %s of %s:%s is dead: %s", replica.info.replica_id, *replica.key, why)
        batch.queue.batch_timeouts.inc()
        self.dispatcher.requeue(batches, why)

    def on_unreachable(self, identity: bytes) -> None:
        """A send named a replica the socket no longer knows: it disconnected."""
        replica = self.pool.get(identity)
        if replica is not None:
            self.replica_gone(replica, time.monotonic())
