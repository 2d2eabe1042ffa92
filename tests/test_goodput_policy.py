"""The goodput policy on its own: latency curve, batch-size controller, admission rule, wait rule.

Deterministic: a fake clock (plain floats), seeded noise, no sockets, no processes.
"""

from __future__ import annotations

import heapq
import json
import math
import random

import pytest

from frontend.admission import predict_finish
from frontend.batching import (ArrivalMeter, BatchSizeController, LatencyCurve, OverheadFloor, learnt_latency,
                               should_wait)


def sleep_curve(a_s: float, b_s: float):
    """The `sleep` model's cost: a + b·n seconds for a batch of n."""
    return lambda n: a_s + b_s * n


def run_controller(ctl: BatchSizeController, curve: LatencyCurve, cost, rate: float, batches: int,
                   rng: random.Random | None = None, noise: float = 0.0, replicas: int = 1) -> list[int]:
    """Feed ``batches`` finished batches at the controller's cap (the queue always fills it) and
    return the cap after each."""
    seen = []
    for _ in range(batches):
        n = ctl.target
        lat = cost(n) * (1.0 + (rng.uniform(-noise, noise) if rng else 0.0))
        curve.observe(n, lat)
        seen.append(ctl.update(curve, rate, replicas))
    return seen


def best_fixed(cost, slo_s: float, rate: float, max_n: int, margin: float = 0.1) -> int:
    """Brute force over caps of the same goodput model, with the cost known exactly."""
    curve = LatencyCurve()
    for n in range(1, max_n + 1):
        curve.observe(n, cost(n))
    ctl = BatchSizeController(-1, max_n, margin=margin)
    ctl.objective_micros = round(slo_s * 1e6)
    return ctl.best(curve, rate, 1)


# ---- latency curve ----------------------------------------------------------------------------

def test_curve_learns_a_linear_cost_from_two_sizes():
    curve = LatencyCurve()
    curve.observe(1, 0.011)
    assert curve.seconds(1) == pytest.approx(0.011)
    assert curve.seconds(4) == pytest.approx(0.044)  # one size seen: scaled up, on the slow side
    curve.observe(4, 0.014)
    assert curve.seconds(32) == pytest.approx(0.042, rel=1e-6)  # 10 + 1·n ms


def test_curve_follows_a_step_in_cost_at_the_size_in_use():
    cost = sleep_curve(0.010, 0.001)
    curve = LatencyCurve()
    for n in (1, 2, 4, 8, 16, 32):
        curve.observe(n, cost(n))
    for _ in range(15):
        curve.observe(32, 2 * cost(32))  # the model got twice as slow
    assert curve.seconds(32) == pytest.approx(2 * cost(32), rel=0.05)


def test_overhead_floor_is_the_least_overhead_in_its_window():
    floor = OverheadFloor(window_s=10.0)
    assert floor.observe(0.0, 0.003) == 0.003
    assert floor.observe(1.0, 0.001) == 0.001
    assert floor.observe(2.0, 0.200) == 0.001  # a late read is not what every batch pays
    assert floor.observe(10.5, 0.004) == 0.001
    assert floor.observe(11.5, 0.004) == 0.004  # the 1 ms one left the window: a lasting change is taken
    assert floor.observe(12.0, -1.0) == 0.0  # clocks apart: never negative


def test_a_flood_that_delays_results_does_not_teach_the_curve_a_slow_model():
    # A noop model (1 ms a batch of 8, 0.2 ms round trip). Then for 5 s the frontend works through a
    # flood of bad messages and reads every RESULT 50 ms late. The replica's own time says the model
    # did not change; a query behind 700 others, with 20 s to go, must not be shed for the flood.
    seen, learnt, t = LatencyCurve(), LatencyCurve(), 0.0
    floor = OverheadFloor()
    for _ in range(50):
        t += 0.01
        seen.observe(8, 0.0012)
        learnt.observe(8, learnt_latency(floor, t, 0.0012, 0.001))
    for _ in range(100):
        t += 0.05
        seen.observe(8, 0.051)
        learnt.observe(8, learnt_latency(floor, t, 0.051, 0.001))
    assert learnt.seconds(8) == pytest.approx(0.0012, rel=0.05)
    assert seen.seconds(8) > 20 * learnt.seconds(8)  # what the round trip alone would have taught
    _, finish, _ = predict_finish(t, 700, 1, [t], 8, learnt.upper, 0.0)
    assert finish - t < 0.2
    # A replica that reports no service time: the latency as seen, as before.
    assert learnt_latency(floor, t, 0.051, None) == 0.051
    assert learnt_latency(floor, t, 0.051, 0.9) == 0.051  # a service time longer than the round trip is wrong


# ---- controller -------------------------------------------------------------------------------

def test_controller_converges_on_a_known_latency_curve():
    # sleep 10 + 1·n ms, SLO 100 ms: a batch of n fits half the (90 %) objective up to n = 35.
    cost = sleep_curve(0.010, 0.001)
    ctl = BatchSizeController(-1, 64)
    ctl.objective_micros = 100_000
    curve = LatencyCurve()
    rate = 0.5 * 35 / cost(35)  # half the capacity at n = 35
    caps = run_controller(ctl, curve, cost, rate, 40)
    assert caps[-1] in (34, 35)  # 35 bar the curve's noise margin
    assert caps[-10:] == [caps[-1]] * 10


def test_controller_goes_past_half_the_objective_when_heavily_overloaded():
    # At 10x the load only queries that arrive late in a batch can make it; the best cap
    # then runs longer batches than half the objective.
    cost = sleep_curve(0.010, 0.001)
    ctl = BatchSizeController(-1, 64)
    ctl.objective_micros = 100_000
    curve = LatencyCurve()
    rate = 10 * 35 / cost(35)
    caps = run_controller(ctl, curve, cost, rate, 60)
    want = best_fixed(cost, 0.1, rate, 64)
    assert want > 35
    assert caps[-1] == want
    assert ctl.goodput(want, curve, rate, 1, 64) > ctl.goodput(35, curve, rate, 1, 64)


def test_controller_plans_for_what_is_left_when_queries_reach_the_queue():
    """Over HTTP a query may reach its queue already old (waiting for the frontend to read and
    parse it); the cap plans for what is left of the objective, down to half of it."""
    cost = sleep_curve(0.010, 0.001)
    curve = LatencyCurve()
    for n in range(1, 65):
        curve.observe(n, cost(n))
    rate = 0.5 * 35 / cost(35)

    def best(objective_us: int, age_s: float = 0.0) -> int:
        ctl = BatchSizeController(-1, 64)
        ctl.objective_micros, ctl.entry_age_s = objective_us, age_s
        return ctl.best(curve, rate, 1)

    assert best(100_000) in (34, 35)  # a batch of n fits half of 90 ms up to n = 35
    assert best(100_000, age_s=0.040) == best(60_000) < best(100_000)  # what is left: 60 ms
    assert best(100_000, age_s=0.090) == best(50_000) < best(60_000)  # never less than half


def test_controller_is_stable_under_noise():
    cost = sleep_curve(0.005, 0.002)
    ctl = BatchSizeController(-1, 64)
    ctl.objective_micros = 50_000
    curve = LatencyCurve()
    rng = random.Random(7)
    caps = run_controller(ctl, curve, cost, 2000.0, 400, rng=rng, noise=0.10)
    tail = caps[-200:]
    changes = sum(1 for x, y in zip(tail, tail[1:]) if x != y)
    assert max(tail) - min(tail) <= 2, (min(tail), max(tail))
    assert changes <= 6, changes


def test_controller_backs_off_on_a_step_change_in_cost():
    cost = sleep_curve(0.005, 0.002)
    ctl = BatchSizeController(-1, 64)
    ctl.objective_micros = 50_000
    curve = LatencyCurve()
    rate = 100.0
    before = run_controller(ctl, curve, cost, rate, 60)[-1]
    slow = sleep_curve(0.010, 0.004)  # the model (or its machine) got twice as slow
    after = run_controller(ctl, curve, slow, rate, 25)
    assert before == best_fixed(cost, 0.05, rate, 64) == 8
    want = best_fixed(slow, 0.05, rate, 64)
    assert want == 3
    assert after[2] < before  # it backs off within a few batches ...
    assert all(abs(c - want) <= 1 for c in after[-15:]), after  # ... and stays near the new best


def test_controller_follows_a_load_change():
    cost = sleep_curve(0.010, 0.001)
    ctl = BatchSizeController(-1, 64)
    ctl.objective_micros = 100_000
    curve = LatencyCurve()
    light = run_controller(ctl, curve, cost, 300.0, 40)[-1]
    heavy = run_controller(ctl, curve, cost, 8000.0, 5)[-1]
    assert light in (34, 35)
    assert abs(heavy - best_fixed(cost, 0.1, 8000.0, 64)) <= 1
    back = run_controller(ctl, curve, cost, 300.0, 5)[-1]
    assert back == light


def test_controller_never_exceeds_max_batch_size_and_fixed_size_stays_fixed():
    cost = sleep_curve(0.001, 0.0001)
    ctl = BatchSizeController(-1, 16)
    curve = LatencyCurve()
    assert max(run_controller(ctl, curve, cost, 50_000.0, 50)) <= 16
    fixed = BatchSizeController(8, 64)
    assert run_controller(fixed, LatencyCurve(), cost, 50_000.0, 10) == [8] * 10


def test_more_replicas_share_the_load():
    cost = sleep_curve(0.010, 0.001)
    ctl = BatchSizeController(-1, 64)
    ctl.objective_micros = 100_000
    curve = LatencyCurve()
    for n in range(1, 65):
        curve.observe(n, cost(n))
    rate = 2 * 35 / cost(35)
    assert ctl.best(curve, rate, 1) > 35  # one replica is overloaded at twice its capacity
    assert ctl.best(curve, rate, 4) in (34, 35)  # four keep up within half the objective


# ---- admission --------------------------------------------------------------------------------

def simulate_fifo(arrivals: list[tuple[float, int]], admitted: list[bool], free_at: list[float], target: int,
                  cost) -> list[float]:
    """Finish time of each admitted query under FIFO batches of up to ``target`` on pull-based replicas."""
    queue = [i for i, ok in enumerate(admitted) if ok]
    finish = [math.nan] * len(arrivals)
    replicas = list(free_at)
    heapq.heapify(replicas)
    while queue:
        t = heapq.heappop(replicas)
        ready = [i for i in queue if arrivals[i][0] <= t]
        if not ready:
            t = arrivals[queue[0]][0]
            ready = [i for i in queue if arrivals[i][0] <= t]
        batch = ready[:target]
        done = t + cost(len(batch))
        for i in batch:
            finish[i] = done
            queue.remove(i)
        heapq.heappush(replicas, done)
    return finish


def test_admission_sheds_exactly_what_cannot_make_it():
    # 40 queries arrive at once at a replica busy for another 20 ms; batches of 8 at 10 + 1·n ms,
    # objective 100 ms: batches finish at 38, 56, 74, 92, 110 ms, so the first 32 make it.
    cost = sleep_curve(0.010, 0.001)
    now, slo = 1000.0, 0.100
    free = [now + 0.020]
    admitted, predicted = [], []
    for _ in range(40):
        _, finish, _ = predict_finish(now, sum(admitted), 1, free, 8, cost, 0.0)
        predicted.append(finish)
        admitted.append(finish <= now + slo)
    assert admitted == [True] * 32 + [False] * 8
    actual = simulate_fifo([(now, 1)] * 40, admitted, free, 8, cost)
    assert all(actual[i] <= now + slo for i in range(32))
    # The last query of each batch knows its batch's length exactly.
    assert [actual[i] for i in (7, 15, 23, 31)] == pytest.approx([predicted[i] for i in (7, 15, 23, 31)])
    # Had the 33rd been admitted it would have finished after its deadline.
    late = simulate_fifo([(now, 1)] * 40, admitted[:32] + [True] + [False] * 7, free, 8, cost)
    assert late[32] > now + slo


def test_admission_spreads_batches_over_replicas():
    cost = sleep_curve(0.010, 0.001)
    now = 50.0
    free = [now, now + 0.005, now + 0.030]
    # ahead 0..7 -> first replica, 8..15 -> second, 16..23 -> third, 24.. -> first again after 18 ms
    assert predict_finish(now, 0, 1, free, 8, cost, 0.0) == (now, pytest.approx(now + 0.011), 0)
    assert predict_finish(now, 8, 1, free, 8, cost, 0.0)[0] == pytest.approx(now + 0.005)
    assert predict_finish(now, 16, 1, free, 8, cost, 0.0)[0] == pytest.approx(now + 0.030)
    assert predict_finish(now, 24, 1, free, 8, cost, 0.0)[0] == pytest.approx(now + 0.018)


def test_admission_counts_arrivals_that_will_share_its_batch():
    cost = sleep_curve(0.010, 0.001)
    now = 0.0
    # Alone at a replica busy for 10 ms while 400 items/s arrive: 4 more join its batch of up to 8.
    _, finish, _ = predict_finish(now, 0, 1, [now + 0.010], 8, cost, 400.0)
    assert finish == pytest.approx(0.010 + cost(5))
    # A multi-item query lands in the batch of its last item, at its start.
    start, _, pos = predict_finish(now, 6, 3, [now], 8, cost, 0.0)
    assert (start, pos) == (pytest.approx(now + cost(8)), 0)


# ---- wait rule ------------------------------------------------------------------------------------

def test_closed_loop_client_is_never_waited_for():
    meter = ArrivalMeter()
    t = 0.0
    for _ in range(2000):  # one client: send, the model works 1 ms, reply, 0.2 ms later the next
        meter.arrive(t, 1, busy=False)
        meter.set_busy(t, True)
        t += 0.001
        meter.set_busy(t, False)
        t += 0.0002
    assert meter.rate(t) == pytest.approx(1 / 0.0012, rel=0.05)
    assert meter.busy_rate() == 0.0
    assert not should_wait(0.005, 1, 32, meter.busy_rate(), slack_s=0.1, need_s=0.01)


def test_open_loop_stream_is_waited_for():
    rng = random.Random(3)
    meter = ArrivalMeter()
    t, busy_until = 0.0, 0.0
    for _ in range(5000):  # Poisson at 2000/s; each arrival keeps the model busy 0.3 ms
        t += rng.expovariate(2000.0)
        if t > busy_until:
            meter.set_busy(busy_until, False)
        meter.arrive(t, 1, busy=t <= busy_until)
        meter.set_busy(t, True)
        busy_until = max(busy_until, t) + 0.0003
    assert meter.busy_rate() == pytest.approx(2000.0, rel=0.2)
    assert should_wait(0.005, 3, 32, meter.busy_rate(), slack_s=0.1, need_s=0.01)
    # ... but not past what the oldest query can afford, nor with a full batch, nor with no wait set.
    assert not should_wait(0.005, 3, 32, meter.busy_rate(), slack_s=0.012, need_s=0.01)
    assert not should_wait(0.005, 32, 32, meter.busy_rate(), slack_s=0.1, need_s=0.01)
    assert not should_wait(0.0, 3, 32, meter.busy_rate(), slack_s=0.1, need_s=0.01)


def test_a_young_stream_is_seen_at_its_rate_at_once():
    """A plain exponential average ramps up over its horizon (0.5 s): 100 ms into a stream of
    200/s it reads ~36/s, and a cold model's cap and admission planned for that."""
    meter = ArrivalMeter()
    t = 5.0
    for _ in range(21):  # 200/s for 100 ms
        meter.arrive(t, 1, busy=False)
        t += 0.005
    assert meter.rate(t - 0.005) == pytest.approx(200.0, rel=0.02)
    for _ in range(400):  # and on, well past the horizon: the plain average
        meter.arrive(t, 1, busy=False)
        t += 0.005
    assert meter.rate(t - 0.005) == pytest.approx(200.0, rel=0.02)
    # Quiet for a while, it decays as before ...
    assert meter.rate(t + 0.5) == pytest.approx(200.0 * math.exp(-1), rel=0.05)
    # ... and after a gap of five horizons a new stream counts from its own first arrival.
    t += 3.0
    for _ in range(11):
        meter.arrive(t, 1, busy=False)
        t += 0.02
    assert meter.rate(t - 0.02) == pytest.approx(50.0, rel=0.05)
    assert ArrivalMeter().rate(1.0) == 0.0


def test_a_cold_cap_probes_larger_sizes_when_behind():
    """sleep 23.5 + 2·n ms, SLO 100 ms, 146 q/s: only batches of 1 seen (25.5 ms, 39 q/s). Guessed
    linearly from them a batch of 2 costs 51 ms, which does not fit half the (90 %) objective, and
    every larger cap looks no faster than 1; without a probe the cap stayed at 1 (shedding most
    queries) until noise made 2 look as if it fit."""
    cost = sleep_curve(0.0235, 0.002)
    ctl = BatchSizeController(-1, 64)
    ctl.objective_micros = 100_000
    curve = LatencyCurve()
    caps = run_controller(ctl, curve, cost, 146.0, 8)
    assert caps[0] == 2  # the probe: 51 ms at worst, within the objective
    assert caps[-1] == best_fixed(cost, 0.1, 146.0, 64)
    assert caps.index(caps[-1]) <= 4  # 1 → 2 → 4 → 8 → the best: the doubling the curve allows
    # Not when the size seen keeps up: 20 q/s at 25.5 ms a batch of 1 needs no larger cap yet.
    ctl2, curve2 = BatchSizeController(-1, 64), LatencyCurve()
    ctl2.objective_micros = 100_000
    assert run_controller(ctl2, curve2, cost, 20.0, 3) == [1, 1, 1]


def test_unknown_rate_does_not_wait():
    assert not should_wait(0.005, 1, 32, ArrivalMeter().busy_rate(), slack_s=0.1, need_s=0.0)


def test_one_stalled_batch_does_not_move_the_cap():
    cost = sleep_curve(0.005, 0.002)
    ctl = BatchSizeController(-1, 64)
    ctl.objective_micros = 50_000
    curve = LatencyCurve()
    before = run_controller(ctl, curve, cost, 100.0, 60)[-1]
    curve.observe(before, 10 * cost(before))  # the machine stalled for one batch
    assert ctl.update(curve, 100.0, 1) == before
    assert run_controller(ctl, curve, cost, 100.0, 5)[-1] == before


def test_shed_query_over_http_is_429_with_retry_after_from_the_queue():
    from frontend.http import error_response
    from schooner.errors import Overloaded

    resp = error_response(Overloaded("overloaded: ...", 0.25))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"  # whole seconds, never 0
    assert json.loads(resp.body)["retry_after_s"] == 0.25
    assert error_response(Overloaded("overloaded: ...", 2.2)).headers["Retry-After"] == "3"


def test_an_idle_model_is_never_shed_for_so_its_curve_keeps_learning():
    # The curve says a batch takes 1 s (the machine stalled), far over the 100 ms objective. With a
    # replica idle and nothing queued the query is still sent: shedding it too would stop every
    # batch, and the curve could never learn that the model is fast again. Behind it, queries shed.
    import time

    from frontend.config import FrontendConfig
    from frontend.dispatch import Dispatcher
    from frontend.metrics import MetricsRegistry
    from schooner import protocol
    from schooner.errors import Overloaded
    from schooner.types import AppSpec, DeploymentState, ModelSpec
    from test_batching_core import FakeLoop, _query

    d = Dispatcher(FrontendConfig(client_port=0, replica_port=0, http_port=None), MetricsRegistry())
    sent: list = []
    d.attach(FakeLoop(), sent.append)
    d.sync(DeploymentState(apps={"a": AppSpec("a", "floats", latency_slo_micros=100_000)},
                           models={("m", "1"): ModelSpec("m", "1", "floats", batch_size=1)},
                           links={"a": ["m"]}, current_versions={"m": "1"}))
    hdr, _ = protocol.unpack(protocol.hello("r1", "m", "1", "floats", None, 0, "", "", [], None))
    replica, _ = d.pool.register(b"r1", hdr, time.monotonic())
    d.replica_free(replica)
    route = d.routes["a"]
    route.queue.curve.observe(1, 1.0)
    item = (["a", "<f4", [4]], b"\0" * 16)
    now = time.monotonic()
    d.submit(route, _query(route.app, now), [item[0]], [item[1]], now)
    d.pump_dirty()
    assert len(sent) == 1 and len(route.queue.in_flight) == 1  # sent, not shed
    with pytest.raises(Overloaded):
        d.submit(route, _query(route.app, now), [item[0]], [item[1]], now)


def test_a_query_whose_objective_passed_before_it_reached_the_queue_is_answered_at_once():
    # Over HTTP a query's arrival is when its request came; one that waited past its objective
    # for the frontend cannot be answered in time by any batch. With nothing known of the model
    # and a replica idle it used to be sent anyway; now it is shed at once, per its app.
    import time

    from frontend.config import FrontendConfig
    from frontend.dispatch import Dispatcher
    from frontend.metrics import MetricsRegistry
    from schooner import protocol
    from schooner.errors import Overloaded
    from schooner.types import AppSpec, DeploymentState, ModelSpec
    from test_batching_core import FakeLoop, _query

    d = Dispatcher(FrontendConfig(client_port=0, replica_port=0, http_port=None), MetricsRegistry())
    sent: list = []
    d.attach(FakeLoop(), sent.append)
    d.sync(DeploymentState(apps={"a": AppSpec("a", "floats", latency_slo_micros=100_000),
                                 "b": AppSpec("b", "floats", latency_slo_micros=100_000, on_overload="default")},
                           models={("m", "1"): ModelSpec("m", "1", "floats", batch_size=1)},
                           links={"a": ["m"], "b": ["m"]}, current_versions={"m": "1"}))
    hdr, _ = protocol.unpack(protocol.hello("r1", "m", "1", "floats", None, 0, "", "", [], None))
    replica, _ = d.pool.register(b"r1", hdr, time.monotonic())
    d.replica_free(replica)
    item = (["a", "<f4", [4]], b"\0" * 16)
    now = time.monotonic()
    assert not d.routes["a"].queue.curve.known  # nothing known of the model
    with pytest.raises(Overloaded, match="before it reached the queue") as refused:
        d.submit(d.routes["a"], _query(d.routes["a"].app, now - 0.15), [item[0]], [item[1]], now)
    assert refused.value.retry_after_s == pytest.approx(0.15, abs=0.01)
    lenient = _query(d.routes["b"].app, now - 0.15)
    d.submit(d.routes["b"], lenient, [item[0]], [item[1]], now)
    assert lenient.done and lenient.n_defaults == 1 and "before it reached the queue" in lenient.explanation
    on_time = _query(d.routes["b"].app, now - 0.05)  # 50 ms left: sent
    d.submit(d.routes["b"], on_time, [item[0]], [item[1]], now)
    d.pump_dirty()
    assert len(sent) == 1 and not on_time.done
    assert d.routes["a"].queue.shed_at_arrival.value == 2


def test_a_cold_curve_does_not_shed_for_a_guessed_cost_of_sizes_not_seen():
    """With only batches of 1 seen (22 ms), a batch of 4 was guessed at 88 ms: a query behind a
    running batch was shed at half load. Admission takes what it knows: no batch costs less than
    a smaller one, so 22 ms is the least a batch of 4 can take."""
    curve = LatencyCurve()
    for _ in range(3):
        curve.observe(1, 0.022)
    assert curve.upper(4) == pytest.approx(0.088)  # the planning (slow-side) guess is unchanged
    assert curve.upper_known(4) == pytest.approx(0.022) and curve.upper_known(1) == pytest.approx(0.022)
    now, slo = 10.0, 0.100
    _, finish, _ = predict_finish(now, 3, 1, [now + 0.020], 32, curve.upper_known, 0.0)
    assert finish <= now + slo  # admitted: 20 ms to wait, then a batch of 4
    _, guessed, _ = predict_finish(now, 3, 1, [now + 0.020], 32, curve.upper, 0.0)
    assert guessed > now + slo  # the old rule shed it
    # What cannot make it even at the least cost is still refused: 90 ms of wait, then its batch.
    _, hopeless, _ = predict_finish(now, 31, 1, [now + 0.090], 32, curve.upper_known, 0.0)
    assert hopeless > now + slo
    # Once two sizes are seen the fitted line is used for every size.
    curve.observe(8, 0.036)
    assert curve.upper_known(16) == pytest.approx(curve.upper(16))


def test_the_frontend_refuses_for_its_own_wait_only_behind_a_standing_queue():
    # 20 ms objective: a query may wait 4 ms for the frontend; waits over that for 20 ms straight
    # are a standing queue, refused for. One long stretch of the loop, or a few, is not.
    from frontend.metrics import MetricsRegistry
    from frontend.queries import AppRoute
    from schooner.types import AppSpec

    app = AppRoute(AppSpec("a", "floats", latency_slo_micros=20_000), MetricsRegistry())
    assert app.wait_budget_s == pytest.approx(0.004) and app.standing_s == pytest.approx(0.020)
    t = 100.0
    assert not app.behind(0.050, t)  # a 50 ms stretch of the loop: its deadline decides, not this
    assert not app.behind(0.006, t + 0.010)
    assert not app.behind(0.001, t + 0.015)  # one read under the budget: no standing queue
    assert not app.behind(0.006, t + 0.016)
    assert not app.behind(0.005, t + 0.030)
    assert app.behind(0.005, t + 0.037)  # every read over the budget for 20 ms
    assert app.behind(0.0045, t + 0.040)
    assert not app.behind(0.0039, t + 0.041)  # drained: admitted again
    assert not app.behind(0.0, t + 0.042)
    assert not app.behind(0.008, t + 0.043)
