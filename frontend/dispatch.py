"""The frontend's core: routes, queues, pull-based batch dispatch, results, and replica liveness.

Everything here runs on the event loop thread, called by the endpoints with a
whole burst of messages; queues touched by a burst are pumped once at its end.

Dispatch is deadline-aware: a batch for ``n`` queries is expected to take the
queue's latency estimate for ``n`` (learnt from finished batches). Entries that
would get their output only after their deadline are not sent; they get the
app's default output at once, with an explanation naming the time left and the
time needed, and count in ``model:<m>:<v>:dropped_at_dispatch``. Later entries
take their place in the batch, so an overloaded replica keeps producing outputs
somebody receives instead of late ones that are discarded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import msgpack

from frontend import protocol
from frontend.admission import split_items
from frontend.batching import FireReason, ModelQueue
from frontend.config import FrontendConfig
from frontend.errors import (ModelError, NoModel, Overloaded, ProtocolError, ReplicaLost, SchoonerError,
                             from_code)
from frontend.protocol import ErrorCode, MsgType
from frontend.queries import AppRoute, Entry, Query
from frontend.replicas import Replica, ReplicaPool
from frontend.types import DeploymentState, ReplicaState

log = logging.getLogger(__name__)

_packb = msgpack.Packer(use_bin_type=True).pack
_V = protocol.PROTOCOL_VERSION
_HEARTBEAT = _packb(protocol.header(MsgType.HEARTBEAT))


class Route:
    """Where an app's queries go: its queue, or why there is none."""

    __slots__ = ("app", "queue", "problem")

    def __init__(self, app: AppRoute, queue: ModelQueue | None, problem: str = "") -> None:
        self.app = app
        self.queue = queue
        self.problem = problem


class Dispatcher:
    """Routes queries to model queues, forms batches for idle replicas, and matches results."""

    def __init__(self, config: FrontendConfig, metrics: Any, pool: ReplicaPool | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.loop: asyncio.AbstractEventLoop | None = None
        self.send_replica: Callable[[list], None] = lambda frames: None
        self.pool = pool or ReplicaPool()
        self.queues: dict[tuple[str, str], ModelQueue] = {}
        self.routes: dict[str, Route] = {}
        self._dirty: set[ModelQueue] = set()
        self._next_query_id = 0
        self.aggregate = metrics.meter("internal:aggregate_model_throughput")
        self.queueing_delay = metrics.histogram("internal:rpc_request_queueing_delay", "microseconds")

    def attach(self, loop: asyncio.AbstractEventLoop, send_replica: Callable[[list], None]) -> None:
        """Bind to the running loop and the replica socket's send."""
        self.loop = loop
        self.send_replica = send_replica

    # ---- deployment state -------------------------------------------------------------------

    def sync(self, state: DeploymentState) -> None:
        """Make queues and routes match ``state``; queues of kept model versions survive."""
        for key, spec in state.models.items():
            mq = self.queues.get(key)
            if mq is not None:
                mq.update_spec(spec)
                continue
            mq = self.queues[key] = ModelQueue(spec, self.metrics)
            for replica in self.pool.of_model(key):
                if mq.replica_shape is None and replica.info.input_shape:
                    mq.replica_shape = list(replica.info.input_shape)
                if replica.state == ReplicaState.READY and replica.batch is None:
                    mq.idle.append(replica)
            self._dirty.add(mq)
        for key in [k for k in self.queues if k not in state.models]:
            mq = self.queues.pop(key)
            mq.removed = True
            mq.cancel_wait()
            err = NoModel(f"model {key[0]}:{key[1]} was removed")
            for entry in mq.take(len(mq)):
                entry.query.fail(err)
        routes: dict[str, Route] = {}
        for name, spec in state.apps.items():
            app = AppRoute(spec, self.metrics)
            linked = state.links.get(name) or []
            if not linked:
                routes[name] = Route(app, None, f"app {name!r} has no linked model")
                continue
            model = linked[0]
            version = state.current_versions.get(model)
            mq = self.queues.get((model, version)) if version is not None else None
            if mq is None:
                routes[name] = Route(app, None, f"model {model!r} of app {name!r} has no current version")
            else:
                routes[name] = Route(app, mq)
        self.routes = routes
        for mq in self.queues.values():
            slos = [a.latency_slo_micros for n, a in state.apps.items()
                    if mq.spec.name in (state.links.get(n) or [])]
            if slos:
                mq.controller.objective_micros = min(slos)
        self.pump_dirty()

    # ---- queries ----------------------------------------------------------------------------

    def next_query_id(self) -> int:
        """A fresh frontend-assigned query id."""
        self._next_query_id += 1
        return self._next_query_id

    def submit(self, route: Route, query: Query, metas: list, frames: list, now: float) -> None:
        """Enqueue every item of ``query``; raise Overloaded at once when the queue is full."""
        mq = route.queue
        n = len(metas)
        if not mq.has_room(n):
            raise Overloaded(f"queue of model {mq.spec.name}:{mq.spec.version} is full "
                             f"({mq.spec.max_queue_size} queries)", self.config.retry_after_s)
        append = mq.entries.append
        for i in range(n):
            append(Entry(query, i, metas[i], frames[i], now))
        route.app.deadlines.add(query, self.loop)
        self._dirty.add(mq)

    def record(self, query: Query, error: SchoonerError | None) -> None:
        """Per-app metrics of a finished query."""
        app = query.app
        if error is None:
            app.latency.insert((time.monotonic() - query.arrival) * 1e6)
            app.throughput.mark(query.n)
            app.num_predictions.inc(query.n)
            app.default_ratio.inc(query.n_defaults, query.n)

    def pending(self) -> list[Query]:
        """Every unanswered query the frontend still holds (queued or in flight)."""
        seen: dict[int, Query] = {}
        for mq in self.queues.values():
            for entry in mq.entries:
                if not entry.query.done:
                    seen[id(entry.query)] = entry.query
        for batch in self.pool.batches.values():
            for entry in batch.entries:
                if not entry.query.done:
                    seen[id(entry.query)] = entry.query
        return list(seen.values())

    # ---- batching ---------------------------------------------------------------------------

    def pump_dirty(self) -> None:
        """Dispatch batches for every queue touched since the last pump."""
        if not self._dirty or self.loop is None:
            return
        dirty, self._dirty = self._dirty, set()
        for mq in dirty:
            self._pump(mq)

    def _pump(self, mq: ModelQueue) -> None:
        if mq.removed:
            return
        now = time.monotonic()
        while mq.idle and mq.entries:
            target = mq.controller.target
            depth = len(mq.entries)
            if depth >= target:
                reason = FireReason.FULL
            elif mq.wait_expired:
                reason = FireReason.TIMEOUT
            elif mq.spec.batch_wait_timeout_micros > 0:
                if mq.wait_handle is None:
                    mq.wait_handle = self.loop.call_later(mq.spec.batch_wait_timeout_micros * 1e-6,
                                                          self._wait_over, mq)
                return
            else:
                reason = FireReason.IDLE
            replica = mq.idle.popleft()
            if replica.state != ReplicaState.READY or replica.batch is not None:
                continue
            need = mq.estimate.seconds(min(target, depth))
            if need is None:
                entries = mq.take(target)
            else:
                late: list[Entry] = []
                entries = mq.take(target, now + need, need, late)
                if late:
                    self._drop_late(mq, late, now, need)
            if not entries:
                mq.idle.appendleft(replica)
                break
            mq.cancel_wait()
            self._send_batch(mq, replica, entries, reason, depth, now)

    @staticmethod
    def _drop_late(mq: ModelQueue, late: list[Entry], now: float, need: float) -> None:
        mq.dropped_at_dispatch.inc(len(late))
        need_us = round(need * 1e6)
        for entry in late:
            left_us = round((entry.query.deadline - now) * 1e6)
            entry.query.default_item(entry.index, f"would miss the latency objective: {left_us} µs left, "
                                                  f"the model needs ~{need_us} µs")

    def _wait_over(self, mq: ModelQueue) -> None:
        mq.wait_handle = None
        mq.wait_expired = True
        self._pump(mq)

    def _send_batch(self, mq: ModelQueue, replica: Replica, entries: list[Entry], reason: FireReason,
                    depth: int, now: float) -> None:
        batch = self.pool.start_batch(replica, mq, entries, now)
        hdr = {"v": _V, "type": "predict", "batch_id": batch.batch_id,
               "model": mq.spec.name, "version": mq.spec.version,
               "items": {"list": [e.meta for e in entries]}}
        frames = [replica.identity, _packb(hdr)]
        frames.extend([e.frame for e in entries])
        self.send_replica(frames)
        mq.batch_size.insert(len(entries))
        mq.queue_size.insert(depth)
        mq.fired[reason].inc()
        self.queueing_delay.insert((now - entries[0].enqueued) * 1e6)

    # ---- replica messages -------------------------------------------------------------------

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
