"""frontend.looplag on a real asyncio loop: the lag it reports, and how often it wakes."""

from __future__ import annotations

import asyncio
import time

from frontend.looplag import LAG_IDLE_S, LAG_TICK_MAX_S, LAG_TICK_S, LoopLag


def test_the_timer_slows_down_while_the_loop_keeps_up_and_reports_a_stretch_it_blocked():
    async def main() -> None:
        lag = LoopLag()
        assert lag.waited(time.monotonic()) == 0.0 and lag.running  # the first ask starts it
        await asyncio.sleep(0.1)  # the loop keeps up: the period doubles to its longest
        assert lag.period_s == LAG_TICK_MAX_S
        assert lag.waited(time.monotonic()) < 0.02
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
        await asyncio.sleep(LAG_IDLE_S + 0.1)
        assert not lag.running
        assert lag.waited(time.monotonic()) == 0.0 and lag.running  # asked again: it starts again
        lag.stop()

    asyncio.run(main())
