"""A whole Schooner deployment on this machine: Redis, the query frontend and the management service.

``Stack`` starts embedded Redis (unless a URL is given), ``python -m frontend``
and ``python -m management`` as processes on given or free loopback ports, waits
until they answer, and stops them in reverse order (management first, which
drains its replicas) without leaving orphans, also when something fails half way.
Used by ``schooner up``, the driver and the tests.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schooner import defaults
from schooner.cli import PID_HEADER
from schooner.httpget import http_get
from schooner.urls import redact
from schooner.types import BACKENDS
from management import admin_token as admin_token_mod
from management.embedded_redis import EmbeddedRedis, free_port
from management.supervisor import StateDirLock, Supervisor, ports_in_use
from management.errors import ManagementError

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)

_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
_MANAGEMENT_STOP_S = 45.0  # the management service drains every replica before it exits
_PROCESS_STOP_S = 15.0
_RESTART_TIMEOUT_S = 60.0  # a restarted frontend or management service must answer within this
_START_ATTEMPTS = 2  # free ports are picked before binding: retry once if one was taken meanwhile


class StackError(ManagementError):
    """A process of the stack did not start (its log tail is in the message)."""

    code = "stack_error"


class Stack:
    """Redis + frontend + management service as local processes; a context manager."""

    def __init__(self, *, redis_url: str = "", host: str = defaults.HOST, client_port: int = 0,
                 replica_port: int = 0, http_port: int = 0, management_port: int = 0, backend: str = "process",
                 state_dir: str | os.PathLike | None = None, frontend_cpus: list[int] | None = None,
                 admin_token: str | None = None, heartbeat_interval_s: float | None = None,
                 heartbeat_timeout_s: float | None = None, env: dict[str, str] | None = None,
                 log_dir: str | os.PathLike | None = None, python: str = sys.executable,
                 reconcile_interval_s: float | None = None,
                 model_roots: list[str | os.PathLike] | None = None, curve: bool = True) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        for name, port in (("client_port", client_port), ("replica_port", replica_port),
                           ("http_port", http_port), ("management_port", management_port)):
            if not isinstance(port, int) or not 0 <= port < 65536:
                raise ValueError(f"{name} must be 0 (a free port) or a port number, got {port!r}")
        if frontend_cpus is not None and not all(isinstance(c, int) and c >= 0 for c in frontend_cpus):
            raise ValueError(f"frontend_cpus must be a list of cpu ids, got {frontend_cpus!r}")
        self.host = host
        self._requested = {"client": client_port, "replica": replica_port, "http": http_port,
                           "management": management_port}
        self._ports: dict[str, int] = {}
        self.backend = backend
        self._own_state_dir = state_dir is None
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="schooner-stack-"))
        self.log_dir = Path(log_dir) if log_dir else self.state_dir / "logs"
        self.frontend_cpus = list(frontend_cpus) if frontend_cpus else []
        # None: the one SCHOONER_ADMIN_TOKEN names, else the one the management service generates into
        # <state_dir>/admin-token (read after it starts); "": writes need no token (loopback only).
        if admin_token is None:
            admin_token = (env or {}).get(admin_token_mod.ENV) or os.environ.get(admin_token_mod.ENV) or None
        self.admin_token = admin_token
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.reconcile_interval_s = reconcile_interval_s
        # Where model files may load from; None: the management service's default, <state_dir>/models.
        self.model_roots = [str(r) for r in model_roots] if model_roots else []
        self.env = dict(env or {})
        self.python = python
        self.curve = curve  # CURVE replica links: the frontend key pair lives in <state_dir>/keys
        self._redis_url = redis_url
        self._redis: EmbeddedRedis | None = None
        self.frontend: subprocess.Popen | None = None
        self.management: subprocess.Popen | None = None
        self.supervisor: Supervisor | None = None
        self._lock: StateDirLock | None = None
        self._started = False

    # -- addresses ---------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        """The Redis the deployment keeps its state in."""
        return self._redis_url

    @property
    def frontend_http_url(self) -> str:
        """``http://host:port`` of the frontend (queries, /metrics, /health, /replicas)."""
        return f"http://{self.host}:{self._port('http')}"

    @property
    def management_url(self) -> str:
        """``http://host:port`` of the management REST API."""
        return f"http://{self.host}:{self._port('management')}"

    @property
    def client_address(self) -> str:
        """ZMQ address clients connect to."""
        return f"tcp://{self.host}:{self._port('client')}"

    @property
    def replica_address(self) -> str:
        """ZMQ address replicas connect to."""
        return f"tcp://{self.host}:{self._port('replica')}"

    @property
    def model_root(self) -> Path:
        """The first model root: where model files for this deployment go."""
        return Path(self.model_roots[0]) if self.model_roots else self.state_dir / "models"

    def addresses(self) -> dict[str, str]:
        """Every address of the running stack, by name."""
        return {"frontend_http": self.frontend_http_url, "management": self.management_url,
                "client": self.client_address, "replica_rpc": self.replica_address, "redis": self.redis_url,
                "logs": str(self.log_dir),
                "admin_token_file": admin_token_mod.path(self.state_dir) if self.admin_token else ""}

    def _port(self, name: str) -> int:
        if name not in self._ports:
            raise RuntimeError("the stack has not been started")
        return self._ports[name]

    # -- life cycle --------------------------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> Stack:
        """Start Redis, the frontend and the management service; wait until each answers."""
        if self._started:
            return self
        # Alone on the state dir and the ports, checked before anything starts: a second
        # `schooner up` must not touch (nor, on its way out, stop) a running deployment.
        lock = StateDirLock(self.state_dir)
        try:
            lock.acquire()
        except RuntimeError as err:
            raise StackError(str(err)) from None
        busy = ports_in_use(self.host, self._requested)
        if busy:
            lock.release()
            raise StackError(f"port{'s' if len(busy) > 1 else ''} {', '.join(busy)} on {self.host} already in use "
                             "(another schooner up?); stop it or choose other ports")
        self._lock = lock
        self._started = True
        atexit.register(self.stop)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            if not self._redis_url:
                self._redis = EmbeddedRedis(self.state_dir / "redis", host=self.host).start()
                self._redis_url = self._redis.url
            deadline = time.monotonic() + timeout_s
            for attempt in range(1, _START_ATTEMPTS + 1):
                self._pick_ports()
                try:
                    self._start_frontend(deadline)
                    self._start_management(deadline)
                    break
                except StackError:
                    if attempt == _START_ATTEMPTS or not self._retryable():
                        raise
                    log.warning("stack start failed (a port may have been taken); retrying on new ports")
                    self._stop_processes()
        except BaseException:
            self.stop()
            raise
        self._watch()
        log.info("stack up: %s", {k: redact(v) for k, v in self.addresses().items()})
        return self

    def _watch(self) -> None:
        sup = self.supervisor = Supervisor()
        if self._redis is not None:
            redis_server = self._redis
            sup.watch("redis", redis_server.running, redis_server.start,
                      lambda: redis_server.returncode)
        sup.watch("frontend", lambda: self.frontend is not None and self.frontend.poll() is None,
                  lambda: self._start_frontend(time.monotonic() + _RESTART_TIMEOUT_S),
                  lambda: self.frontend.returncode if self.frontend else None)
        sup.watch("management", lambda: self.management is not None and self.management.poll() is None,
                  lambda: self._start_management(time.monotonic() + _RESTART_TIMEOUT_S),
                  lambda: self.management.returncode if self.management else None)

    def supervise(self) -> None:
        """Restart whichever of Redis, the frontend and the management service died (with backoff)."""
        if self.supervisor is not None:
            self.supervisor.check()

    def stop(self) -> None:
        """Stop management (and its replicas), frontend, Redis, in that order; idempotent."""
        atexit.unregister(self.stop)
        self.supervisor = None
        self._stop_processes()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        if self._own_state_dir and self.state_dir.exists() and os.environ.get("SCHOONER_KEEP_STATE") != "1":
            shutil.rmtree(self.state_dir, ignore_errors=True)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self._started = False

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------

    def _retryable(self) -> bool:
        return any(p == 0 for p in self._requested.values())

    def _pick_ports(self) -> None:
        chosen: set[int] = set()
        for name, port in self._requested.items():
            while port == 0 or port in chosen:
                port = free_port(self.host)
            chosen.add(port)
            self._ports[name] = port

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        path = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = _PROJECT_ROOT + (os.pathsep + path if path else "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _secrets_env(self) -> dict[str, str]:
        # A Redis URL may carry a password: it goes to the children by environment, never on a
        # command line, which every local user can read in ps.
        return {"SCHOONER_REDIS_URL": self._redis_url}

    def _spawn(self, name: str, args: list[str], cpus: list[int] | None = None,
               env: dict[str, str] | None = None) -> subprocess.Popen:
        cmd = [self.python, "-m", name, *args]
        if cpus:
            taskset = shutil.which("taskset")
            if taskset is None:
                raise StackError("frontend_cpus needs taskset (util-linux) on PATH")
            cmd = [taskset, "-c", ",".join(str(c) for c in cpus), *cmd]
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            out.write(f"--- start: {' '.join(cmd)}\n".encode())
            out.flush()
            # Own session: a Ctrl-C meant for `schooner up` must not hit the children
            # before the stack stops them in order.
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env={**self._child_env(), **self._secrets_env(), **(env or {})},
                                    cwd=_PROJECT_ROOT,
                                    start_new_session=True)

    def _start_frontend(self, deadline: float) -> None:
        args = ["--host", self.host, "--client-port", str(self._ports["client"]),
                "--replica-port", str(self._ports["replica"]), "--http-port", str(self._ports["http"])]
        if self.curve:
            # The frontend makes the key pair file on first start; management reads its public half.
            args += ["--curve-secret-file", str(self.state_dir / "keys" / "frontend.key_secret")]
        if self.heartbeat_interval_s is not None:
            args += ["--heartbeat-interval-s", str(self.heartbeat_interval_s)]
        if self.heartbeat_timeout_s is not None:
            args += ["--heartbeat-timeout-s", str(self.heartbeat_timeout_s)]
        self.frontend = self._spawn("frontend", args, self.frontend_cpus)
        self._wait_http(self.frontend, "frontend", f"{self.frontend_http_url}/health/ready", deadline)

    def _start_management(self, deadline: float) -> None:
        args = ["--host", self.host, "--port", str(self._ports["management"]),
                "--frontend-http", self.frontend_http_url, "--frontend-rpc", self.replica_address,
                "--backend", self.backend, "--state-dir", str(self.state_dir),
                "--log-dir", str(self.log_dir / "replicas")]
        if self.frontend_cpus:
            args += ["--frontend-cpus", ",".join(str(c) for c in self.frontend_cpus)]
        if self.curve:
            args += ["--curve"]
        if self.reconcile_interval_s is not None:
            args += ["--reconcile-interval-s", str(self.reconcile_interval_s)]
        for root in self.model_roots:
            args += ["--model-root", root]
        # The token goes by environment, never on a command line (ps shows those to every user).
        env = {"SCHOONER_ADMIN_TOKEN": self.admin_token} if self.admin_token else {}
        if self.admin_token == "":
            args += ["--no-admin-token"]
        self.management = self._spawn("management", args, env=env)
        self._wait_http(self.management, "management", f"{self.management_url}/admin/ping", deadline)
        if self.admin_token is None:  # the management service generated one into the state dir
            self.admin_token = admin_token_mod.read_file(admin_token_mod.path(self.state_dir))

    def _wait_http(self, proc: subprocess.Popen, name: str, url: str, deadline: float) -> None:
        while True:
            code = proc.poll()
            if code is not None:
                raise StackError(f"{name} exited with {code} while starting:\n{self._tail(name)}")
            try:
                status, headers = http_get(url, timeout_s=2.0)  # urllib would cost ~7 MiB here
                # Ready only when the answer names our child's pid: another server on the port
                # (or an old instance) answering 200 must not pass for it.
                if status == 200 and headers.get(PID_HEADER.lower()) == str(proc.pid):
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise StackError(f"{name} did not answer {url} in time:\n{self._tail(name)}")
            time.sleep(0.1)

    def _tail(self, name: str, lines: int = 30) -> str:
        try:
            with open(self.log_dir / f"{name}.log", encoding="utf-8", errors="replace") as fh:
                return "".join(deque(fh, maxlen=lines))
        except OSError:
            return "(no log)"

    def _stop_processes(self) -> None:
        if self.management is not None:
            # Replicas run in their own sessions: remember them, so none outlives its manager.
            children = _descendants(self.management.pid)
            _terminate(self.management, _MANAGEMENT_STOP_S, "management")
            _reap(children)
            self.management = None
        if self.frontend is not None:
            children = _descendants(self.frontend.pid)
            _terminate(self.frontend, _PROCESS_STOP_S, "frontend")
            _reap(children)
            self.frontend = None
        if self._ports:
            # Replicas of a management process that was killed hard are nobody's children.
            _reap(_replicas_of(self.replica_address))


def _descendants(pid: int) -> list[psutil.Process]:
    import psutil  # noqa: PLC0415 - needed only to stop; ~2 MiB for the whole life of `schooner up`

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _replicas_of(frontend_address: str) -> list[psutil.Process]:
    """Local replica processes connected to ``frontend_address``."""
    import psutil  # noqa: PLC0415 - needed only to stop

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "containers.replica" in cmdline and frontend_address in cmdline:
            found.append(proc)
    return found


def _terminate(proc: subprocess.Popen, timeout_s: float, name: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) did not stop in %.0fs: killing it", name, proc.pid, timeout_s)
            proc.kill()
            proc.wait()


def _reap(processes: list[Any]) -> None:
    """SIGTERM, then SIGKILL, whatever is left of ``processes``."""
    import psutil  # noqa: PLC0415 - needed only to stop

    alive = [p for p in processes if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=_PROCESS_STOP_S)
    for p in still:
        try:
            log.warning("killing orphan pid %d", p.pid)
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(still, timeout=5)
