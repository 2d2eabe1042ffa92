"""frontend.looplag on a real asyncio loop: the lag it reports, and how often it wakes."""

from __future__ import annotations

import asyncio
import time

from frontend.looplag import LAG_IDLE_S, LAG_TICK_MAX_S, LAG_TICK_S, LoopLag, next_period


def test_the_period_doubles_while_the_loop_keeps_up_and_is_short_again_once_it_lags():
    period, seen = LAG_TICK_S, []
    for _ in range(5):
        period = next_period(period, 0.0002)  # on time (a fraction of a tick late)
        seen.append(period)
    assert seen == [2 * LAG_TICK_S, 4 * LAG_TICK_S, LAG_TICK_MAX_S, LAG_TICK_MAX_S, LAG_TICK_MAX_S]
    assert next_period(LAG_TICK_MAX_S, LAG_TICK_S) == LAG_TICK_S
    assert next_period(LAG_TICK_MAX_S, 0.03) == LAG_TICK_S


def test_a_stretch_that_blocks_the_loop_shows_in_the_wait_and_shortens_the_period():
    # Only what a real loop cannot get wrong under load: a 30 ms block shows as at least 20 ms.
    # (Whether the period grows meanwhile depends on how late the machine runs the timer:
    # the rule itself is tested above.)
    async def main() -> None:
        lag = LoopLag()
        assert lag.waited(time.monotonic()) == 0.0 and lag.running  # the first ask starts it
        await asyncio.sleep(0.05)
        lag.waited(time.monotonic())  # still asked (however slowly the machine ran the sleep)
        time.sleep(0.03)  # a callback holds the loop for 30 ms
        while lag.last_lag_s < 0.02:  # until the timer, late, has run
            await asyncio.sleep(0)
        assert lag.period_s == LAG_TICK_S  # it lagged: sampled often again
        assert lag.waited(time.monotonic()) >= 0.02  # what is read now may have waited that long
        lag.stop()
        assert not lag.running

    asyncio.run(main())


def test_the_timer_stops_when_nothing_is_asked():
    async def main() -> None:
        lag = LoopLag()
        lag.waited(time.monotonic())
        await asyncio.sleep(LAG_IDLE_S)
        for _ in range(100):  # it stops at its first run LAG_IDLE_S after the ask (however late that is)
            if not lag.running:
                break
            await asyncio.sleep(0.05)
        assert not lag.running
        assert lag.waited(time.monotonic()) == 0.0 and lag.running  # asked again: it starts again
        lag.stop()

    asyncio.run(main())
