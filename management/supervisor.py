"""What keeps one ``schooner up`` alone on its state dir and ports, and its processes alive.

- :class:`StateDirLock`: an exclusive ``flock`` on ``<state_dir>/schooner.lock``,
  held for the stack's life. A second ``schooner up`` on the same state dir is
  refused at once, before it starts anything, naming the holder's pid.
- :func:`ports_in_use`: the requested ports something already listens on,
  checked (after the lock) before anything starts.
- :class:`Supervisor`: restarts the stack's Redis, frontend and management
  service when one dies, with exponential backoff (0.5 s doubling to 30 s; a
  process that ran 30 s healthy starts again from 0.5 s), each death and
  restart logged.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

LOCK_FILE = "schooner.lock"
BACKOFF_S = (0.5, 30.0)
HEALTHY_RUN_S = 30.0


class StateDirLock:
    """An exclusive lock on a state dir (released by :meth:`release` or when the process dies)."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; RuntimeError naming the holder when another process has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise RuntimeError(f"another schooner up (pid {holder}) is running from {self.path.parent}; "
                               "stop it first (schooner down) or use another --state-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def ports_in_use(host: str, ports: dict[str, int]) -> list[str]:
    """``"name port"`` for each nonzero port of ``ports`` that cannot be bound on ``host`` now."""
    busy = []
    for name, port in ports.items():
        if not port:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
            try:
                sock.bind((host, port))
            except OSError:
                busy.append(f"{name} {port}")
    return busy


@dataclass
class _Child:
    name: str
    alive: Callable[[], bool]
    restart: Callable[[], Any]
    exit_code: Callable[[], Any]
    started_at: float
    failures: int = 0
    restart_at: float = 0.0  # 0: alive as far as we know


class Supervisor:
    """Restarts dead children of a stack; call :meth:`check` every second or so."""

    def __init__(self, backoff_s: tuple[float, float] = BACKOFF_S) -> None:
        self.backoff_s = backoff_s
        self.children: list[_Child] = []
        self.restarts: dict[str, int] = {}

    def watch(self, name: str, alive: Callable[[], bool], restart: Callable[[], Any],
              exit_code: Callable[[], Any] = lambda: None) -> None:
        """Watch one child: ``alive()`` says whether it runs, ``restart()`` starts it again (may raise)."""
        self.children.append(_Child(name, alive, restart, exit_code, time.monotonic()))

    def check(self) -> None:
        """Notice children that died, and restart those whose backoff is over."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at == 0.0:
                if child.alive():
                    continue
                child.failures = 1 if now - child.started_at >= HEALTHY_RUN_S else child.failures + 1
                lo, hi = self.backoff_s
                delay = min(hi, lo * 2 ** (child.failures - 1))
                child.restart_at = now + delay
                log.warning("%s died (exit %s); restarting it in %.1f s (failure %d in a row)", child.name,
                            child.exit_code(), delay, child.failures)
            if now < child.restart_at:
                continue
            try:
                child.restart()
            except Exception as err:  # noqa: BLE001 - logged; tried again after a longer backoff
                log.error("restarting %s failed: %s", child.name, err)
                child.started_at, child.restart_at = now, 0.0  # counted as one more failure next check
                continue
            child.started_at, child.restart_at = time.monotonic(), 0.0
            self.restarts[child.name] = self.restarts.get(child.name, 0) + 1
            log.warning("%s restarted (restart %d)", child.name, self.restarts[child.name])
