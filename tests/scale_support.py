"""Helpers of the scale-out tests: real frontend processes following one Redis, HAProxy in front."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from management.embedded_redis import free_port
from management_support import http_ok
from polling import wait_for

ROOT = Path(__file__).resolve().parents[1]
START_S = 60.0  # interpreter start + imports on a loaded 2-core machine


class FrontendProc:
    """A ``python -m frontend --redis-url`` process on free loopback ports."""

    def __init__(self, redis_url: str, log_path: Path, name: str, extra: tuple[str, ...] = ()) -> None:
        self.ports = {k: free_port() for k in ("client", "replica", "http")}
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "frontend", "--host", "127.0.0.1", "--client-port", str(self.ports["client"]),
                 "--replica-port", str(self.ports["replica"]), "--http-port", str(self.ports["http"]),
                 "--redis-url", redis_url, "--frontend-id", name, "--heartbeat-interval-s", "0.25",
                 "--heartbeat-timeout-s", "3", *extra],
                cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def client(self) -> str:
        return f"tcp://127.0.0.1:{self.ports['client']}"

    @property
    def rpc(self) -> str:
        return f"tcp://127.0.0.1:{self.ports['replica']}"

    def wait_up(self) -> FrontendProc:
        wait_for(lambda: http_ok(f"{self.http}/health"), START_S, f"frontend {self.name} to answer /health",
                 alive=self.proc, why=self.log_path.read_text)
        return self

    def kill(self) -> None:
        """SIGKILL: the frontend dies with queries in its hands, as a crashed host's would."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class HAProxyProc:
    """HAProxy (master-worker) on a configuration ``schooner haproxy`` wrote."""

    def __init__(self, cfg: Path, tmp: Path) -> None:
        self.cfg = cfg
        self.pid_file = tmp / "haproxy.pid"
        self.log_path = tmp / "haproxy.log"
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen([shutil.which("haproxy"), "-W", "-db", "-f", str(cfg),
                                          "-p", str(self.pid_file)],
                                         stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def stop_all(procs: Iterator) -> None:
    for p in procs:
        try:
            p.stop()
        except Exception:  # noqa: BLE001 - clean up the rest whatever one does
            pass
