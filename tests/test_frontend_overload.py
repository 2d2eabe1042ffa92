"""A frontend that is itself behind (its loop busy) refuses what waited too long for it, at once,
over HTTP and ZMQ.

Real Frontend, real replica process, real sockets; the loop is kept busy by a callback that
sleeps on it, as a flood of requests would keep it busy.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import requests
from frontend_support import FrontendThread, metric, start_replica
from frontend_support import frontend_thread, procs  # noqa: F401 - fixtures

from frontend.client import Client
from schooner.errors import Overloaded
from schooner.types import AppSpec, ModelSpec

SLO_US = 100_000


def _deploy(ft: FrontendThread, procs: list) -> None:
    """Two apps on one noop model (one rejects on overload, one answers its default), its replica ready."""
    ft.deploy([AppSpec("app", "floats", latency_slo_micros=SLO_US),
               AppSpec("lenient", "floats", latency_slo_micros=SLO_US, on_overload="default")],
              [ModelSpec("noop", "1", "floats")], {"app": ["noop"], "lenient": ["noop"]})
    procs.append(start_replica(ft.replica_address, "noop"))
    ft.wait_ready(1)


def _while_busy(ft: FrontendThread, busy_s: float, send: Callable[[], Any]) -> tuple:
    """``send()`` while the frontend's loop is busy for ``busy_s``, so that what it sends waits in
    its socket; (what ``send`` returned, seconds it took)."""
    busy = threading.Event()

    def occupy() -> None:
        busy.set()
        time.sleep(busy_s)

    ft.loop.call_soon_threadsafe(occupy)
    assert busy.wait(10)
    time.sleep(0.01)  # the loop is inside the sleep
    t0 = time.monotonic()
    answer = send()
    return answer, time.monotonic() - t0


def _post_while_busy(ft: FrontendThread, session: requests.Session, app: str, busy_s: float) -> tuple:
    """POST a prediction that arrives while the frontend's loop is busy for ``busy_s``; (answer, seconds)."""
    return _while_busy(ft, busy_s, lambda: session.post(f"{ft.http_url}/{app}/predict", json={"input": [1.0, 2.0]},
                                                        timeout=10))


def test_a_request_left_unread_by_a_busy_frontend_is_refused_at_once_and_the_next_served(frontend_thread, procs):
    ft = frontend_thread
    _deploy(ft, procs)
    url = f"{ft.http_url}/app/predict"
    with requests.Session() as s:
        assert s.post(url, json={"input": [1.0, 2.0]}, timeout=10).json()["default"] is False
        # This one waits ~130 ms for the frontend, past its 100 ms objective.
        answer, took = _post_while_busy(ft, s, "app", 0.15)
        assert answer.status_code == 429 and answer.headers["Retry-After"] == "1"
        body = answer.json()
        # Refused at its headers: it waited past the 20 ms of the objective HTTP allows for the frontend.
        assert body["error"] == "overloaded" and "waited ~" in body["cause"], body
        assert 0.05 < body["retry_after_s"] < 0.2
        assert took < 0.15 + 0.05  # answered as soon as it was read
        time.sleep(0.05)
        assert s.post(url, json={"input": [1.0, 2.0]}, timeout=10).json()["default"] is False  # caught up
    dump = ft.metrics()
    assert metric(dump, "counters", "model:noop:1:shed_at_arrival")["count"] >= 1


def test_an_app_that_defaults_on_overload_gets_its_default_at_once_after_waiting_past_its_objective(
        frontend_thread, procs):
    ft = frontend_thread
    _deploy(ft, procs)
    url = f"{ft.http_url}/lenient/predict"
    with requests.Session() as s:
        assert s.post(url, json={"input": [1.0, 2.0]}, timeout=10).json()["default"] is False
        # Its query arrived when the request came, not when the frontend got to it: ~240 ms before,
        # past the 100 ms objective, so no model call can answer it in time and none is made.
        answer, took = _post_while_busy(ft, s, "lenient", 0.25)
        assert answer.status_code == 200
        body = answer.json()
        assert body["default"] is True and "before it reached the queue" in body["default_explanation"]
        assert took < 0.25 + 0.05
        time.sleep(0.05)
        assert s.post(url, json={"input": [1.0, 2.0]}, timeout=10).json()["default"] is False
    dump = ft.metrics()
    assert metric(dump, "counters", "model:noop:1:shed_at_arrival")["count"] >= 1
    assert not [e for e in dump["counters"] if "app:lenient:errors_overloaded" in e]  # none refused


def _query_while_busy(ft: FrontendThread, client: Client, app: str, busy_s: float, n: int = 1) -> tuple:
    """Send ``n`` ZMQ queries that arrive while the frontend's loop is busy for ``busy_s``;
    (answers or errors in order, seconds until the last came)."""
    return _while_busy(ft, busy_s, lambda: client.predict_many(app, [[1.0, 2.0]] * n, concurrency=n))


def test_zmq_queries_left_unread_past_their_objective_by_a_busy_frontend_are_refused_at_once(
        frontend_thread, procs):
    ft = frontend_thread
    _deploy(ft, procs)
    with Client(ft.client_address, timeout_s=10) as client:
        assert client.predict("app", [1.0, 2.0]).default is False
        # These wait ~140 ms for the frontend, past their 100 ms objective.
        answers, took = _query_while_busy(ft, client, "app", 0.15, n=8)
        assert all(isinstance(a, Overloaded) for a in answers), answers
        assert all("before it reached the queue" in str(a) for a in answers), answers
        assert all(0.05 < a.retry_after_s < 0.3 for a in answers)
        assert took < 0.15 + 0.05  # answered as soon as they were read
        time.sleep(0.05)
        assert client.predict("app", [1.0, 2.0]).default is False  # caught up
    dump = ft.metrics()
    assert metric(dump, "counters", "model:noop:1:shed_at_arrival")["count"] >= 8


def test_a_zmq_app_that_defaults_on_overload_gets_its_default_at_once_after_waiting_past_its_objective(
        frontend_thread, procs):
    ft = frontend_thread
    _deploy(ft, procs)
    with Client(ft.client_address, timeout_s=10) as client:
        assert client.predict("lenient", [1.0, 2.0]).default is False
        answers, took = _query_while_busy(ft, client, "lenient", 0.25, n=4)
        assert all(a.default for a in answers), answers
        assert all("before it reached the queue" in a.default_explanation for a in answers)
        assert took < 0.25 + 0.05
        time.sleep(0.05)
        assert client.predict("lenient", [1.0, 2.0]).default is False
    dump = ft.metrics()
    assert not [e for e in dump["counters"] if "app:lenient:errors_overloaded" in e]  # none refused


def test_a_zmq_query_after_the_frontend_sat_idle_is_served(frontend_thread, procs):
    ft = frontend_thread
    _deploy(ft, procs)
    with Client(ft.client_address, timeout_s=10) as client:
        for pause_s in (0.0, 0.3, 0.7):  # the socket was last empty that long ago, the loop idle
            time.sleep(pause_s)
            assert client.predict("app", [1.0, 2.0]).default is False
