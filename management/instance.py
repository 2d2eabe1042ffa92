"""A running ``schooner up`` as its state dir records it: ``status``, ``down`` and ``reset`` find it there.

``schooner up`` writes ``<state-dir>/instance.json`` (its pid and every address,
also the free ports of ``--free-ports``) once the stack answers, and removes it
when it stops. The other commands read it, so they need no ports repeated.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from schooner.cli import PID_HEADER
from schooner.httpget import http_get

INSTANCE_FILE = "instance.json"


def instance_path(state_dir: str | os.PathLike) -> Path:
    """Where the instance record of ``state_dir`` lives."""
    return Path(state_dir) / INSTANCE_FILE


def write_instance(state_dir: str | os.PathLike, addresses: dict[str, str], pid: int | None = None) -> Path:
    """Record a running instance (atomically: a reader never sees half a file)."""
    path = instance_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": pid or os.getpid(), "started_s": time.time(), **addresses}, indent=2))
    os.replace(tmp, path)
    return path


def remove_instance(state_dir: str | os.PathLike) -> None:
    """Forget the instance record (``schooner up`` stopping)."""
    try:
        instance_path(state_dir).unlink()
    except FileNotFoundError:
        pass


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited child its parent has not reaped yet does not)."""
    import psutil  # noqa: PLC0415 - `schooner up` imports this module and would carry psutil for life

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def read_instance(state_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The record of the instance running from ``state_dir``; None if none is (a stale record is ignored)."""
    try:
        record = json.loads(instance_path(state_dir).read_text())
    except (OSError, ValueError):
        return None
    pid = record.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return None
    return record


def probe(url: str, timeout_s: float = 5.0) -> tuple[bool, str, int | None]:
    """(answered 200, a word on the outcome, the pid the answer names) for GET ``url``."""
    if url.startswith("https:"):
        return _probe_tls(url, timeout_s)
    try:
        status, headers = http_get(url, timeout_s=timeout_s)
    except OSError as err:
        return False, f"down ({err})", None
    pid = headers.get(PID_HEADER.lower())
    return status == 200, f"HTTP {status}", int(pid) if pid and pid.isdigit() else None


def _probe_tls(url: str, timeout_s: float) -> tuple[bool, str, int | None]:
    """:func:`probe` of an HTTPS frontend (``--tls-cert``), through urllib."""
    import urllib.error  # noqa: PLC0415 - ssl and urllib cost ~7 MiB; only HTTPS needs them
    import urllib.request  # noqa: PLC0415

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            pid = resp.headers.get(PID_HEADER)
            return resp.status == 200, f"HTTP {resp.status}", int(pid) if pid and pid.isdigit() else None
    except urllib.error.HTTPError as err:
        return False, f"HTTP {err.code}", None
    except (urllib.error.URLError, OSError) as err:
        return False, f"down ({getattr(err, 'reason', err)})", None


def stop_instance(state_dir: str | os.PathLike, timeout_s: float = 60.0) -> str:
    """SIGTERM the ``schooner up`` of ``state_dir`` and wait for it to exit; what happened, in words."""
    record = read_instance(state_dir)
    if record is None:
        remove_instance(state_dir)
        return "not running"
    pid = record["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            remove_instance(state_dir)
            return f"stopped (pid {pid})"
        time.sleep(0.2)
    raise TimeoutError(f"schooner up (pid {pid}) did not stop within {timeout_s:.0f} s")


def reset_state(state_dir: str | os.PathLike) -> list[str]:
    """Delete what a deployment keeps in ``state_dir`` (the embedded Redis data: apps, models, links,
    replicas; and logs); model files and the admin token stay. The paths removed."""
    if read_instance(state_dir) is not None:
        raise RuntimeError(f"a schooner up is running from {state_dir}: `schooner down` first")
    removed = []
    for name in ("redis", "logs"):
        path = Path(state_dir) / name
        if path.exists():
            shutil.rmtree(path)
            removed.append(str(path))
    return removed
