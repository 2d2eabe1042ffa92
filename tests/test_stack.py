"""Stack and `schooner up`: a whole deployment as real processes, stopped without orphans."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from management.stack import Stack, StackError

ROOT = Path(__file__).resolve().parents[1]
READY_S = 90.0


def admin(stack_url: str, path: str, body: dict, timeout: float = 120, token: str = "") -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = requests.post(f"{stack_url}/admin/{path}", json=body, timeout=timeout, headers=headers)
    assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text}"
    return resp


def deploy_noop(management_url: str, token: str, num_replicas: int = 1) -> list[dict]:
    admin(management_url, "add_app", {"name": "echo", "input_type": "doubles", "latency_slo_micros": 20_000_000},
          token=token)
    admin(management_url, "add_model", {"model_name": "noop", "model_version": "1", "input_type": "doubles"},
          token=token)
    admin(management_url, "add_model_links", {"app_name": "echo", "model_names": ["noop"]}, token=token)
    return admin(management_url, "set_num_replicas",
                 {"model_name": "noop", "num_replicas": num_replicas, "wait_s": READY_S}, token=token).json()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout_s: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


@pytest.mark.slow
def test_stack_serves_queries_and_stop_leaves_no_process_behind(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    frontend_cpus = cpus[:1] if len(cpus) >= 2 else None
    with Stack(state_dir=tmp_path / "state", heartbeat_interval_s=0.25, frontend_cpus=frontend_cpus) as stack:
        assert requests.get(f"{stack.frontend_http_url}/health", timeout=5).status_code == 200
        assert requests.get(f"{stack.management_url}/admin/ping", timeout=5).status_code == 200
        assert stack.redis_url.startswith("redis://:") and "@127.0.0.1:" in stack.redis_url  # a password
        assert stack.client_address.startswith("tcp://127.0.0.1:")
        [replica] = deploy_noop(stack.management_url, stack.admin_token)
        assert replica["state"] in ("ready", "busy")
        if frontend_cpus:  # the frontend is pinned and its core is kept free of replicas
            assert _cpus_allowed(stack.frontend.pid) == str(cpus[0])
            assert cpus[0] not in replica["cpus"]
        resp = requests.post(f"{stack.frontend_http_url}/echo/predict", json={"input": [1.0, 2.0]}, timeout=30)
        assert resp.status_code == 200 and not resp.json()["default"], resp.text
        pids = [stack.frontend.pid, stack.management.pid, replica["pid"], stack._redis.pid]
    assert wait_gone(pids) == []


def test_stack_start_failure_cleans_up_and_names_the_process(tmp_path):
    # Hold the frontend's HTTP port: refused before anything starts, naming the port.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        stack = Stack(state_dir=tmp_path / "state", http_port=port, client_port=_free(),
                      replica_port=_free(), management_port=_free())
        with pytest.raises(StackError, match=f"http {port} on 127.0.0.1 already in use"):
            stack.start(timeout_s=60)
    assert stack.frontend is None and stack.management is None and stack._redis is None


def test_stack_validates_its_arguments():
    with pytest.raises(ValueError, match="backend"):
        Stack(backend="kubernetes")
    with pytest.raises(ValueError, match="http_port"):
        Stack(http_port=-1)
    with pytest.raises(ValueError, match="frontend_cpus"):
        Stack(frontend_cpus=["a"])
    with pytest.raises(RuntimeError, match="not been started"):
        Stack().management_url  # noqa: B018 - the access itself must raise


@pytest.mark.slow
def test_stack_stop_reaps_replicas_of_a_management_service_killed_hard(tmp_path):
    stack = Stack(state_dir=tmp_path / "state").start()
    try:
        [replica] = deploy_noop(stack.management_url, stack.admin_token)
        os.kill(stack.management.pid, signal.SIGKILL)
        stack.management.wait(timeout=10)
        assert alive(replica["pid"])
    finally:
        stack.stop()
    assert wait_gone([replica["pid"]]) == []


@pytest.mark.slow
def test_schooner_up_prints_addresses_and_stops_cleanly_on_ctrl_c(tmp_path):
    proc = subprocess.Popen([str(ROOT / "bin" / "schooner"), "up", "--free-ports", "--state-dir",
                             str(tmp_path / "state")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True, env={**os.environ, "PYTHON": sys.executable})
    try:
        lines = []
        while not lines or lines[-1].strip() != "}":
            line = proc.stdout.readline()
            assert line, f"schooner up exited early with {proc.poll()}"
            lines.append(line)
        addresses = json.loads("".join(lines))
        ping = requests.get(f"{addresses['management']}/admin/ping", timeout=5)
        assert ping.status_code == 200
        status = subprocess.run([sys.executable, "-m", "management.cli", "status", "--management",
                                 addresses["management"], "--frontend", addresses["frontend_http"]],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # redis, frontend, management
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        assert wait_gone([c.pid for c in children]) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_schooner_status_fails_when_nothing_runs():
    url = f"http://127.0.0.1:{_free()}"
    result = subprocess.run([sys.executable, "-m", "management.cli", "status", "--management", url,
                             "--frontend", url], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "management: down" in result.stdout


def _cpus_allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


def _free() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
