"""A client query in flight: its items, their outputs, and the one completion it always gets.

A query (one ZMQ QUERY or one HTTP request) holds ``n`` items; each item becomes
one :class:`Entry` in its model's queue. The query completes exactly once: when
every item has an output (real or default), when its deadline passes (missing
items get the app's default output), or with a named error.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

from schooner import defaults
from schooner import metric_names as names
from schooner.errors import SchoonerError

# An item on the wire: its ``[kind, dtype, shape]`` meta and its payload frame.
STRING_META = ["s", None, None]


class DeadlineWheel:
    """Expires an app's queries at their deadlines with one loop timer, not one per query.

    Every query of an app has the same objective, so deadlines arrive in about
    FIFO order: a deque kept sorted, and a timer armed for the head. (About: an
    HTTP query's arrival is when its request came, and a big body is parsed on
    a thread, so one may be added after a later one; it goes in its place,
    found from the tail.) Answered queries leave the
    deque from its head, when the next query is added or the timer fires, so
    the deque holds (about) the queries still unanswered, not every query of
    the last objective's worth of time (with a 30 s objective at 1,500 q/s,
    45,000 answered queries and their outputs).
    """

    __slots__ = ("queries", "handle")

    def __init__(self) -> None:
        self.queries: collections.deque[Query] = collections.deque()
        self.handle: Any = None

    def add(self, query: Query, loop: Any) -> None:
        """Expire ``query`` at its deadline unless it is answered first."""
        queries = self.queries
        while queries and queries[0].done:
            queries.popleft()
        deadline = query.deadline
        if not queries or queries[-1].deadline <= deadline:
            queries.append(query)
        else:
            at = len(queries) - 1
            while at > 0 and queries[at - 1].deadline > deadline:
                at -= 1
            queries.insert(at, query)
            if at == 0 and self.handle is not None:  # a new head: the timer is for it now
                self.handle.cancel()
                self.handle = None
        if self.handle is None:
            self.handle = loop.call_at(queries[0].deadline, self._fire, loop)

    def _fire(self, loop: Any) -> None:
        self.handle = None
        queries = self.queries
        now = loop.time()
        while queries and (queries[0].done or queries[0].deadline <= now):
            queries.popleft().expire()
        while queries and queries[0].done:
            queries.popleft()
        if queries:
            self.handle = loop.call_at(queries[0].deadline, self._fire, loop)


class AppRoute:
    """What the hot path needs about an app: its spec, default output, metrics and deadline wheel."""

    __slots__ = ("spec", "default_frame", "explanation", "latency", "throughput", "num_predictions",
                 "default_ratio", "deadlines", "wait_budget_s", "standing_s", "over_budget_since")

    def __init__(self, spec: Any, metrics: Any) -> None:
        self.spec = spec
        self.default_frame = spec.default_output.encode("utf-8")
        self.explanation = (f"no output within the app's latency objective of "
                            f"{spec.latency_slo_micros} microseconds")
        prefix = names.app_prefix(spec.name)
        self.latency = metrics.histogram(prefix + names.APP_LATENCY, "microseconds")
        self.throughput = metrics.meter(prefix + names.APP_THROUGHPUT)
        self.num_predictions = metrics.counter(prefix + names.APP_NUM_PREDICTIONS)
        self.default_ratio = metrics.ratio_counter(prefix + names.APP_DEFAULT_RATIO)
        self.deadlines = DeadlineWheel()
        # Overload control at the frontend itself (behind): how long a query may wait for it
        # to be read, how long waits over that make a standing queue, and since when they have been (0: not).
        slo_s = spec.latency_slo_micros * 1e-6
        self.wait_budget_s = max(defaults.LOOP_LAG_FLOOR_S, defaults.FRONTEND_WAIT_SHARE * slo_s)
        self.standing_s = defaults.FRONTEND_STANDING_SLOS * slo_s
        self.over_budget_since = 0.0

    def behind(self, waited_s: float, now: float) -> bool:
        """Whether a ZMQ query of this app read at ``now``, after waiting ``waited_s`` in the
        frontend's socket, is refused for that wait (429 ``overloaded``).

        This is overload control, not a prediction: a frontend offered more than its core
        serves refuses what waits longer than ``FRONTEND_WAIT_SHARE`` of its objective
        (``wait_budget_s``), so its own queue stays that short and what it admits has the rest
        of the objective for its model. Refusing only what had waited too long to make it at
        all (the objective less the model's cost) held the wait at about that much: with
        elastic-net's 20 ms objective at 3,000 q/s of 84 KB HTTP bodies, every query admitted
        reached its model's queue with a few ms left, and none was answered in time.

        But only a standing queue is refused for, as CoDel drops only for one: every query of the
        app read for ``standing_s`` (an objective) had waited over its budget. A single long
        stretch of the loop (a slow callback, the core taken by another process for a time
        slice) ends by itself and costs only the queries it made too late, which admission
        finds by their deadlines, the wait counted: refusing at the first wait over the
        budget shed 5.6 % of elastic-net's queries over ZMQ at half its capacity (0.3 % before
        the wait was counted at all).
        """
        if waited_s < self.wait_budget_s:
            self.over_budget_since = 0.0
            return False
        if not self.over_budget_since:
            self.over_budget_since = now
        return now - self.over_budget_since >= self.standing_s


class Query:
    """One client request of ``n`` items; ``on_done(query, error)`` is called exactly once."""

    __slots__ = ("query_id", "app", "n", "metas", "frames", "defaults", "remaining", "done", "arrival",
                 "deadline", "timer", "on_done", "client_id", "peer", "n_defaults", "explanation")

    def __init__(self, query_id: int, app: AppRoute, n: int, arrival: float,
                 on_done: Callable[[Query, SchoonerError | None], None]) -> None:
        self.query_id = query_id
        self.app = app
        self.n = n
        self.metas: list[Any] = [None] * n
        self.frames: list[Any] = [None] * n
        self.defaults: list[bool] = [False] * n
        self.remaining = n
        self.done = False
        self.arrival = arrival
        self.deadline = arrival + app.spec.latency_slo_micros * 1e-6
        self.timer: Any = None
        self.on_done = on_done
        self.client_id: Any = None  # ZMQ: the client's request id
        self.peer: Any = None  # ZMQ: the ROUTER identity frame; HTTP: the future
        self.n_defaults = 0
        self.explanation = ""

    def set_output(self, index: int, meta: Any, frame: Any) -> bool:
        """Record item ``index``'s output; False if the query was already answered (a late output)."""
        if self.done:
            return False
        if self.metas[index] is None:
            self.metas[index] = meta
            self.frames[index] = frame
            self.remaining -= 1
            if self.remaining == 0:
                self._finish(None)
        return True

    def expire(self, explanation: str = "") -> None:
        """Answer every item still missing with the app's default output."""
        if self.done:
            return
        default = self.app.default_frame
        for i in range(self.n):
            if self.metas[i] is None:
                self.metas[i] = STRING_META
                self.frames[i] = default
                self.defaults[i] = True
                self.n_defaults += 1
        self.remaining = 0
        self.explanation = explanation or self.app.explanation
        self._finish(None)

    def default_item(self, index: int, explanation: str) -> None:
        """Answer item ``index`` with the app's default output now (it cannot be answered in time)."""
        if self.done or self.metas[index] is not None:
            return
        self.metas[index] = STRING_META
        self.frames[index] = self.app.default_frame
        self.defaults[index] = True
        self.n_defaults += 1
        self.explanation = explanation
        self.remaining -= 1
        if self.remaining == 0:
            self._finish(None)

    def fail(self, error: SchoonerError) -> None:
        """Answer the whole query with ``error`` (no-op once answered)."""
        if not self.done:
            self._finish(error)

    def _finish(self, error: SchoonerError | None) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.on_done(self, error)


class Entry:
    """One item of a query waiting in (or dispatched from) a model queue."""

    __slots__ = ("query", "index", "meta", "frame", "enqueued", "retries", "cache_key")

    def __init__(self, query: Query, index: int, meta: Any, frame: Any, enqueued: float) -> None:
        self.query = query
        self.index = index
        self.meta = meta
        self.frame = frame
        self.enqueued = enqueued
        self.retries = 0
        self.cache_key: tuple | None = None  # set when identical inputs wait for this entry's output
