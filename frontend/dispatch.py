"""The frontend's core: routes, queues, pull-based batch dispatch, results, and replica liveness.

Everything here runs on the event loop thread, called by the endpoints with a
whole burst of messages; queues touched by a burst are pumped once at its end.

Admission is at arrival: a query that would finish after its deadline given
the work queued ahead of it (:func:`frontend.admission.predict_finish`) is
answered at once, with the error ``overloaded`` and a retry time from the queue
(HTTP 429 + Retry-After) or, for an app with ``on_overload: default``, the
default output; it counts in ``model:<m>:<v>:shed_at_arrival``.

Dispatch is deadline-aware too: a batch for ``n`` queries is expected to take
the queue's latency curve at ``n``. Entries already queued that would get their
output only after their deadline are not sent; they get the app's default
output at once, with an explanation naming the time left and the time needed,
and count in ``model:<m>:<v>:dropped_at_dispatch``. Later entries take their
place in the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from schooner import defaults, metric_names, protocol
from frontend.admission import predict_finish
from frontend.batching import FireReason, ModelQueue, fire_reason, learnt_latency, should_wait
from frontend.cache import PredictionCache, cache_key
from frontend.config import FrontendConfig
from schooner.errors import NoModel, Overloaded, ProtocolError, ReplicaLost, SchoonerError
from schooner.protocol import short
from frontend.queries import AppRoute, Entry, Query
from frontend.replicas import Batch, Replica, ReplicaPool
from schooner.types import DeploymentState, ReplicaInfo

log = logging.getLogger(__name__)


class Route:
    """Where an app's queries go: its queue, or why there is none."""

    __slots__ = ("app", "queue", "problem", "model")

    def __init__(self, app: AppRoute, queue: ModelQueue | None, problem: str = "",
                 model: str | None = None) -> None:
        self.app = app
        self.queue = queue
        self.problem = problem
        self.model = model if model is not None else (queue.spec.name if queue is not None else None)


class Dispatcher:
    """Routes queries to model queues, forms batches for idle replicas, and matches results.

    Replica state belongs to the :class:`ReplicaPool`; the dispatcher only reads
    it, and starts batches through it.
    """

    def __init__(self, config: FrontendConfig, metrics: Any, pool: ReplicaPool | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.loop: asyncio.AbstractEventLoop | None = None
        self.send_replica: Callable[[list], None] = lambda frames: None
        self.pool = pool or ReplicaPool()
        self.queues: dict[tuple[str, str], ModelQueue] = {}
        self.routes: dict[str, Route] = {}
        self._dirty: set[ModelQueue] = set()
        # False until the deployment is loaded (a frontend following Redis: its first sync); until
        # then queries get NotReady, never UnknownApp.
        self.ready = config.start_ready
        self._next_query_id = 0
        self.aggregate = metrics.meter(metric_names.AGGREGATE_THROUGHPUT)
        self.aggregate_count = metrics.counter(metric_names.AGGREGATE_NUM_PREDICTIONS)
        self.queueing_delay = metrics.histogram(metric_names.QUEUEING_DELAY, "microseconds")

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
                try:
                    self.check_replica(replica.identity, replica.info)
                except ProtocolError as err:  # registered before its model was known
                    log.warning("%s; it gets no batch", err)
                    continue
                if mq.replica_shape is None and replica.info.input_shape:
                    mq.replica_shape = list(replica.info.input_shape)
                if replica.idle:
                    mq.idle.append(replica)
            self._dirty.add(mq)
        for key in [k for k in self.queues if k not in state.models]:
            mq = self.queues.pop(key)
            mq.removed = True
            mq.cancel_wait()
            removed = NoModel(f"model {key[0]}:{key[1]} was removed")
            for entry in mq.take(len(mq)):
                entry.query.fail(removed)
                self._release(mq, entry, err=removed)
            self.metrics.remove_prefix(metric_names.model_prefix(*key))
        for name in [n for n in self.routes if n not in state.apps]:
            self.metrics.remove_prefix(metric_names.app_prefix(name))
        routes: dict[str, Route] = {}
        for name, app_spec in state.apps.items():
            app = AppRoute(app_spec, self.metrics)
            linked = state.links.get(name) or []
            if not linked:
                routes[name] = Route(app, None, f"app {name!r} has no linked model")
                continue
            model = linked[0]
            version = state.current_versions.get(model)
            mq = self.queues.get((model, version)) if version is not None else None
            if mq is None:
                routes[name] = Route(app, None, f"model {model!r} of app {name!r} has no current version",
                                     model=model)
            else:
                routes[name] = Route(app, mq)
        self.routes = routes
        for mq in self.queues.values():
            slos = [a.latency_slo_micros for n, a in state.apps.items()
                    if mq.spec.name in (state.links.get(n) or [])]
            if slos:
                mq.controller.objective_micros = min(slos)
            mq.retune(time.monotonic(), force=True)
        self.pump_dirty()

    # ---- queries ----------------------------------------------------------------------------

    def next_query_id(self) -> int:
        """A fresh frontend-assigned query id."""
        self._next_query_id += 1
        return self._next_query_id

    def submit(self, route: Route, query: Query, metas: list, frames: list, now: float) -> None:
        """Enqueue every item of ``query``, or answer it at once when it cannot make its deadline.

        Raises Overloaded when the queue is full, or when the query would finish
        late and its app rejects on overload (else it gets the default output now).
        """
        mq = route.queue
        assert mq is not None, "submit needs a route with a queue"  # the endpoints answer NoModel first
        n = len(metas)
        mq.arrivals.arrive(now, n, mq.busy())
        age = now - query.arrival  # the wait to be read (and over HTTP, parsed)
        if age or mq.entry_age_s:
            mq.entry_age_s += defaults.ENTRY_AGE_WEIGHT * (age - mq.entry_age_s)
        if not mq.has_room(n):
            self.count_error(route.app, Overloaded.code, n)
            mq.shed_at_arrival.inc(n)
            raise Overloaded(f"queue of model {mq.spec.name}:{mq.spec.version} is full "
                             f"({mq.spec.max_queue_size} queries)", self.config.retry_after_s)
        if query.deadline - now <= defaults.ADMISSION_GUARD_MICROS * 1e-6:
            self._shed_passed(route, mq, query, n, now)
            return
        cache = mq.cache
        if cache is not None:
            self._submit_cached(route, mq, cache, query, metas, frames, now)
            return
        if mq.can_shed() and self._shed(route, mq, query, n, now):
            return
        append = mq.entries.append
        for i in range(n):
            append(Entry(query, i, metas[i], frames[i], now))
        route.app.deadlines.add(query, self.loop)
        mq.note_busy(now)
        self._dirty.add(mq)

    def _submit_cached(self, route: Route, mq: ModelQueue, cache: PredictionCache, query: Query,
                       metas: list, frames: list, now: float) -> None:
        """Submit through the prediction cache: hits answered now, identical inputs share one model call."""
        n = len(metas)
        keys = [cache_key(metas[i], frames[i]) for i in range(n)]
        hits = {i: hit for i, hit in enumerate(cache.get(k) for k in keys) if hit is not None}
        joins = [i for i in range(n) if i not in hits and cache.pending(keys[i])]
        misses = [i for i in range(n) if i not in hits and i not in joins]
        mq.cache_hit_ratio.inc(len(hits) + len(joins), n)
        mq.cache_lookups.inc(n)
        if misses and mq.can_shed() and self._shed(route, mq, query, len(misses), now):
            return
        append = mq.entries.append
        for i in misses:
            entry = Entry(query, i, metas[i], frames[i], now)
            entry.cache_key = keys[i]
            cache.start(keys[i])
            append(entry)
        for i in joins:
            cache.join(keys[i], query, i)
        if misses or joins:
            route.app.deadlines.add(query, self.loop)
        for i, (meta, data) in hits.items():
            query.set_output(i, meta, data)
        if misses:
            mq.note_busy(now)
            self._dirty.add(mq)

    @staticmethod
    def _release(mq: ModelQueue, entry: Entry, meta: Any = None, frame: Any = None,
                 err: SchoonerError | None = None, default: str = "") -> None:
        """Answer the queries waiting for ``entry``'s model call: its output (now cached), error or default."""
        cache = mq.cache
        if entry.cache_key is None or cache is None:
            return
        if err is None and not default:
            frame = cache.put(entry.cache_key, meta, frame)
            mq.cache_bytes.set(cache.bytes)
        for query, index in cache.waiters(entry.cache_key):
            if err is not None:
                query.fail(err)
            elif default:
                query.default_item(index, default)
            else:
                query.set_output(index, meta, frame)

    def _shed_passed(self, route: Route, mq: ModelQueue, query: Query, n: int, now: float) -> None:
        """Answer ``query`` at once: its objective had passed before it reached the queue (over HTTP,
        it waited that long for the frontend to read and parse it).

        This needs nothing known of the model: no batch, however fast, answers it in time. Sent
        on instead (an idle replica, nothing ahead), it could come back before its deadline
        timer fired and be answered late, not with the app's default output as it asks.
        """
        why = (f"overloaded: the query waited ~{round((now - query.arrival) * 1e6)} µs before it reached the "
               f"queue of model {mq.spec.name}:{mq.spec.version}, past its latency objective of "
               f"{route.app.spec.latency_slo_micros} µs")
        self._answer_shed(route, mq, query, n, why, now - query.arrival)

    def _answer_shed(self, route: Route, mq: ModelQueue, query: Query, n: int, why: str, retry_s: float) -> None:
        """Answer a shed ``query`` now, as its app asks: its default output, or 429 ``overloaded``."""
        if route.app.spec.on_overload == "default":
            mq.shed_at_arrival.inc(n)
            query.expire(why)
            return
        raise self.refuse(route, mq, n, why, retry_s)

    def refuse_behind(self, route: Route, n: int, waited_s: float, what: str) -> Overloaded:
        """The 429 ``overloaded`` for ``n`` queries of ``route`` that waited ``waited_s`` for the
        frontend (``what``: to be read, or read and parsed), counted as shed."""
        mq = route.queue
        assert mq is not None, "only a query for a model waits for it"
        return self.refuse(
            route, mq, n,
            f"overloaded: the frontend is behind: the query waited ~{round(waited_s * 1e6)} µs to be {what}, "
            f"more than the {round(route.app.wait_budget_s * 1e6)} µs it allows of the latency "
            f"objective of {route.app.spec.latency_slo_micros} µs", waited_s)

    def refuse(self, route: Route, mq: ModelQueue, n: int, why: str, retry_s: float) -> Overloaded:
        """The 429 ``overloaded`` for ``n`` queries of ``route`` shed at arrival, counted (as shed,
        and as the app's errors); ``retry_s`` is its Retry-After."""
        mq.shed_at_arrival.inc(n)
        self.count_error(route.app, Overloaded.code, n)
        return Overloaded(why, max(1e-3, retry_s))

    def _shed(self, route: Route, mq: ModelQueue, query: Query, n: int, now: float) -> bool:
        """Answer ``query`` at once if it would finish after its deadline; whether it was."""
        free = mq.free_times(now)
        if not free:  # no live replica: nothing to predict from; it waits for one
            return False
        ahead = mq.queued()
        if ahead == 0 and free[0] <= now:
            # Nothing ahead and a replica idle: no queueing to shed for. Were the model alone too slow
            # for the objective, shedding here would stop every batch and the curve could never learn
            # that it has become fast again; the query is sent (and defaulted at dispatch if hopeless).
            return False
        start, finish, pos = predict_finish(now, ahead, n, free, mq.controller.target, mq.curve.upper_known,
                                            mq.arrivals.rate(now))
        deadline = query.deadline
        if pos >= n:  # the first query of its batch is ahead of it, with an earlier deadline
            head = mq.entries[ahead - pos + n - 1].query.deadline
            if head >= start + mq.curve.upper(1):  # one that is late anyway is dropped at dispatch
                deadline = min(deadline, head)
        if finish <= deadline - defaults.ADMISSION_GUARD_MICROS * 1e-6:
            return False
        why = (f"overloaded: model {mq.spec.name}:{mq.spec.version} would answer in "
               f"~{round((finish - now) * 1e6)} µs, with {round((deadline - now) * 1e6)} µs left "
               f"of the latency objective of {route.app.spec.latency_slo_micros} µs")
        self._answer_shed(route, mq, query, n, why, start - now)
        return True

    def record(self, query: Query, error: SchoonerError | None) -> None:
        """Per-app metrics of a finished query."""
        app = query.app
        if error is None:
            app.latency.insert((time.monotonic() - query.arrival) * 1e6)
            app.throughput.mark(query.n)
            app.num_predictions.inc(query.n)
            app.default_ratio.inc(query.n_defaults, query.n)
        else:
            self.count_error(app, error.code, query.n)

    def count_error(self, app: AppRoute, code: str, n: int) -> None:
        """Count ``n`` queries of ``app`` answered with error ``code`` (the 429s are "overloaded")."""
        self.metrics.counter(metric_names.app_prefix(app.spec.name)
                             + metric_names.APP_ERRORS.format(code=code)).inc(n)

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
        while mq.idle and mq.queued():
            target = mq.controller.target
            depth = len(mq.entries)
            wait_us = mq.spec.batch_wait_timeout_micros
            # The wait is spent only when another query is expected within it (the wait rule).
            worth = (wait_us > 0 and depth < target and not mq.wait_expired
                     and (mq.wait_handle is not None or self._worth_waiting(mq, depth, target, now)))
            reason = fire_reason(depth, target, mq.wait_expired, wait_us if worth else 0)
            if reason is None:
                if mq.wait_handle is None:
                    assert self.loop is not None  # pump_dirty runs only once attached
                    mq.wait_handle = self.loop.call_later(wait_us * 1e-6, self._wait_over, mq)
                return
            replica = mq.idle.popleft()
            if not replica.idle:
                continue
            entries = self._take(mq, target, depth, now, now)
            if not entries:
                mq.idle.appendleft(replica)
                break
            mq.cancel_wait()
            self._send_batch(mq, replica, entries, reason, depth, now)
        if self.config.pipeline_depth > 1 and mq.in_flight:
            self._pipeline(mq, now)

    def _take(self, mq: ModelQueue, target: int, depth: int, start: float, now: float) -> list[Entry]:
        """Up to ``target`` entries for a batch that starts at ``start``; those it would answer late get
        the default output now (dropped at dispatch)."""
        if not mq.curve.known:
            return mq.take(target)
        need = mq.curve.seconds_known(min(target, depth))
        late: list[Entry] = []
        entries = mq.take(target, start + need, need, late)
        if late:
            self._drop_late(mq, late, now, need)
        return entries

    def _pipeline(self, mq: ModelQueue, now: float) -> None:
        """Send a full batch to each busy replica that has room for one behind the batch it runs.

        Only a full batch: a partial one would be smaller than waiting in the queue makes
        it, so it waits here for the replica to free (the wait rule, the controller and
        the deadline checks as ever). Nor while an adaptive cap has seen one batch size only:
        the cap is still growing (it probes larger sizes batch by batch), and a batch of the
        size it starts with, sent behind, would hold the queue at that size a batch longer.
        """
        if mq.controller.adaptive and len(mq.curve.by_size) < 2:
            return
        depth_limit = self.config.pipeline_depth
        target = mq.controller.target
        for batch in list(mq.in_flight.values()):
            replica = batch.replica
            if replica.batches[-1] is not batch or not replica.can_pipeline(depth_limit):
                continue
            depth = mq.queued()
            if depth < target:
                return
            # It starts when every batch ahead of it has run.
            entries = self._take(mq, target, depth, max(now, replica.free_at(mq.curve.upper)), now)
            if not entries:
                return
            self._send_batch(mq, replica, entries, FireReason.FULL, depth, now)

    @staticmethod
    def _worth_waiting(mq: ModelQueue, depth: int, target: int, now: float) -> bool:
        timeout_s = mq.spec.batch_wait_timeout_micros * 1e-6
        if timeout_s <= 0:
            return False
        slack = mq.entries[0].query.deadline - now
        need = mq.curve.upper(target) if mq.curve.known else 0.0
        return should_wait(timeout_s, depth, target, mq.arrivals.busy_rate(), slack, need)

    @staticmethod
    def _drop_late(mq: ModelQueue, late: list[Entry], now: float, need: float) -> None:
        mq.dropped_at_dispatch.inc(len(late))
        need_us = round(need * 1e6)
        for entry in late:
            left_us = round((entry.query.deadline - now) * 1e6)
            why = f"would miss the latency objective: {left_us} µs left, the model needs ~{need_us} µs"
            entry.query.default_item(entry.index, why)
            Dispatcher._release(mq, entry, default=why)

    def _wait_over(self, mq: ModelQueue) -> None:
        mq.wait_handle = None
        mq.wait_expired = True
        self._pump(mq)

    def _send_batch(self, mq: ModelQueue, replica: Replica, entries: list[Entry], reason: FireReason,
                    depth: int, now: float) -> None:
        batch = self.pool.start_batch(replica, mq, entries, now)
        mq.in_flight[batch.batch_id] = batch
        self.send_replica(protocol.predict(batch.batch_id, mq.spec.name, mq.spec.version,
                                           [e.meta for e in entries], [e.frame for e in entries],
                                           to=replica.identity))
        mq.note_busy(now)
        mq.batch_size.insert(len(entries))
        mq.queue_size.insert(depth)
        mq.fired[reason].inc()
        self.queueing_delay.insert((now - entries[0].enqueued) * 1e6)

    # ---- replicas and batches (called by frontend.replica_events) ---------------------------

    def check_replica(self, identity: bytes, info: ReplicaInfo) -> None:
        """Refuse (ProtocolError) a HELLO whose input type or shape differs from its model's.

        The model record's input type and shape are the truth; a replica cannot
        redefine them. Without a shape in the record, the first live replica's
        declared shape (or lack of one) is learnt, kept while any replica of
        the model is live, and later HELLOs must declare the same.
        """
        mq = self.queues.get((info.model_name, info.model_version))
        if mq is None:
            return
        if info.input_type != mq.spec.input_type:
            raise ProtocolError(f"replica {short(info.replica_id)} takes {info.input_type.value} input but model "
                                f"{mq.spec.name}:{mq.spec.version} takes {mq.spec.input_type.value}; refused")
        want: list[int] | None
        if mq.spec.input_shape is not None:
            want = mq.spec.input_shape
        elif any(r.identity != identity for r in self.pool.of_model(mq.spec.key)):
            want = mq.replica_shape  # what the live replicas declared (None: no shape)
        else:
            mq.replica_shape = None  # the first live replica declares it (learnt once registered)
            return
        if info.input_shape is not None and info.input_shape != want or (
                info.input_shape is None and mq.spec.input_shape is None and want is not None):
            raise ProtocolError(f"replica {short(info.replica_id)} takes input shape {short(info.input_shape)} but "
                                f"model {mq.spec.name}:{mq.spec.version} takes {want}; refused")

    def replica_registered(self, replica: Replica) -> None:
        """A replica registered: learn its input shape, offer it a batch."""
        mq = self.queues.get(replica.key)
        if mq is None:
            return
        info = replica.info
        if mq.replica_shape is None and info.input_shape:
            mq.replica_shape = list(info.input_shape)
        self.replica_free(replica)

    def replica_free(self, replica: Replica) -> None:
        """Offer ``replica`` the next batch of its model's queue: if it is idle, or has room behind its batch."""
        idle = replica.idle
        if not idle and not replica.can_pipeline(self.config.pipeline_depth):
            return
        mq = self.queues.get(replica.key)
        if mq is not None:
            if idle:
                mq.idle.append(replica)
            self._dirty.add(mq)

    def complete_batch(self, batch: Batch, metas: list, outputs: list, now: float,
                       service_s: float | None = None) -> None:
        """Hand a finished batch's outputs to their queries (in order) and learn from its latency.

        ``service_s`` is the replica's own time on the batch, when it says: the
        curve learns that plus the least overhead seen lately (:func:`learnt_latency`).
        """
        mq, entries = batch.queue, batch.entries
        mq.in_flight.pop(batch.batch_id, None)
        n = len(entries)
        late = 0
        for entry, meta, out in zip(entries, metas, outputs):
            if not entry.query.set_output(entry.index, meta, out):
                late += 1
            if entry.cache_key is not None:
                self._release(mq, entry, meta, out)
        if late:
            mq.late_outputs.inc(late)
        latency_s = now - batch.sent_at
        mq.latency.insert(latency_s * 1e6)
        mq.throughput.mark(n)
        mq.num_predictions.inc(n)
        self.aggregate.mark(n)
        self.aggregate_count.inc(n)
        mq.curve.observe(n, learnt_latency(mq.overhead, now, latency_s, service_s))
        mq.note_busy(now)
        mq.retune(now)

    def fail_batch(self, batch: Batch, err: SchoonerError, now: float) -> None:
        """Answer every query of a failed batch with ``err``."""
        batch.queue.in_flight.pop(batch.batch_id, None)
        for entry in batch.entries:
            entry.query.fail(err)
            self._release(batch.queue, entry, err=err)
        batch.queue.latency.insert((now - batch.sent_at) * 1e6)
        batch.queue.note_busy(now)

    def requeue(self, batches: list[Batch], why: str) -> None:
        """Put lost batches' unanswered queries back at the head of their queue, in order (bounded retries)."""
        for batch in reversed(batches):  # the last first: each goes to the head, so the first ends there
            self._requeue(batch, why)

    def _requeue(self, batch: Batch, why: str) -> None:
        batch.queue.in_flight.pop(batch.batch_id, None)
        keep = []
        mq = batch.queue
        for entry in batch.entries:
            if entry.query.done and not mq.awaited(entry):
                mq.forget(entry)
                continue
            entry.retries += 1
            if entry.retries > self.config.max_batch_retries:
                lost = ReplicaLost(f"{why}; gave up after {entry.retries} tries")
                entry.query.fail(lost)
                self._release(mq, entry, err=lost)
            else:
                keep.append(entry)
        if mq.removed:
            err = NoModel(f"model {mq.spec.name}:{mq.spec.version} was removed")
            for entry in keep:
                entry.query.fail(err)
                self._release(mq, entry, err=err)
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
