"""Helpers shared by the management tests: polling, the noop deployment, frontend views."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any, Callable

import requests

from schooner.types import AppSpec, ModelSpec
from management.store import Store


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, *,
             alive: subprocess.Popen | None = None, why: Callable[[], str] = lambda: "") -> Any:
    """Poll ``condition`` until it is truthy and return it; fail after ``timeout_s`` or if ``alive`` exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert alive is None or alive.poll() is None, f"process exited waiting for {what}: {why()}"
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g}s waiting for {what}: {why()}"
        time.sleep(0.1)


async def wait_for_async(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """:func:`wait_for` for coroutines: ``condition`` runs in a thread, the loop keeps turning."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g}s waiting for {what}"
        await asyncio.sleep(0.2)


def http_ok(url: str) -> bool:
    """True when a GET of ``url`` answers 200."""
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def add_noop(store: Store, model: str = "noop", app: str = "echo") -> None:
    """Register app ``app`` linked to version 1 of a noop model named ``model``."""
    store.add_app(AppSpec(name=app, input_type="doubles", latency_slo_micros=20_000_000))
    store.add_model(ModelSpec(name=model, version="1", input_type="doubles", batch_size=4, launcher="noop"))
    store.add_links(app, [model])


def predict(http: str, value: float, app: str = "echo") -> dict:
    """One REST prediction of ``[value, 1.0]``; it must answer 200."""
    resp = requests.post(f"{http}/{app}/predict", json={"input": [value, 1.0]}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def frontend_rows(http: str) -> dict[str, dict]:
    """The frontend's replica table, by replica id."""
    body = requests.get(f"{http}/replicas", timeout=10).json()
    rows = body.get("replicas", []) if isinstance(body, dict) else body
    return {r["replica_id"]: r for r in rows}
