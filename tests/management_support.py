"""Helpers shared by the management tests: polling, the noop deployment, frontend views."""

from __future__ import annotations


import requests

from schooner.types import AppSpec, ModelSpec
from management.store import Store


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
