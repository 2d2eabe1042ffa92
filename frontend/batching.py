"""Per-model-version bounded queues, the batch-size controller (fixed or AIMD) and the latency estimate.

Deadline-aware dispatch: each queue keeps a :class:`LatencyEstimate` of how long
a batch of ``n`` takes (PREDICT sent -> RESULT received, an EWMA per batch size).
When a batch is formed, entries whose deadline is earlier than now plus the
estimate for that batch cannot be answered in time; :meth:`ModelQueue.take`
skips them (the dispatcher answers them at once with the app's default output)
and takes later entries instead, so the replica spends its time on queries that
can still meet their objective. Before the first batch there is no estimate and
nothing is skipped; nor is anything skipped when the estimate exceeds a query's
whole objective (no query could make it, and dispatching keeps the estimate
learning).
"""

from __future__ import annotations

import collections
import enum
import math
from typing import Any

from schooner import defaults
from schooner import metric_names as names
from frontend.queries import Entry
from schooner.types import BatchSize, ModelSpec


class FireReason(str, enum.Enum):
    """Why a batch was sent to a replica."""

    FULL = "full"  # the queue held at least the target batch size
    TIMEOUT = "timeout"  # batch_wait_timeout_micros passed with a partial batch
    IDLE = "idle"  # a replica was idle and no wait was configured


def fire_reason(depth: int, target: int, wait_expired: bool, wait_micros: int) -> FireReason | None:
    """The batching rule: why a batch leaves for an idle replica now, or None to wait for a fuller one.

    Full when the queue holds the target size; else, with a batch wait
    (``batch_wait_timeout_micros`` > 0), only once that wait has passed;
    else at once (an idle replica takes what is there).
    """
    if depth >= target:
        return FireReason.FULL
    if wait_expired:
        return FireReason.TIMEOUT
    if wait_micros > 0:
        return None
    return FireReason.IDLE


class BatchSizeController:
    """The batch size a model version dispatches: fixed, or adaptive (AIMD).

    Adaptive (:attr:`BatchSize.ADAPTIVE`): start at 1; after a *full* batch whose
    processing latency (PREDICT sent -> RESULT received) stays within the
    objective, add ``AIMD_ADDITIVE_STEP``; after any batch that misses it, cut
    the size by ``AIMD_BACKOFF_FRACTION`` (at least by one). Bounded by
    ``max_batch_size``. Only full batches grow the size: a partial batch says
    nothing about whether a larger one would still meet the objective.

    The objective is the smallest ``latency_slo_micros`` among the apps linked
    to the model, so the tightest app's queries can still be answered in time
    when a batch is processed within it. With no linked app it is
    ``defaults.LATENCY_SLO_MICROS``.
    """

    def __init__(self, batch_size: int, max_batch_size: int,
                 step: int = defaults.AIMD_ADDITIVE_STEP,
                 backoff: float = defaults.AIMD_BACKOFF_FRACTION) -> None:
        self.adaptive = BatchSize.parse(batch_size).adaptive
        self.max_batch_size = max_batch_size
        self.step = step
        self.backoff = backoff
        self.objective_micros = defaults.LATENCY_SLO_MICROS
        self.target = 1 if self.adaptive else batch_size

    def reconfigure(self, batch_size: int, max_batch_size: int) -> None:
        """Apply new batching settings, keeping the learnt size when staying adaptive."""
        was_adaptive = self.adaptive
        self.adaptive = BatchSize.parse(batch_size).adaptive
        self.max_batch_size = max_batch_size
        if not self.adaptive:
            self.target = batch_size
        elif not was_adaptive:
            self.target = 1
        else:
            self.target = min(self.target, max_batch_size)

    def observe(self, batch_len: int, latency_micros: float) -> None:
        """Learn from one finished batch of ``batch_len`` items."""
        if not self.adaptive:
            return
        if latency_micros > self.objective_micros:
            cut = max(1, math.floor(self.target * self.backoff))
            self.target = max(1, self.target - cut)
        elif batch_len >= self.target:
            self.target = min(self.max_batch_size, self.target + self.step)


class LatencyEstimate:
    """Expected processing latency of a batch, by size: an EWMA per batch size seen.

    A size not seen yet borrows from the nearest size seen: a larger one's
    estimate as is, a smaller one's scaled up linearly (both err on the slow side).
    """

    __slots__ = ("weight", "by_size")

    def __init__(self, weight: float = defaults.LATENCY_EWMA_WEIGHT) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"weight must be in (0, 1], got {weight!r}")
        self.weight = weight
        self.by_size: dict[int, float] = {}

    def observe(self, n: int, latency_s: float) -> None:
        """Learn from one finished batch of ``n`` items."""
        old = self.by_size.get(n)
        self.by_size[n] = latency_s if old is None else old + self.weight * (latency_s - old)

    def seconds(self, n: int) -> float | None:
        """Expected seconds for a batch of ``n``; None before the first batch."""
        by_size = self.by_size
        est = by_size.get(n)
        if est is not None or not by_size:
            return est
        m = min(by_size, key=lambda k: abs(k - n))
        return by_size[m] * (n / m if m < n else 1.0)


class ModelQueue:
    """The bounded FIFO of one model version, its idle replicas and its batching state."""

    def __init__(self, spec: ModelSpec, metrics: Any) -> None:
        self.spec = spec
        self.entries: collections.deque[Entry] = collections.deque()
        self.idle: collections.deque[Any] = collections.deque()  # replicas ready for a batch
        self.controller = BatchSizeController(spec.batch_size, spec.max_batch_size)
        self.wait_handle: Any = None  # Nagle timer while waiting for a fuller batch
        self.wait_expired = False
        self.replica_shape: list[int] | None = None  # input shape the first replica registered
        self.removed = False
        prefix = names.model_prefix(spec.name, spec.version)
        self.latency = metrics.histogram(prefix + names.MODEL_LATENCY, "microseconds")
        self.batch_size = metrics.histogram(prefix + names.MODEL_BATCH_SIZE, "queries")
        self.throughput = metrics.meter(prefix + names.MODEL_THROUGHPUT)
        self.num_predictions = metrics.counter(prefix + names.MODEL_NUM_PREDICTIONS)
        self.queue_size = metrics.histogram(prefix + names.MODEL_QUEUE_SIZE, "queries")
        self.fired = {reason: metrics.counter(prefix + names.MODEL_FIRED.format(reason=reason.value))
                      for reason in FireReason}
        self.late_outputs = metrics.counter(prefix + names.MODEL_LATE_OUTPUTS)
        self.batch_timeouts = metrics.counter(prefix + names.MODEL_BATCH_TIMEOUTS)
        self.dropped_at_dispatch = metrics.counter(prefix + names.MODEL_DROPPED_AT_DISPATCH)
        self.estimate = LatencyEstimate()

    @property
    def input_shape(self) -> list[int] | None:
        """The shape every input must have: the spec's, else the first replica's, else any."""
        return self.spec.input_shape if self.spec.input_shape is not None else self.replica_shape

    def update_spec(self, spec: ModelSpec) -> None:
        """Take new batching settings for the same model version."""
        self.spec = spec
        self.controller.reconfigure(spec.batch_size, spec.max_batch_size)

    def __len__(self) -> int:
        return len(self.entries)

    def has_room(self, n: int) -> bool:
        """Whether ``n`` more entries fit; drops answered queries from the head first if full."""
        limit = self.spec.max_queue_size
        if len(self.entries) + n <= limit:
            return True
        # Answered (mostly expired) queries sit at the head, deadlines being FIFO per app;
        # dropping them from there keeps a rejection O(1) under sustained overload.
        entries = self.entries
        while entries and entries[0].query.done:
            entries.popleft()
        return len(entries) + n <= limit

    def take(self, n: int, cutoff: float = 0.0, need_s: float = 0.0,
             late: list[Entry] | None = None) -> list[Entry]:
        """Up to ``n`` entries from the head, skipping those whose query is already answered.

        With ``late``: entries whose query's deadline is earlier than ``cutoff``
        (now + ``need_s``, the batch's expected latency) are skipped too and
        appended to ``late`` — unless ``need_s`` exceeds the query's whole
        objective, which no dispatch could meet.
        """
        out: list[Entry] = []
        entries = self.entries
        while entries and len(out) < n:
            entry = entries.popleft()
            query = entry.query
            if query.done:
                continue
            if late is not None and query.deadline < cutoff and query.deadline - query.arrival >= need_s:
                late.append(entry)
            else:
                out.append(entry)
        return out

    def requeue(self, entries: list[Entry]) -> None:
        """Put a batch back at the head, in its original order."""
        self.entries.extendleft(reversed(entries))

    def cancel_wait(self) -> None:
        """Stop the Nagle timer, if one runs."""
        if self.wait_handle is not None:
            self.wait_handle.cancel()
            self.wait_handle = None
        self.wait_expired = False
