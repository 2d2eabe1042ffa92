"""Bad messages: counted per endpoint, logged at a bounded rate.

A peer that sends garbage at 1,000 messages a second must not cost the
frontend 1,000 log lines a second; every bad message is still counted
(``internal:<endpoint>:bad_messages``) and the first of each interval is logged
with the number suppressed since the last line.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from schooner import metric_names

LOG_INTERVAL_S = 1.0  # at most one log line per endpoint and level this often


class BadMessages:
    """Counts bad messages of one endpoint and logs them at most once per ``interval_s``."""

    def __init__(self, endpoint: str, metrics: Any, logger: logging.Logger, interval_s: float = LOG_INTERVAL_S) -> None:
        self.counter = metrics.counter(metric_names.bad_messages(endpoint))
        self.log = logger
        self.interval_s = interval_s
        self._next_at = 0.0
        self._suppressed = 0

    def note(self, level: int, fmt: str, *args: Any) -> None:
        """Count one bad message; log it unless a line was written less than ``interval_s`` ago."""
        self.counter.inc()
        now = time.monotonic()
        if now < self._next_at:
            self._suppressed += 1
            return
        self._next_at = now + self.interval_s
        if self._suppressed:
            fmt += " (%d more bad messages since the last line)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        self.log.log(level, fmt, *args)
