"""The batching core on a fake clock: no sockets, no sleeps, no threads.

BatchSizeController, LatencyCurve, ModelQueue.take/has_room/requeue,
DeadlineWheel and the edge validators (split_items, validate_items).
"""

from __future__ import annotations

import numpy as np
import pytest

from frontend.admission import split_items, validate_items
from frontend.batching import BatchSizeController, FireReason, LatencyCurve, ModelQueue, fire_reason
from frontend.metrics import MetricsRegistry
from frontend.queries import AppRoute, DeadlineWheel, Entry, Query
from schooner.errors import BadInput, ProtocolError
from schooner.types import AppSpec, BatchSize, InputType, ModelSpec


class FakeLoop:
    """The two loop calls the deadline wheel makes, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, fn, *args) -> FakeTimer:
        timer = FakeTimer(when, fn, args)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move the clock and run every timer now due, in order."""
        self.now += seconds
        while True:
            due = sorted((t for t in self.timers if not t.cancelled and t.when <= self.now), key=lambda t: t.when)
            if not due:
                return
            for timer in due:
                self.timers.remove(timer)
                timer.fn(*timer.args)


class FakeTimer:
    def __init__(self, when: float, fn, args: tuple) -> None:
        self.when, self.fn, self.args, self.cancelled = when, fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


def _app(slo_micros: int = 100_000) -> AppRoute:
    return AppRoute(AppSpec("a", InputType.FLOATS, latency_slo_micros=slo_micros), MetricsRegistry())


def _query(app: AppRoute, arrival: float, n: int = 1, answers: list | None = None) -> Query:
    def done(query: Query, err) -> None:
        if answers is not None:
            answers.append((query, err))
    return Query(0, app, n, arrival, done)


def _queue(**spec) -> ModelQueue:
    return ModelQueue(ModelSpec("m", "1", InputType.FLOATS, **spec), MetricsRegistry())


# -- BatchSizeController (its policy: tests/test_goodput_policy.py) ---------------------------------

def _curve(cost, sizes=(1, 2, 4, 8)) -> LatencyCurve:
    curve = LatencyCurve()
    for n in sizes:
        curve.observe(n, cost(n))
    return curve


def test_fixed_batch_size_never_moves():
    ctl = BatchSizeController(8, 64)
    assert not ctl.adaptive and ctl.target == 8
    assert ctl.update(_curve(lambda n: 1e3 * n), 1e6, 1) == 8
    assert ctl.update(_curve(lambda n: 1e-6 * n), 1.0, 1) == 8


def test_adaptive_starts_at_one_and_stays_put_before_any_batch():
    ctl = BatchSizeController(BatchSize.ADAPTIVE, 4)
    assert ctl.adaptive and ctl.target == 1
    assert ctl.update(LatencyCurve(), 1000.0, 1) == 1


def test_adaptive_is_bounded_by_max_batch_size():
    ctl = BatchSizeController(-1, 4)
    ctl.objective_micros = 1_000_000
    assert ctl.update(_curve(lambda n: 0.001 * n), 100.0, 1) == 4


def test_reconfigure_keeps_the_learnt_size_while_adaptive_and_resets_on_a_switch():
    ctl = BatchSizeController(-1, 64)
    ctl.target = 40
    ctl.reconfigure(-1, 32)
    assert ctl.target == 32
    ctl.reconfigure(5, 32)
    assert not ctl.adaptive and ctl.target == 5
    ctl.reconfigure(-1, 32)
    assert ctl.adaptive and ctl.target == 1


# -- LatencyCurve ------------------------------------------------------------------------------------

def test_latency_curve_is_an_ewma_per_batch_size_with_a_line_through_them():
    curve = LatencyCurve(weight=0.5)
    assert not curve.known and curve.seconds(4) == 0.0
    curve.observe(4, 1.0)
    curve.observe(4, 1.1)
    assert curve.seconds(4) == pytest.approx(1.05)
    curve.observe(2, 0.55)
    assert curve.has_slope and curve.seconds(6) > curve.seconds(4)


def test_sizes_above_the_one_seen_scale_up_on_the_slow_side():
    curve = LatencyCurve(weight=1.0)
    curve.observe(8, 0.020)
    assert curve.seconds(1) == pytest.approx(0.020)  # a larger size's cost as is
    assert curve.seconds(16) == pytest.approx(0.040)  # scaled up linearly
    assert curve.largest == 8 and not curve.has_slope


@pytest.mark.parametrize("weight", [0.0, -0.1, 1.5])
def test_latency_curve_weight_must_be_in_zero_one(weight):
    with pytest.raises(ValueError, match="weight"):
        LatencyCurve(weight)


# -- ModelQueue ------------------------------------------------------------------------------------

def test_take_skips_answered_queries_and_keeps_fifo_order():
    mq, app = _queue(), _app()
    queries = [_query(app, 0.0) for _ in range(4)]
    mq.entries.extend(Entry(q, 0, None, b"", 0.0) for q in queries)
    queries[1].fail(BadInput("gone"))
    taken = mq.take(2)
    assert [e.query for e in taken] == [queries[0], queries[2]] and len(mq) == 1


def test_take_sets_aside_entries_that_would_miss_their_deadline():
    mq, app = _queue(), _app(slo_micros=100_000)  # deadline = arrival + 0.1 s
    early, late_one = _query(app, arrival=0.0), _query(app, arrival=0.05)
    mq.entries.extend([Entry(early, 0, None, b"", 0.0), Entry(late_one, 0, None, b"", 0.05)])
    late: list[Entry] = []
    now, need = 0.06, 0.05  # the batch would finish at 0.11: too late for `early` (0.10), fine for 0.15
    taken = mq.take(2, now + need, need, late)
    assert [e.query for e in taken] == [late_one] and [e.query for e in late] == [early]


def test_take_sends_everything_when_no_query_could_make_it():
    mq, app = _queue(), _app(slo_micros=10_000)
    q = _query(app, arrival=0.0)
    mq.entries.append(Entry(q, 0, None, b"", 0.0))
    late: list[Entry] = []
    need = 0.05  # more than the whole 10 ms objective: skipping would starve the estimate
    assert [e.query for e in mq.take(1, 0.009 + need, need, late)] == [q] and late == []


def test_full_queue_has_room_again_once_its_head_is_answered():
    mq, app = _queue(max_queue_size=2), _app()
    a, b = _query(app, 0.0), _query(app, 0.0)
    mq.entries.extend([Entry(a, 0, None, b"", 0.0), Entry(b, 0, None, b"", 0.0)])
    assert not mq.has_room(1)
    a.expire()
    assert mq.has_room(1) and len(mq) == 1


def test_requeue_puts_a_batch_back_at_the_head_in_order():
    mq, app = _queue(), _app()
    entries = [Entry(_query(app, 0.0), 0, None, b"", 0.0) for _ in range(3)]
    mq.entries.append(entries[2])
    mq.requeue(entries[:2])
    assert list(mq.entries) == entries


# -- DeadlineWheel ---------------------------------------------------------------------------------

def test_deadline_wheel_expires_queries_in_order_with_one_timer():
    loop, app, answers = FakeLoop(), _app(slo_micros=100_000), []
    wheel = DeadlineWheel()
    q1, q2, q3 = (_query(app, arrival=t, answers=answers) for t in (0.0, 0.02, 0.04))
    for q in (q1, q2, q3):
        wheel.add(q, loop)
    assert len([t for t in loop.timers if not t.cancelled]) == 1
    q2.set_output(0, ["s", None, None], b"real")  # answered before its deadline
    loop.advance(0.1)
    assert q1.done and q1.defaults == [True] and not q3.done
    loop.advance(0.05)
    assert q3.done and q3.defaults == [True]
    assert [q for q, _ in answers] == [q2, q1, q3] and q2.defaults == [False]
    assert not wheel.queries and wheel.handle is None


def test_a_query_added_after_a_later_deadline_is_expired_at_its_own():
    # An HTTP query's arrival is when its request came, and a big body is parsed on a thread, so a
    # query can be added behind one whose deadline is later than its own.
    loop, app, answers = FakeLoop(), _app(slo_micros=100_000), []
    wheel = DeadlineWheel()
    first, second, early, earliest = (_query(app, arrival=t, answers=answers) for t in (0.03, 0.05, 0.04, 0.01))
    for q in (first, second, early, earliest):
        wheel.add(q, loop)
    assert [q.deadline for q in wheel.queries] == sorted(q.deadline for q in wheel.queries)
    assert len([t for t in loop.timers if not t.cancelled]) == 1  # re-armed for the new head
    loop.advance(0.111)  # deadlines: earliest 0.11, first 0.13, early 0.14, second 0.15
    assert [q for q, _ in answers] == [earliest]
    loop.advance(0.02)
    assert [q for q, _ in answers] == [earliest, first]
    loop.advance(0.01)
    assert [q for q, _ in answers] == [earliest, first, early] and not second.done
    loop.advance(0.01)
    assert second.done and not wheel.queries


def test_answered_queries_leave_the_deadline_wheel_without_waiting_for_their_deadline():
    # A 30 s objective and every query answered at once: the wheel must not hold 30 s of answered
    # queries (and their outputs) until the timer reaches them.
    loop, app, answers = FakeLoop(), _app(slo_micros=30_000_000), []
    wheel = DeadlineWheel()
    for i in range(10_000):
        q = _query(app, arrival=i * 1e-3, answers=answers)
        wheel.add(q, loop)
        q.set_output(0, ["s", None, None], b"real")
    assert len(wheel.queries) == 1 and len(answers) == 10_000
    slow = _query(app, arrival=10.0, answers=answers)
    wheel.add(slow, loop)  # one still waiting: it and what comes after it are kept
    loop.advance(45.0)
    assert slow.done and slow.defaults == [True]


# -- validators -------------------------------------------------------------------------------------

def test_a_stacked_batch_splits_into_zero_copy_slices():
    arr = np.arange(6, dtype=np.float32).reshape(3, 2)
    metas, frames = split_items({"stack": ["<f4", [3, 2]]}, [arr.tobytes()], 100)
    assert metas == [["a", "<f4", [2]]] * 3
    assert [np.frombuffer(f, np.float32).tolist() for f in frames] == [[0, 1], [2, 3], [4, 5]]


@pytest.mark.parametrize("meta, frames, message", [
    ({"stack": ["<f4", [3, 2]]}, [b"x" * 25], "does not hold"),
    ({"stack": ["<f4"]}, [b""], "stacked"),
    ({"stack": ["<f4", []]}, [b""], "shape"),
    ({"list": [["a", "<f4", [1]]]}, [], "frames"),
    ("nonsense", [], "items"),
])
def test_items_that_disagree_with_their_frames_are_protocol_errors(meta, frames, message):
    with pytest.raises(ProtocolError, match=message):
        split_items(meta, frames, 100)


def test_valid_items_pass():
    one = np.ones(4, np.float32).tobytes()
    validate_items([["a", "<f4", [4]]], [one], InputType.FLOATS, [4], 1024)
    validate_items([["s", None, None]], ["héllo".encode()], InputType.STRINGS, None, 1024)
    validate_items([["b", None, None]], [b"\xff"], InputType.BYTES, None, 1024)


@pytest.mark.parametrize("meta, frame, input_type, shape, message", [
    (["a", "<i4", [4]], np.ones(4, np.int32).tobytes(), InputType.FLOATS, None, "floats"),
    (["s", None, None], b"x", InputType.FLOATS, None, "kind"),
    (["a", "<f4", [3]], np.ones(3, np.float32).tobytes(), InputType.FLOATS, [4], "shape"),
    (["a", "<f4", [4]], b"short", InputType.FLOATS, None, "bytes do not hold"),
    (["a", "<f4", [-1]], b"", InputType.FLOATS, None, "shape must be"),
    (["a", "<f4", [512]], np.ones(512, np.float32).tobytes(), InputType.FLOATS, None, "limit"),
    (["s", None, None], b"\xff\xfe", InputType.STRINGS, None, "UTF-8"),
])
def test_bad_items_are_bad_input_naming_the_item(meta, frame, input_type, shape, message):
    with pytest.raises(BadInput, match=message) as info:
        validate_items([meta], [frame], input_type, shape, 1024)
    assert "items[0]" in str(info.value)


def test_too_many_items_are_refused_before_anything_is_split():
    with pytest.raises(BadInput):
        split_items({"stack": ["<f4", [101, 1]]}, [b"\0" * 404], 100)


# -- the batching rule --------------------------------------------------------------------------------

@pytest.mark.parametrize("depth, target, expired, wait, reason", [
    (8, 8, False, 0, FireReason.FULL), (9, 8, False, 500, FireReason.FULL),
    (3, 8, True, 500, FireReason.TIMEOUT), (3, 8, False, 500, None), (3, 8, False, 0, FireReason.IDLE)])
def test_a_batch_fires_when_full_after_the_wait_or_at_once_without_one(depth, target, expired, wait, reason):
    assert fire_reason(depth, target, expired, wait) is reason
