"""The default replica backend: each replica is a local ``python -m containers.replica`` process.

Each process is pinned from the outside (``taskset``, or ``sched_setaffinity`` in
the child when taskset is missing) so it runs on its cores from its first
instruction, writes stdout/stderr to ``<log_dir>/<replica_id>.log`` and runs in
its own session, so a Ctrl-C aimed at the manager does not kill it mid-drain.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schooner import curve
from management.backends.base import LaunchSpec, RunningReplica, replica_args
from management.errors import BackendError

log = logging.getLogger(__name__)

_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class _Proc:
    spec: LaunchSpec
    popen: subprocess.Popen
    log_path: Path


class LocalProcessBackend:
    """Starts replicas as local processes pinned to their cores."""

    name = "process"

    def __init__(self, python: str = sys.executable, log_dir: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.python = python
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="schooner-replicas-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env or {})
        self._procs: dict[str, _Proc] = {}
        self._lock = threading.Lock()
        self._taskset = shutil.which("taskset")

    def command(self, spec: LaunchSpec) -> list[str]:
        """The command line that starts ``spec`` (without the outside pinning)."""
        return [self.python] + replica_args(spec, gpu=spec.gpu)

    def start(self, spec: LaunchSpec) -> RunningReplica:
        """Spawn the replica pinned to ``spec.cpus``; return at once (it registers on its own)."""
        if not spec.cpus:
            raise BackendError(f"replica {spec.replica_id}: no cpus to pin to")
        with self._lock:
            old = self._procs.get(spec.replica_id)
            if old is not None and old.popen.poll() is None:
                raise BackendError(f"replica {spec.replica_id} is already running (pid {old.popen.pid})")
        cmd = self.command(spec)
        cpu_list = ",".join(str(c) for c in spec.cpus)
        preexec = None
        if self._taskset:
            cmd = [self._taskset, "-c", cpu_list] + cmd
        else:
            cpus = set(spec.cpus)

            def preexec() -> None:  # runs in the child before exec
                os.sched_setaffinity(0, cpus)
        env = self._child_env(spec)
        log_path = self.log_dir / f"{spec.replica_id}.log"
        try:
            with open(log_path, "ab") as out:
                out.write(f"--- start: {' '.join(cmd)}\n".encode())
                out.flush()
                popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, cwd=_PROJECT_ROOT, start_new_session=True,
                                         preexec_fn=preexec)
        except OSError as err:
            raise BackendError(f"could not start replica {spec.replica_id}: {err}") from err
        try:
            # taskset pins before it execs python; pinning from here too means the
            # replica is on its cores by the time start() returns, whatever ran first.
            os.sched_setaffinity(popen.pid, set(spec.cpus))
        except OSError:
            pass  # exited already: list() reports it dead
        with self._lock:
            self._procs[spec.replica_id] = _Proc(spec, popen, log_path)
        log.info("started replica %s (pid %d) on cpus %s gpu %s", spec.replica_id, popen.pid, cpu_list, spec.gpu)
        return self._running(self._procs[spec.replica_id])

    def stop(self, replica_id: str, timeout_s: float) -> None:
        """SIGTERM (drain), wait up to ``timeout_s``, then SIGKILL; forget the replica."""
        with self._lock:
            proc = self._procs.pop(replica_id, None)
        if proc is None:
            return
        popen = proc.popen
        if popen.poll() is None:
            try:
                popen.send_signal(signal.SIGTERM)
                popen.wait(timeout=max(timeout_s, 0.0))
            except subprocess.TimeoutExpired:
                log.warning("replica %s (pid %d) did not drain in %.1fs: killing it", replica_id,
                            popen.pid, timeout_s)
                popen.kill()
                popen.wait()
            except ProcessLookupError:
                pass
        log.info("stopped replica %s (pid %d, exit %s)", replica_id, popen.pid, popen.returncode)

    def list(self) -> list[RunningReplica]:
        """Every replica started and not stopped; ``alive`` is False once its process exited."""
        with self._lock:
            procs = list(self._procs.values())
        return [self._running(p) for p in procs]

    def logs(self, replica_id: str, tail: int = 200) -> str:
        """The last ``tail`` lines of the replica's log file."""
        path = self.log_dir / f"{replica_id}.log"
        if not path.exists():
            raise BackendError(f"no logs for replica {replica_id}")
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=max(int(tail), 0)))

    def exit_code(self, replica_id: str) -> int | None:
        """The exit code of the replica's process, None while it runs or if unknown."""
        with self._lock:
            proc = self._procs.get(replica_id)
        return None if proc is None else proc.popen.poll()

    def _running(self, proc: _Proc) -> RunningReplica:
        spec = proc.spec
        return RunningReplica(replica_id=spec.replica_id, backend=self.name, handle=str(proc.popen.pid),
                              cpus=list(spec.cpus), gpu=spec.gpu, alive=proc.popen.poll() is None)

    def _child_env(self, spec: LaunchSpec) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.update(spec.env)
        path = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = _PROJECT_ROOT + (os.pathsep + path if path else "")
        env["PYTHONUNBUFFERED"] = "1"
        if spec.curve_key_file:
            env[curve.ENV_SECRET_FILE] = spec.curve_key_file
        if spec.gpu is None:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU replica must not grab a GPU by accident
        return env


def terminate_stray(pid: Any, replica_id: str, timeout_s: float) -> None:
    """SIGTERM (then SIGKILL) a leftover replica process of an earlier manager, if ``pid`` still runs it."""
    if not isinstance(pid, int) or pid <= 0:
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().split(b"\0")
    except OSError:
        return
    if b"containers.replica" not in cmdline or replica_id.encode() not in cmdline:
        return
    log.warning("stopping stray replica %s (pid %d) left by an earlier manager", replica_id, pid)
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _runs(pid):
            time.sleep(0.1)
        if _runs(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _runs(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
