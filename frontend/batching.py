"""Per-model-version bounded queues and the goodput policy: latency curve, batch-size cap, wait rule.

The latency objective covers queueing plus processing. Each queue learns a
:class:`LatencyCurve` (PREDICT sent -> RESULT received, by batch size) and an
:class:`ArrivalMeter`; from them :class:`BatchSizeController` picks the batch
cap with the most answers within the objective, :func:`should_wait` decides
whether a partial batch is worth holding, and
:func:`frontend.admission.admit` sheds at arrival what cannot make its
deadline. Entries that can no longer make theirs once queued are skipped at
dispatch (:meth:`ModelQueue.take`) and answered at once with the default output.

Everything here is plain arithmetic on times passed in, so it is tested with a
fake clock and no sockets.
"""

from __future__ import annotations

import collections
import enum
import math
from typing import Any

from schooner import defaults
from schooner import metric_names as names
from frontend.cache import PredictionCache
from frontend.queries import Entry
from schooner.types import BatchSize, ModelSpec


class FireReason(str, enum.Enum):
    """Why a batch was sent to a replica."""

    FULL = "full"  # the queue held at least the target batch size
    TIMEOUT = "timeout"  # batch_wait_timeout_micros passed with a partial batch
    IDLE = "idle"  # a replica was idle and waiting was not worth it (or not configured)


class LatencyCurve:
    """Processing latency of a batch by its size, learnt from finished batches.

    Each size seen keeps an EWMA; a line ``a + b·n`` is fitted through them by
    least squares, each size weighted by how recently it was seen (so a change in
    the model's cost moves the whole curve, not just the sizes it was seen at).
    With one size ``m`` seen, sizes up to ``m`` cost what ``m`` costs and larger
    ones scale up linearly (both err on the slow side). ``noise_s`` tracks how far
    batches land from the curve; :meth:`upper` adds two of it.
    """

    def __init__(self, weight: float = defaults.LATENCY_EWMA_WEIGHT,
                 recency: float = defaults.LATENCY_RECENCY) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"weight must be in (0, 1], got {weight!r}")
        if not 0.0 < recency <= 1.0:
            raise ValueError(f"recency must be in (0, 1], got {recency!r}")
        self.weight = weight
        self.recency = recency
        # n -> [EWMA seconds, index of the last batch of n, sign of its last far miss or 0]
        self.by_size: dict[int, list[float]] = {}
        self.batches = 0
        self.noise_s = 0.0
        self._line: tuple[float, float] | None = None  # (a, b) when two or more sizes are seen
        self._single: tuple[int, float] | None = None  # (m, seconds) when one size dominates

    @property
    def known(self) -> bool:
        """Whether any batch has finished yet."""
        return bool(self.by_size)

    @property
    def largest(self) -> int:
        """The largest batch size seen (0 before the first batch)."""
        return max(self.by_size, default=0)

    @property
    def has_slope(self) -> bool:
        """Whether two or more batch sizes have been seen, so the cost of other sizes is not a guess."""
        return self._line is not None

    def observe(self, n: int, latency_s: float) -> None:
        """Learn from one finished batch of ``n`` items.

        A batch far off the estimate (more than the noise explains) is taken as
        a change in cost when the next far one at that size misses the same way,
        and then followed fast; a lone one (a stall of the machine) moves the
        estimate no more than an ordinary miss.
        """
        if self.by_size:
            pred = self.seconds(n)
            miss = min(abs(latency_s - pred), max(4.0 * self.noise_s, 0.2 * pred))
            self.noise_s += 0.25 * self.weight * (miss - self.noise_s)  # slower: it is a margin
        self.batches += 1
        slot = self.by_size.get(n)
        if slot is None:
            self.by_size[n] = [latency_s, self.batches, 0.0]
            self._fit()
            return
        step = latency_s - slot[0]
        bound = max(3.0 * self.noise_s, 0.1 * slot[0])
        far = math.copysign(1.0, step) if abs(step) > bound else 0.0
        if far and far == slot[2]:
            slot[0] += 0.5 * step
        else:
            slot[0] += self.weight * max(-bound, min(bound, step))
        slot[1] = self.batches
        slot[2] = far
        self._fit()

    def _fit(self) -> None:
        w_sum = n_sum = nn_sum = l_sum = nl_sum = 0.0
        for n, (lat, last, _) in self.by_size.items():
            w = self.recency ** (self.batches - last)
            w_sum += w
            n_sum += w * n
            nn_sum += w * n * n
            l_sum += w * lat
            nl_sum += w * n * lat
        det = w_sum * nn_sum - n_sum * n_sum
        if det <= 1e-6 * w_sum * nn_sum:  # effectively one size: no slope to learn from
            m = max(self.by_size, key=lambda k: self.by_size[k][1])
            self._single, self._line = (m, self.by_size[m][0]), None
            return
        b = (w_sum * nl_sum - n_sum * l_sum) / det
        a = (l_sum - b * n_sum) / w_sum
        if b < 0.0:  # noise on a flat curve
            a, b = l_sum / w_sum, 0.0
        elif a < 0.0:
            a, b = 0.0, nl_sum / nn_sum
        self._line, self._single = (a, b), None

    def seconds(self, n: int) -> float:
        """Expected seconds for a batch of ``n`` (0.0 before the first batch)."""
        if self._line is not None:
            a, b = self._line
            return a + b * n
        if self._single is not None:
            m, lat = self._single
            return lat if n <= m else lat * n / m
        return 0.0

    def upper(self, n: int) -> float:
        """Seconds a batch of ``n`` takes at worst, bar outliers: the curve plus twice its noise."""
        return self.seconds(n) + 2.0 * self.noise_s

    def seconds_known(self, n: int) -> float:
        """:meth:`seconds`, except where it is a guess: with one size ``m`` seen, a larger batch is
        taken to cost what ``m`` costs (no batch costs less than a smaller one).

        For what refuses a query only when it cannot make its deadline (admission, dropping at
        dispatch): with one size seen, :meth:`seconds` scales the cost of larger batches up
        linearly from it (the sleep model's 22 ms at 1 became 66 ms at 3, against 26 ms), so
        the first queries of a cold model were refused for a guess.
        """
        single = self._single
        if self._line is None and single is not None and n > single[0]:
            n = single[0]
        return self.seconds(n)

    def upper_known(self, n: int) -> float:
        """:meth:`seconds_known` plus twice the noise, as :meth:`upper` is to :meth:`seconds`."""
        return self.seconds_known(n) + 2.0 * self.noise_s


class OverheadFloor:
    """The least per-batch overhead seen lately: round-trip time a replica did not spend on its batch.

    A batch's latency is the replica's service time (which it reports) plus
    transport and the frontend's own delay in reading the RESULT. That delay
    grows while the frontend works through a flood of messages (a burst of bad
    input, say), and a curve that learnt it would shed good queries for the
    flood's sake. The least overhead over ``window_s`` is what every batch pays
    anyway; a window (not all time) follows a lasting change, such as a slower
    network. A sliding-window minimum: O(1) amortised per batch.
    """

    def __init__(self, window_s: float = defaults.OVERHEAD_WINDOW_S) -> None:
        self.window_s = window_s
        self._mins: collections.deque[tuple[float, float]] = collections.deque()  # (time, overhead), rising

    def observe(self, now: float, overhead_s: float) -> float:
        """Record one batch's overhead at ``now``; the least overhead within the window, this one included."""
        mins = self._mins
        overhead_s = max(0.0, overhead_s)
        while mins and mins[-1][1] >= overhead_s:
            mins.pop()
        mins.append((now, overhead_s))
        horizon = now - self.window_s
        while mins[0][0] < horizon:
            mins.popleft()
        return mins[0][1]


def learnt_latency(floor: OverheadFloor, now: float, latency_s: float, service_s: float | None) -> float:
    """What a batch teaches the latency curve: its service time plus the overhead floor.

    Without a service time (a replica that does not report one) it is the latency as seen.
    """
    if service_s is None or not 0.0 <= service_s <= latency_s:
        return latency_s
    return service_s + floor.observe(now, latency_s - service_s)


class ArrivalMeter:
    """Arrival rate of items, with exponential forgetting, and the rate while the model is busy.

    "Busy" means queries are queued or a batch is in flight. The busy rate is
    what the wait rule needs: with one closed-loop client nothing ever arrives
    while its query is outstanding, however fast it sends; with open-loop
    Poisson arrivals it is the plain rate.

    The rate counts from the first arrival of a stream (the first after a gap
    of ``RESTART_HORIZONS`` horizons or more): ``n`` arrivals ``t`` after it are
    ``(n − 1)/t`` items per second while ``t`` is short of the horizon, not
    ``n/horizon``. A model's first traffic is then seen at its rate within a
    few arrivals, where a plain exponential average needs most of a horizon
    (0.5 s) to ramp up, and the batch cap and admission plan for a fraction of
    the load meanwhile.
    """

    RESTART_HORIZONS = 5.0  # a gap this long (in horizons) starts a new stream: what came before is < 1 %

    def __init__(self, horizon_s: float = defaults.ARRIVAL_HORIZON_S) -> None:
        if horizon_s <= 0:
            raise ValueError(f"horizon_s must be positive, got {horizon_s!r}")
        self.horizon_s = horizon_s
        self.count = 0.0  # decayed arrivals
        self.busy_count = 0.0  # decayed arrivals that found the model busy
        self.busy_s = 0.0  # decayed time spent busy
        self.busy = False
        self.last: float | None = None
        self.first: float | None = None  # when the current stream's first arrival came
        self.first_items = 0

    def _advance(self, now: float) -> None:
        if self.last is None:
            self.last = now
            return
        dt = now - self.last
        if dt <= 0:
            return
        d = math.exp(-dt / self.horizon_s)
        self.count *= d
        self.busy_count *= d
        self.busy_s = self.busy_s * d + (self.horizon_s * (1.0 - d) if self.busy else 0.0)
        self.last = now

    def arrive(self, now: float, items: int, busy: bool) -> None:
        """``items`` arrived at ``now``; ``busy``: the model had work outstanding when they did."""
        if self.first is None or (self.last is not None and now - self.last >= self.RESTART_HORIZONS * self.horizon_s):
            self.first, self.first_items, self.count = now, items, 0.0
        self._advance(now)
        self.count += items
        if busy:
            self.busy_count += items

    def set_busy(self, now: float, busy: bool) -> None:
        """The model has (or no longer has) work outstanding from ``now``."""
        self._advance(now)
        self.busy = busy

    def rate(self, now: float) -> float:
        """Items per second lately (0.0 before two arrivals; see the class docstring)."""
        if self.last is None or self.first is None:
            return 0.0
        h = self.horizon_s
        age = max(0.0, now - self.first)
        window = h * -math.expm1(-age / h)  # the horizon, or less while the stream is younger than it
        if window <= 0.0:
            return 0.0
        count = self.count * math.exp(-max(0.0, now - self.last) / h) - self.first_items * math.exp(-age / h)
        return max(0.0, count) / window

    def busy_rate(self) -> float | None:
        """Items per second arriving while the model is busy; None until it has been busy a while."""
        if self.busy_s < 0.01 * self.horizon_s:
            return None
        return self.busy_count / self.busy_s


def should_wait(timeout_s: float, depth: int, target: int, busy_rate: float | None,
                slack_s: float, need_s: float) -> bool:
    """Whether to hold a partial batch of ``depth`` for up to ``timeout_s`` (the wait rule).

    Only when another query is expected within the wait (from the arrival rate
    while busy), the batch is not full, and the oldest query (``slack_s`` left)
    can still afford the wait plus the full batch (``need_s``).
    """
    if timeout_s <= 0 or depth >= target or busy_rate is None:
        return False
    return busy_rate * timeout_s >= 1.0 and slack_s - timeout_s >= need_s


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
    """The batch size a model version dispatches: fixed, or chosen for goodput.

    Adaptive (:attr:`BatchSize.ADAPTIVE`) picks the cap ``n`` (at most
    ``max_batch_size``) that maximises the predicted rate of answers within the
    objective ``S`` (less ``margin``), from the latency curve, the arrival rate
    ``λ`` and the number of replicas ``R``. ``S`` is what is left of the
    app's objective when queries reach the queue (``entry_age_s``: an HTTP
    query may have waited for the frontend to read and parse it), down to half
    of it at most. A query's latency is its wait for
    the batch ahead plus its own batch, so:

    - a cap that keeps up settles at the batch ``k`` that arrives during one
      batch (``k = λ/R · L(k)``, with 20 % headroom below the cap); everything
      is answered if ``2·L(k) ≤ S``, else only what arrives in the last
      ``S − L(k)`` of a batch;
    - a saturated cap runs full batches: ``R·n/L(n)`` answers per second when
      ``2·L(n) ≤ S``, else only the ``λ/R·(S − L(n))`` per batch that arrive
      late enough to make it (admission sheds the rest).

    Among caps within 2 % of the best, the largest whose batch fits in half the
    objective wins (a burst then costs nobody their deadline), else the
    smallest. Caps beyond twice the largest batch seen are not considered: the
    curve is a guess there. While only one size ``m`` is seen and the load is
    more than it serves, the cap probes the largest size up to ``2m`` that fits
    the objective even at the linear guess (:meth:`_probe`), so the slope is
    learnt. A new cap that differs by 5 % (and by two above 20)
    is taken at once; a smaller change only when proposed three times running,
    so noise in the curve does not make the cap jitter.
    """

    def __init__(self, batch_size: int, max_batch_size: int,
                 margin: float = defaults.SLO_MARGIN_FRACTION,
                 headroom: float = defaults.CAPACITY_HEADROOM_FRACTION) -> None:
        self.adaptive = BatchSize.parse(batch_size).adaptive
        self.max_batch_size = max_batch_size
        self.margin = margin
        self.headroom = headroom
        self.objective_micros = defaults.LATENCY_SLO_MICROS
        self.entry_age_s = 0.0  # how old queries are when they reach the queue, lately (see ModelQueue)
        self.target = 1 if self.adaptive else batch_size
        self._proposed = 0
        self._streak = 0

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

    def _slo_s(self) -> float:
        # What the cap plans for, a hair over so that a curve landing exactly on it counts as fitting:
        # what is left of the objective when queries reach the queue.
        left = max(0.5 * self.objective_micros * 1e-6, self.objective_micros * 1e-6 - self.entry_age_s)
        return left * (1.0 - self.margin) * (1.0 + 1e-9)

    def goodput(self, n: int, curve: LatencyCurve, rate: float, replicas: int, settled: int) -> float:
        """Predicted answers per second within the objective with a cap of ``n``.

        ``settled`` is the batch that arrives while a batch of its own size runs
        (see :func:`settled_batch`).
        """
        slo = self._slo_s()
        lat = curve.upper(n)
        if lat <= 0.0 or lat > slo:
            return 0.0
        per_replica = rate / replicas
        capacity = n / lat
        if settled * (1.0 + self.headroom) <= n:  # keeps up, with room for bursts
            lk = curve.upper(settled)
            if 2.0 * lk <= slo:
                return rate
            return rate * max(0.0, slo - lk) / lk
        if 2.0 * lat <= slo:
            return min(rate, replicas * capacity / (1.0 + self.headroom))
        return min(rate, replicas * min(n, per_replica * (slo - lat)) / lat / (1.0 + self.headroom))

    def update(self, curve: LatencyCurve, rate: float, replicas: int) -> int:
        """Re-choose the cap from the curve, the arrival rate (items/s) and live replicas; returns it."""
        if not self.adaptive or not curve.known:
            return self.target
        best_n = self.best(curve, rate, max(1, replicas))
        if best_n == self.target:
            self._streak = 0
            return self.target
        # A big change is taken at once; a small one only when proposed three times running,
        # so a curve that wobbles by one does not make the cap jitter.
        if abs(best_n - self.target) >= max(1, 0.05 * self.target) and (self.target < 20 or abs(best_n - self.target) >= 2):
            self.target, self._streak = best_n, 0
        elif best_n == self._proposed:
            self._streak += 1
            if self._streak >= 3:
                self.target, self._streak = best_n, 0
        else:
            self._proposed, self._streak = best_n, 1
        return self.target

    def best(self, curve: LatencyCurve, rate: float, replicas: int) -> int:
        """The cap with the most predicted goodput (ties: see the class docstring)."""
        slo = self._slo_s()
        # The curve is trusted only near what was seen: at most double the largest batch so far.
        sizes = range(1, min(self.max_batch_size, 2 * curve.largest) + 1)
        half = [n for n in sizes if 2.0 * curve.upper(n) <= slo]
        n_safe = half[-1] if half else 1
        if rate <= 0.0:
            return n_safe
        settled = settled_batch(rate / replicas, curve, self.max_batch_size)
        scores = [self.goodput(n, curve, rate, replicas, settled) for n in sizes]
        top = max(scores)
        if top <= 0.0:
            return n_safe
        near = [n for n, g in zip(sizes, scores) if g >= 0.98 * top]
        within_half = [n for n in near if n <= n_safe]
        choice = within_half[-1] if within_half else near[0]
        return max(choice, self._probe(curve, rate, replicas, slo))

    def _probe(self, curve: LatencyCurve, rate: float, replicas: int, slo: float) -> int:
        """With only one size ``m`` ever seen and more load than it serves: the largest size up to ``2m``
        whose cost, guessed linearly from ``m`` (the slow side), still fits the objective; else 0.

        Scored on that guess, a larger batch serves no more than ``m`` does (``n/(n/m·L(m))``), so
        without a probe a cold model stays at the size it started with however far behind it falls.
        """
        m = curve.largest
        if len(curve.by_size) != 1 or rate * curve.upper(m) * (1.0 + self.headroom) <= replicas * m:
            return 0
        fits = [n for n in range(m + 1, min(self.max_batch_size, 2 * m) + 1) if curve.upper(n) <= slo]
        return fits[-1] if fits else 0


def settled_batch(per_replica: float, curve: LatencyCurve, cap: int) -> int:
    """The batch size ``k`` that arrives while a batch of ``k`` runs (``k = λ·L(k)``), at most ``cap``."""
    k = 1.0
    for _ in range(50):
        nxt = max(1.0, per_replica * curve.upper(max(1, math.ceil(k))))
        if nxt >= cap:
            return cap
        if abs(nxt - k) < 0.01:
            break
        k = nxt
    return max(1, math.ceil(k))


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
        self.shed_at_arrival = metrics.counter(prefix + names.MODEL_SHED_AT_ARRIVAL)
        self.target_gauge = metrics.gauge(prefix + names.MODEL_BATCH_SIZE_TARGET)
        self.target_gauge.set(self.controller.target)
        self.curve = LatencyCurve()
        self.overhead = OverheadFloor()
        self.arrivals = ArrivalMeter()
        self.in_flight: dict[int, Any] = {}  # batch_id -> Batch, kept by the Dispatcher
        self.cache = PredictionCache(spec.cache_size_bytes) if spec.cache_enabled else None
        self.cache_hit_ratio = metrics.ratio_counter(prefix + names.MODEL_CACHE_HIT_RATIO)
        self.cache_lookups = metrics.counter(prefix + names.MODEL_CACHE_LOOKUPS)
        self.cache_bytes = metrics.gauge(prefix + names.MODEL_CACHE_BYTES)
        self._retuned_at = -math.inf
        self.entry_age_s = 0.0  # EWMA of how old queries are when they are queued (arrival to submit)

    def live_replicas(self) -> int:
        """Replicas of this version that hold a batch or are idle and ready for one."""
        idle = sum(1 for r in self.idle if r.idle)
        return len({b.replica for b in self.in_flight.values()}) + idle

    def busy(self) -> bool:
        """Whether queries are queued or a batch is in flight."""
        return bool(self.entries) or bool(self.in_flight)

    def note_busy(self, now: float) -> None:
        """Tell the arrival meter whether the model is busy from ``now``."""
        self.arrivals.set_busy(now, bool(self.entries) or bool(self.in_flight))

    def retune(self, now: float, force: bool = False) -> int:
        """Re-choose the batch cap (at most every RETUNE_INTERVAL_S unless forced); returns it."""
        ctl = self.controller
        if ctl.adaptive and (force or now - self._retuned_at >= defaults.RETUNE_INTERVAL_S):
            self._retuned_at = now
            ctl.entry_age_s = self.entry_age_s
            ctl.update(self.curve, self.arrivals.rate(now), self.live_replicas())
            self.target_gauge.set(ctl.target)
        return ctl.target

    def free_times(self, now: float) -> list[float]:
        """When each live replica is expected to be free for the next batch, soonest first.

        A replica's batches run one after the other (in the order sent, which
        ``in_flight`` keeps): it is free when the last one is expected to end.
        For admission: the cost of a size not seen yet is not guessed upwards
        (:meth:`LatencyCurve.upper_known`).
        """
        upper = self.curve.upper_known
        busy = dict.fromkeys(b.replica for b in self.in_flight.values())
        times = [max(now, replica.free_at(upper)) for replica in busy]
        times.extend(now for r in self.idle if r.idle)
        times.sort()
        return times

    def can_shed(self) -> bool:
        """Whether admission knows enough to shed: a fixed cap's batches seen, or an adaptive cap's curve.

        An adaptive cap starts at 1 and grows as the curve is learnt; shedding by the
        cost of that first guess would turn away queries the grown cap will serve.
        """
        return self.curve.has_slope if self.controller.adaptive else self.curve.known

    def queued(self) -> int:
        """Entries waiting (answered ones at the head are dropped first)."""
        entries = self.entries
        while entries and entries[0].query.done and not self.awaited(entries[0]):
            self.forget(entries.popleft())
        return len(entries)

    def awaited(self, entry: Entry) -> bool:
        """Whether identical queries wait for this entry's output (it is sent even if its own query is done)."""
        return entry.cache_key is not None and self.cache is not None and self.cache.has_waiters(entry.cache_key)

    def forget(self, entry: Entry) -> None:
        """An entry leaves the queue unsent: identical inputs no longer wait for it."""
        if entry.cache_key is not None and self.cache is not None:
            self.cache.waiters(entry.cache_key)

    @property
    def input_shape(self) -> list[int] | None:
        """The shape every input must have: the spec's, else the first replica's, else any."""
        return self.spec.input_shape if self.spec.input_shape is not None else self.replica_shape

    def update_spec(self, spec: ModelSpec) -> None:
        """Take new batching settings for the same model version."""
        self.spec = spec
        self.controller.reconfigure(spec.batch_size, spec.max_batch_size)
        self.target_gauge.set(self.controller.target)
        if not spec.cache_enabled:
            self.cache = None
        elif self.cache is None:
            self.cache = PredictionCache(spec.cache_size_bytes)
        else:
            self.cache.resize(spec.cache_size_bytes)

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
        while entries and entries[0].query.done and not self.awaited(entries[0]):
            self.forget(entries.popleft())
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
            if query.done and not self.awaited(entry):
                self.forget(entry)
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
