"""How far behind the event loop is: how long what arrives now waits before the loop reads it.

One per frontend loop, shared by the HTTP server and the ZMQ client port, so that a query's
arrival can be stamped when it came rather than when the loop got to it (admission then counts
that wait against the query's objective, and refuses what waited too long for the frontend).
"""

from __future__ import annotations

import asyncio
import time

LAG_TICK_S = 0.001  # how often the loop's lag is sampled while it lags
LAG_TICK_MAX_S = 0.008  # the period doubles to this while it keeps up
LAG_IDLE_S = 0.5  # and the timer stops this long after the last of them


def next_period(period_s: float, lag_s: float) -> float:
    """The lag timer's next period after one that ran ``lag_s`` late: LAG_TICK_S when the loop
    lagged (by LAG_TICK_S or more), else twice ``period_s``, up to LAG_TICK_MAX_S."""
    return LAG_TICK_S if lag_s >= LAG_TICK_S else min(LAG_TICK_MAX_S, 2 * period_s)


class LoopLag:
    """The loop's lag, sampled by a timer that runs only while :meth:`waited` is asked (and LAG_IDLE_S after)."""

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0  # when the timer is due
        self._asked = 0.0  # when waited() was last asked
        self.last_lag_s = 0.0  # how late the timer fired last
        self._fired = 0.0  # and when
        self._period = LAG_TICK_S

    def waited(self, now: float) -> float:
        """About how long something read at ``now`` waited for the loop to read it (at most).

        A loop that keeps up reads what arrives at once; one that is behind (more
        queries than its core serves) runs long stretches of callbacks, and what
        arrives meanwhile waits in its socket for the next poll. A timer due every
        LAG_TICK_S (longer while the loop keeps up: :meth:`_tick`) shows such a stretch: how overdue it is when a query is read,
        or, when it ran (late) just before the read (libuv runs timers before its
        poll), how late it ran. Under a sustained backlog a query may wait through more
        than one stretch (an HTTP body read over several polls, its data in flight
        behind others'), so half of how late the timer fired last is added:
        measured against the send time a load generator wrote into each request,
        the bound alone fell short of the true wait (p50 1.9 against 2.8 ms at
        3,000 q/s) and admitted more than the frontend could serve in time. The
        timer runs while this is asked (and LAG_IDLE_S after); 0, and the timer
        starts, when it is not running.
        """
        self._asked = now
        if self._handle is None:
            self._due, self.last_lag_s, self._period = now + LAG_TICK_S, 0.0, LAG_TICK_S
            self._handle = asyncio.get_running_loop().call_later(LAG_TICK_S, self._tick)
            return 0.0
        if now - self._fired < LAG_TICK_S:
            # The timer ran late just before this read (libuv runs timers before the poll, and
            # asyncio may too when a request's bytes come in two reads): the query may have
            # waited through that whole stretch, which the overdue part no longer shows.
            return max(0.0, now - self._due) + self.last_lag_s
        return max(0.0, now - self._due) + 0.5 * self.last_lag_s

    @property
    def running(self) -> bool:
        """Whether the timer is sampling the lag now."""
        return self._handle is not None

    @property
    def period_s(self) -> float:
        """The timer's period now."""
        return self._period

    def _tick(self) -> None:
        """Sample the lag. Every LAG_TICK_S while the loop lags; while it keeps up the period
        doubles, up to LAG_TICK_MAX_S. Shortening it for every query asked instead (a lone
        client kept it at LAG_TICK_S) cost ~1,000 wakeups a second at concurrency 1 over ZMQ:
        10-15 % more frontend CPU per query (1,130 -> 1,250-1,300 µs on a slow day). A stretch
        that starts in a longer period is undercounted by at most that period, for the
        queries read right after it; the next sample shows it and the period is short again.
        """
        self._fired = now = time.monotonic()
        self.last_lag_s = max(0.0, now - self._due)
        if now - self._asked > LAG_IDLE_S:  # nothing asked lately: stop (no wakeups while idle)
            self._handle = None
            return
        self._period = next_period(self._period, self.last_lag_s)
        self._due = now + self._period
        self._handle = asyncio.get_running_loop().call_later(self._period, self._tick)

    def stop(self) -> None:
        """Stop the timer (the frontend is stopping)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
