"""Replica messages for the dispatcher: registration, results, errors, liveness, requeue.

A mixin of :class:`frontend.dispatch.Dispatcher`, kept apart so each module reads
on its own: ``dispatch.py`` forms and sends batches; this module handles what
replicas answer and what happens when one goes away (its in-flight batch goes
back to the head of its queue, at most ``max_batch_retries`` times).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgpack

from schooner import protocol
from frontend.admission import split_items
from schooner.errors import ModelError, NoModel, ProtocolError, ReplicaLost, SchoonerError, from_code
from schooner.protocol import ErrorCode, MsgType
from frontend.queries import Entry
from frontend.replicas import Replica
from schooner.types import ReplicaState

log = logging.getLogger(__name__)

_packb = msgpack.Packer(use_bin_type=True).pack
_HEARTBEAT = _packb(protocol.header(MsgType.HEARTBEAT))


class ReplicaEvents:
    """What the dispatcher does with replica messages and replica loss (mixed into Dispatcher)."""

    def on_replica_burst(self, burst: list[list[Any]]) -> None:
        """Handle a burst of replica messages, then dispatch what they made possible."""
        now = time.monotonic()
        for frames in burst:
            identity = frames[0].bytes
            try:
                hdr, payload = protocol.unpack(frames[1:])
            except ProtocolError as err:
                log.warning("replica %r sent a malformed message: %s", identity, err)
                self.send_replica([identity, *protocol.error(ErrorCode.PROTOCOL_ERROR, str(err))])
                continue
            try:
                self._on_replica_message(identity, hdr, payload, now)
            except ProtocolError as err:
                log.warning("replica %r: %s", identity, err)
                ids = {"batch_id": hdr["batch_id"]} if "batch_id" in hdr else {}
                self.send_replica([identity, *protocol.error(ErrorCode.PROTOCOL_ERROR, str(err), **ids)])
        self.pump_dirty()

    def _on_replica_message(self, identity: bytes, hdr: dict, payload: list, now: float) -> None:
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
        replica.last_seen = now
        replica.info.last_heartbeat_s = now
        if replica.state == ReplicaState.DEAD:
            log.warning("replica %s declared dead is talking again; taking it back", replica.info.replica_id)
            replica.info.state = ReplicaState.READY
            self._replica_free(replica)
        if kind == "result":
            self._on_result(replica, hdr, payload, now)
        elif kind == "error":
            self._on_error(replica, hdr, now)
        elif kind == "heartbeat":
            pass
        elif kind == "bye":
            log.info("replica %s is draining", replica.info.replica_id)
            replica.info.state = ReplicaState.DRAINING
        else:
            raise ProtocolError(f"replicas may not send {kind!r} messages")

    def _on_timed_out_replica(self, replica: Replica, kind: str, hdr: dict) -> None:
        # A replica that held a batch past the batch timeout may be wedged; it talking again does not
        # prove otherwise, so it stays dead until it registers again (HELLO, after the silence it sees).
        batch = replica.timed_out_batch
        if kind == "result" and hdr.get("batch_id") == batch.batch_id:
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
        replica.last_seen = now
        replica.info.last_heartbeat_s = now
        if kind == "bye":
            log.info("replica %s is draining", replica.info.replica_id)
            replica.info.state = ReplicaState.DRAINING
        elif kind != "heartbeat":
            log.warning("replica %s sent %r on its sideband socket; ignored", replica.info.replica_id, kind)

    def _on_hello(self, identity: bytes, hdr: dict, now: float) -> None:
        replica, old = self.pool.register(identity, hdr, now)
        if old is not None:
            batch = self.pool.mark_gone(old, ReplicaState.STOPPED)
            self._requeue(batch, f"replica {old.info.replica_id} re-registered")
        info = replica.info
        log.info("replica %s of %s:%s registered (pid %s, cpus %s)", info.replica_id, info.model_name,
                 info.model_version, info.pid, info.cpus)
        self.send_replica([identity, _packb(protocol.header(
            MsgType.WELCOME, replica_id=info.replica_id,
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            heartbeat_timeout_s=self.config.heartbeat_timeout_s))])
        mq = self.queues.get(replica.key)
        if mq is not None:
            if mq.spec.input_type != info.input_type:
                log.warning("replica %s takes %s input but model %s:%s is %s", info.replica_id,
                            info.input_type.value, *replica.key, mq.spec.input_type.value)
            if mq.replica_shape is None and info.input_shape:
                mq.replica_shape = list(info.input_shape)
            self._replica_free(replica)

    def _replica_free(self, replica: Replica) -> None:
        if replica.state != ReplicaState.READY or replica.batch is not None:
            return
        mq = self.queues.get(replica.key)
        if mq is not None:
            mq.idle.append(replica)
            self._dirty.add(mq)

    def _on_result(self, replica: Replica, hdr: dict, payload: list, now: float) -> None:
        batch = self.pool.finish_batch(replica, hdr.get("batch_id"))
        if batch is None:
            log.info("replica %s answered unknown batch %r", replica.info.replica_id, hdr.get("batch_id"))
            self._replica_free(replica)
            return
        mq, entries = batch.queue, batch.entries
        n = len(entries)
        try:
            metas, outputs = split_items(hdr.get("items"), payload)
        except ProtocolError as err:
            metas, outputs = None, None
            self._fail(entries, ModelError(f"replica {replica.info.replica_id} sent malformed outputs: {err}"))
        if metas is not None and len(metas) != n:
            self._fail(entries, ModelError(f"replica {replica.info.replica_id} returned {len(metas)} "
                                           f"outputs for a batch of {n}"))
        elif metas is not None:
            late = 0
            for entry, meta, out in zip(entries, metas, outputs):
                if not entry.query.set_output(entry.index, meta, out):
                    late += 1
            if late:
                mq.late_outputs.inc(late)
        latency = (now - batch.sent_at) * 1e6
        mq.latency.insert(latency)
        mq.throughput.mark(n)
        mq.num_predictions.inc(n)
        self.aggregate.mark(n)
        mq.controller.observe(n, latency)
        mq.estimate.observe(n, now - batch.sent_at)
        self._replica_free(replica)

    def _on_error(self, replica: Replica, hdr: dict, now: float) -> None:
        batch = self.pool.finish_batch(replica, hdr.get("batch_id"))
        message = str(hdr.get("message") or "replica reported an error")
        if batch is None:
            log.warning("replica %s reported an error outside a batch: %s", replica.info.replica_id, message)
            self._replica_free(replica)
            return
        code = hdr.get("code") or ErrorCode.MODEL_ERROR.value
        err = from_code(code, message) if code != ErrorCode.INTERNAL.value else ModelError(message)
        self._fail(batch.entries, err)
        batch.queue.latency.insert((now - batch.sent_at) * 1e6)
        self._replica_free(replica)

    @staticmethod
    def _fail(entries: list[Entry], err: SchoonerError) -> None:
        for entry in entries:
            entry.query.fail(err)

    # ---- liveness ---------------------------------------------------------------------------

    def check_replicas(self, send_heartbeats: bool) -> None:
        """Declare silent or vanished replicas gone; optionally heartbeat the live ones."""
        now = time.monotonic()
        for replica in self.pool.lost(now, self.config.heartbeat_timeout_s):
            self.replica_gone(replica)
        for replica in self.pool.overdue(now, self.config.batch_timeout_s):
            self._batch_timed_out(replica, now)
        if send_heartbeats:
            for replica in self.pool.live():
                self.send_replica([replica.identity, _HEARTBEAT])
        self.pump_dirty()

    def replica_gone(self, replica: Replica) -> None:
        """A replica died or left: requeue its batch at the head of its queue."""
        if replica.state in (ReplicaState.DEAD, ReplicaState.STOPPED):
            return
        state = ReplicaState.STOPPED if replica.state == ReplicaState.DRAINING else ReplicaState.DEAD
        log.warning("replica %s of %s:%s is %s", replica.info.replica_id, *replica.key, state.value)
        batch = self.pool.mark_gone(replica, state)
        self._requeue(batch, f"replica {replica.info.replica_id} was lost")

    def _batch_timed_out(self, replica: Replica, now: float) -> None:
        # Heartbeats come from the replica's sideband thread, so a replica stuck in predict still
        # looks alive; only the age of its batch gives it away.
        batch = replica.batch
        why = (f"replica {replica.info.replica_id} held batch {batch.batch_id} for {now - batch.sent_at:.1f} s, "
               f"over the batch timeout of {self.config.batch_timeout_s} s")
        log.warning("replica %s of %s:%s is dead: %s", replica.info.replica_id, *replica.key, why)
        batch.queue.batch_timeouts.inc()
        replica.timed_out_batch = self.pool.mark_gone(replica, ReplicaState.DEAD)
        self._requeue(batch, why)

    def on_unreachable(self, identity: bytes) -> None:
        """A send named a replica the socket no longer knows: it disconnected."""
        replica = self.pool.get(identity)
        if replica is not None:
            self.replica_gone(replica)

    def _requeue(self, batch: Any, why: str) -> None:
        if batch is None:
            return
        keep = []
        for entry in batch.entries:
            if entry.query.done:
                continue
            entry.retries += 1
            if entry.retries > self.config.max_batch_retries:
                entry.query.fail(ReplicaLost(f"{why}; gave up after {entry.retries} tries"))
            else:
                keep.append(entry)
        mq = batch.queue
        if mq.removed:
            self._fail(keep, NoModel(f"model {mq.spec.name}:{mq.spec.version} was removed"))
        elif keep:
            log.info("%s: requeued %d queries of batch %d", why, len(keep), batch.batch_id)
            mq.requeue(keep)
            self._dirty.add(mq)

    def fail_all(self, err: SchoonerError) -> None:
        """Answer every pending query with ``err`` (shutdown)."""
        for query in self.pending():
            query.fail(err)
        for mq in self.queues.values():
            mq.cancel_wait()
            mq.entries.clear()
