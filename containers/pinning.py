"""Pin a replica to cpus (and a gpu): affinity, thread counts, CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, Sequence

from containers.errors import PinningError
from schooner import topology

log = logging.getLogger(__name__)

_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def parse_cpus(spec: str | Iterable[int]) -> list[int]:
    """Parse a cpu list like ``"0-3,6"`` (or a list of ints) into sorted unique cpu ids."""
    try:
        return topology.parse_cpu_list(spec)
    except ValueError as err:
        raise PinningError(str(err)) from err


format_cpus = topology.format_cpu_list
allowed_cpus = topology.allowed_cpus


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
