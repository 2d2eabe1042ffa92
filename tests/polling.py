"""The one polling helper of the tests: wait for a condition with a generous timeout, never a bare sleep."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any, Callable

POLL_S = 0.05


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, *,
             alive: subprocess.Popen | None = None, why: Callable[[], str] = lambda: "") -> Any:
    """Poll ``condition`` until it is truthy and return its value.

    Fails naming ``what`` (and ``why()``) after ``timeout_s``, or at once when
    the process ``alive`` has exited.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert alive is None or alive.poll() is None, f"process exited waiting for {what}: {why()}"
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g}s waiting for {what}: {why()}"
        time.sleep(POLL_S)


async def wait_for_async(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """:func:`wait_for` for coroutines: ``condition`` runs in a thread, the loop keeps turning."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g}s waiting for {what}"
        await asyncio.sleep(POLL_S * 4)
