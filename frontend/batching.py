"""Per-model-version bounded queues and the batch-size controller (fixed or AIMD)."""

from __future__ import annotations

import collections
import enum
import math
from typing import Any

from frontend import defaults
from frontend.queries import Entry
from frontend.types import ModelSpec


class FireReason(str, enum.Enum):
    """Why a batch was sent to a replica."""

    FULL = "full"  # the queue held at least the target batch size
    TIMEOUT = "timeout"  # batch_wait_timeout_micros passed with a partial batch
    IDLE = "idle"  # a replica was idle and no wait was configured


class BatchSizeController:
    """The batch size a model version dispatches: fixed, or adaptive (AIMD).

    Adaptive (``batch_size == -1``): start at 1; after a *full* batch whose
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
        self.adaptive = batch_size == -1
        self.max_batch_size = max_batch_size
        self.step = step
        self.backoff = backoff
        self.objective_micros = defaults.LATENCY_SLO_MICROS
        self.target = 1 if self.adaptive else batch_size

    def reconfigure(self, batch_size: int, max_batch_size: int) -> None:
        """Apply new batching settings, keeping the learnt size when staying adaptive."""
        was_adaptive = self.adaptive
        self.adaptive = batch_size == -1
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
        prefix = f"model:{spec.name}:{spec.version}:"
        self.latency = metrics.histogram(prefix + "prediction_latency", "microseconds")
        self.batch_size = metrics.histogram(prefix + "batch_size", "queries")
        self.throughput = metrics.meter(prefix + "prediction_throughput")
        self.num_predictions = metrics.counter(prefix + "num_predictions")
        self.queue_size = metrics.histogram(prefix + "queue_size", "queries")
        self.fired = {
            FireReason.FULL: metrics.counter(prefix + "batch_fired_full"),
            FireReason.TIMEOUT: metrics.counter(prefix + "batch_fired_timeout"),
            FireReason.IDLE: metrics.counter(prefix + "batch_fired_idle"),
        }
        self.late_outputs = metrics.counter(prefix + "late_outputs")

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

    def take(self, n: int) -> list[Entry]:
        """Up to ``n`` entries from the head, skipping those whose query is already answered."""
        out: list[Entry] = []
        entries = self.entries
        while entries and len(out) < n:
            entry = entries.popleft()
            if not entry.query.done:
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
