"""Pin a replica to cpus (and a gpu): affinity, thread counts, CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, Sequence

from containers.errors import PinningError

log = logging.getLogger(__name__)

_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def parse_cpus(spec: str | Iterable[int]) -> list[int]:
    """Parse a cpu list like ``"0-3,6"`` (or a list of ints) into sorted unique cpu ids."""
    if not isinstance(spec, str):
        try:
            cpus = sorted({int(c) for c in spec})
        except (TypeError, ValueError) as err:
            raise PinningError(f"cpus must be integers, got {spec!r}") from err
        if any(c < 0 for c in cpus):
            raise PinningError(f"cpus must be >= 0, got {spec!r}")
        return cpus
    out: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise PinningError(f"cpus {spec!r}: {part!r} is not a cpu id or range like 0-3") from None
        if first < 0 or last < first:
            raise PinningError(f"cpus {spec!r}: bad range {part!r}")
        out.update(range(first, last + 1))
    if not out:
        raise PinningError(f"cpus {spec!r} names no cpu")
    return sorted(out)


def format_cpus(cpus: Sequence[int]) -> str:
    """The compact list form of ``cpus`` (``[0,1,2,5]`` -> ``"0-2,5"``), as in /proc Cpus_allowed_list."""
    parts: list[str] = []
    ordered = sorted(set(cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def allowed_cpus() -> list[int]:
    """The cpus this process may run on."""
    return sorted(os.sched_getaffinity(0))


def validate_cpus(cpus: Sequence[int]) -> list[int]:
    """Check that every cpu exists and is allowed to this process; return them sorted."""
    if not cpus:
        raise PinningError("cpus must name at least one cpu")
    allowed = set(allowed_cpus())
    missing = sorted(set(cpus) - allowed)
    if missing:
        raise PinningError(f"cpus {format_cpus(missing)} are not available to this process "
                           f"(allowed: {format_cpus(sorted(allowed))}; this machine has {os.cpu_count()} cpus)")
    return sorted(set(cpus))


def pin_cpus(cpus: Sequence[int]) -> list[int]:
    """Pin every thread of this process to ``cpus`` and cap thread pools at ``len(cpus)``.

    Threads that already exist (e.g. a BLAS pool started when numpy was imported)
    are pinned too, since affinity is per thread and only inherited by new ones.
    """
    cpus = validate_cpus(cpus)
    for tid in _thread_ids():
        try:
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, PermissionError):
            continue  # thread ended meanwhile
        except OSError as err:
            raise PinningError(f"cannot pin to cpus {format_cpus(cpus)}: {err}") from err
    limit_threads(len(cpus))
    log.info("pinned to cpus %s", format_cpus(cpus))
    return cpus


def limit_threads(n: int) -> None:
    """Cap the math libraries' thread pools at ``n`` (env for libraries loaded later, live ones now)."""
    for var in _THREAD_ENV_VARS:
        os.environ[var] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(n)


def select_gpu(gpu: int | None) -> int | None:
    """Make ``gpu`` the only visible CUDA device (before any CUDA library starts).

    Returns the device index the model must use inside this process (0), or None
    for cpu only (the environment is then left as it is).
    """
    if gpu is None:
        return None
    if not isinstance(gpu, int) or gpu < 0:
        raise PinningError(f"gpu must be a non-negative integer, got {gpu!r}")
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return 0


def _thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
