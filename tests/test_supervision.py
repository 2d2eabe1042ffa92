"""Supervision of ``schooner up``: readiness, one stack per state dir and ports, processes brought back.

Real processes: a Stack (embedded Redis, frontend, management service, a noop
replica) supervised by a thread calling ``stack.supervise()`` as ``schooner up``
does; its children are killed with SIGKILL (and a replica stopped with
SIGSTOP), and each comes back while the queries that failed in the gap are
counted (never ``unknown_app``).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest
import requests
from frontend_support import FrontendThread, wait_for
from test_stack import deploy_noop

from frontend.client import Client
from management.stack import Stack, StackError
from schooner.errors import NotReady
from schooner.types import AppSpec, ModelSpec

BACK_S = 60.0  # generous: a restart on a loaded 2-core machine takes a few seconds


def test_not_ready_until_the_deployment_is_loaded():
    ft = FrontendThread(start_ready=False).start()
    try:
        ft.deploy([AppSpec("app", "floats")], [ModelSpec("noop", "1", "floats")], {"app": ["noop"]})
        resp = requests.post(f"{ft.http_url}/app/predict", json={"input": [1.0]}, timeout=10)
        assert resp.status_code == 503 and resp.json()["error"] == "not_ready" and resp.headers["Retry-After"]
        resp = requests.post(f"{ft.http_url}/nosuch/predict", json={"input": [1.0]}, timeout=10)
        assert resp.json()["error"] == "not_ready"  # never unknown_app before the apps are known
        assert requests.get(f"{ft.http_url}/health/ready", timeout=10).status_code == 503
        assert requests.get(f"{ft.http_url}/health/live", timeout=10).status_code == 200
        with Client(ft.client_address, timeout_s=10) as client:
            with pytest.raises(NotReady):
                client.predict("app", np.ones(1, dtype=np.float32))
        ft.call(ft.fe.set_ready)
        assert requests.get(f"{ft.http_url}/health/ready", timeout=10).status_code == 200
        resp = requests.post(f"{ft.http_url}/nosuch/predict", json={"input": [1.0]}, timeout=10)
        assert resp.json()["error"] == "unknown_app"
    finally:
        ft.stop()


class Supervised:
    """A Stack whose supervise() runs every 0.2 s on a thread, as `schooner up`'s loop does."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.stack.supervise()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(BACK_S)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    state = tmp_path_factory.mktemp("supervised")
    stack = Stack(state_dir=state, heartbeat_interval_s=0.25, heartbeat_timeout_s=1.5, reconcile_interval_s=0.5)
    stack.start()
    sup = Supervised(stack)
    try:
        [replica] = deploy_noop(stack.management_url, stack.admin_token)
        yield {"stack": stack, "state": state, "replica": replica}
    finally:
        sup.close()
        stack.stop()


def _query(stack: Stack) -> str:
    """'ok', or the error code (or 'down') a query to the echo app got."""
    try:
        resp = requests.post(f"{stack.frontend_http_url}/echo/predict", json={"input": [3.0]}, timeout=10)
    except requests.RequestException:
        return "down"
    if resp.status_code == 200 and not resp.json()["default"]:
        return "ok"
    return resp.json().get("error", f"http {resp.status_code}") if resp.status_code != 200 else "default"


def _until_ok(stack: Stack) -> dict[str, int]:
    """Query every 50 ms until one succeeds; what each failed one got, counted."""
    gap: dict[str, int] = {}
    deadline = time.monotonic() + BACK_S
    while time.monotonic() < deadline:
        got = _query(stack)
        if got == "ok":
            return gap
        gap[got] = gap.get(got, 0) + 1
        time.sleep(0.05)
    raise AssertionError(f"queries did not succeed again within {BACK_S} s: {gap}")


def _replica_pid(stack: Stack) -> int:
    rows = requests.get(f"{stack.frontend_http_url}/replicas", timeout=10).json()
    rows = rows.get("replicas", rows) if isinstance(rows, dict) else rows
    return next(r["pid"] for r in rows if r["state"] in ("ready", "busy"))


@pytest.mark.slow
def test_second_stack_on_the_same_state_dir_or_ports_refuses_and_the_first_keeps_serving(running, tmp_path):
    stack = running["stack"]
    assert _until_ok(stack) == {}
    pid = _replica_pid(stack)
    started = time.monotonic()
    with pytest.raises(StackError, match="another schooner up"):
        Stack(state_dir=running["state"]).start()
    port = int(stack.frontend_http_url.rsplit(":", 1)[1])
    with pytest.raises(StackError, match=f"http {port}.*already in use"):
        Stack(state_dir=tmp_path / "other", http_port=port).start()
    assert time.monotonic() - started < 10  # refused at once, nothing started
    assert _query(stack) == "ok" and _replica_pid(stack) == pid


@pytest.mark.slow
@pytest.mark.parametrize("child", ["frontend", "management", "redis"])
def test_killed_child_comes_back_and_queries_succeed_again(running, child):
    stack = running["stack"]
    assert _until_ok(stack) == {}
    proc = {"frontend": stack.frontend, "management": stack.management}.get(child)
    pid = proc.pid if proc is not None else stack._redis.pid
    before = stack.supervisor.restarts.get(child, 0)
    os.kill(pid, signal.SIGKILL)
    gap: dict[str, int] = {}
    sent = 0
    deadline = time.monotonic() + BACK_S
    settle_until = None  # after the restart, keep querying a while: what the restart itself costs counts too
    while settle_until is None or time.monotonic() < settle_until:
        assert time.monotonic() < deadline, f"{child} did not come back within {BACK_S} s: {gap}"
        got = _query(stack)
        sent += 1
        if got != "ok":
            gap[got] = gap.get(got, 0) + 1
        if settle_until is None and stack.supervisor.restarts.get(child, 0) > before:
            settle_until = time.monotonic() + 3.0
        time.sleep(0.05)
    gap.update({f"after: {k}": v for k, v in _until_ok(stack).items()})
    assert "unknown_app" not in gap, gap  # during a frontend restart: not_ready or no answer, never this
    print(f"kill -9 {child}: {sum(gap.values())} of {sent} queries failed in the gap: {gap}")
    if child == "management":
        assert requests.get(f"{stack.management_url}/admin/ping", timeout=10).status_code == 200


@pytest.mark.slow
def test_sigstopped_replica_is_replaced(running):
    stack = running["stack"]
    assert _until_ok(stack) == {}
    pid = _replica_pid(stack)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: _query(stack) == "ok" and _replica_pid(stack) != pid, BACK_S, "a replacement replica")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
             BACK_S, "the stopped replica killed")
