"""The machine's cores and GPUs: CPU-list parsing, online and usable CPUs, GPU detection.

The one implementation, used by replica pinning (``containers/pinning.py``),
the manager's allocator (``management/allocator.py``) and the driver's checks
(``driver/validate.py``).

GPU ids are the device numbers a child process is given in
``CUDA_VISIBLE_DEVICES``: when this process runs with ``CUDA_VISIBLE_DEVICES``
set, the GPUs it offers are exactly the ids listed there (CUDA's rule: the list
ends at the first entry that is not a device number, e.g. ``-1``); otherwise
every GPU ``nvidia-smi -L`` (or ``/proc/driver/nvidia/gpus``) finds.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

ONLINE_CPUS_PATH = "/sys/devices/system/cpu/online"
CGROUP_CPUSET_PATHS = ("/sys/fs/cgroup/cpuset.cpus.effective", "/sys/fs/cgroup/cpuset/cpuset.effective_cpus")
NVIDIA_PROC_GPUS = "/proc/driver/nvidia/gpus"
NVIDIA_SMI_TIMEOUT_S = 20.0


def parse_cpu_list(spec: str | Iterable[int]) -> list[int]:
    """Sorted distinct cpu ids of a kernel cpu list (``"0-3,6"``) or of an iterable of ints.

    Raises ValueError naming the bad part: not a number, a negative id, a range
    that runs backwards, or a list that names no cpu.
    """
    if not isinstance(spec, str):
        try:
            items = list(spec)
        except TypeError as err:
            raise ValueError(f"cpus must be a cpu list like 0-3,6 or a list of integers, got {spec!r}") from err
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in items):
            raise ValueError(f"cpus must be integers, got {spec!r}")
        if any(c < 0 for c in items):
            raise ValueError(f"cpus must be >= 0, got {spec!r}")
        return sorted(set(items))
    out: set[int] = set()
    for part in spec.replace(" ", "").strip().split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"cpus {spec.strip()!r}: {part!r} is not a cpu id or a range like 0-3") from None
        if first < 0 or last < first:
            raise ValueError(f"cpus {spec.strip()!r}: bad range {part!r}")
        out.update(range(first, last + 1))
    if not out:
        raise ValueError(f"cpus {spec.strip()!r} names no cpu")
    return sorted(out)


def format_cpu_list(cpus: Sequence[int]) -> str:
    """The compact kernel form of ``cpus`` (``[0, 1, 2, 5]`` -> ``"0-2,5"``)."""
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


def _read_cpu_list(path: str) -> list[int] | None:
    try:
        text = Path(path).read_text(encoding="ascii")
    except OSError:
        return None
    if not text.strip():
        return None
    try:
        return parse_cpu_list(text)
    except ValueError:
        log.warning("%s holds %r, not a cpu list; ignored", path, text.strip())
        return None


def online_cpus() -> list[int]:
    """The machine's online cpus, within this container's cgroup cpuset when there is one.

    This process's own affinity is ignored on purpose: a manager or driver
    started under ``numactl -C 0`` still places replicas on the other cores.
    """
    online = _read_cpu_list(ONLINE_CPUS_PATH) or list(range(os.cpu_count() or 1))
    for path in CGROUP_CPUSET_PATHS:
        allowed = _read_cpu_list(path)
        if allowed:
            return [c for c in online if c in set(allowed)]
    return online


def allowed_cpus() -> list[int]:
    """The cpus this process may run on (its affinity)."""
    return sorted(os.sched_getaffinity(0))


def visible_gpus(env: Mapping[str, str] | None = None) -> list[int] | None:
    """The GPU ids ``CUDA_VISIBLE_DEVICES`` lists, None when it is unset."""
    visible = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    out: list[int] = []
    for entry in visible.split(","):
        entry = entry.strip()
        try:
            gpu = int(entry)
        except ValueError:
            if entry:
                log.warning("CUDA_VISIBLE_DEVICES entry %r is not a device number; GPUs after it are ignored", entry)
            break
        if gpu < 0:
            break
        if gpu not in out:
            out.append(gpu)
    return out


def detect_gpus(env: Mapping[str, str] | None = None) -> list[int]:
    """GPU ids this process may hand to replicas (see the module docstring)."""
    visible = visible_gpus(env)
    if visible is not None:
        return visible
    exe = shutil.which("nvidia-smi")
    if exe is not None:
        try:
            out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S,
                                 check=False)
        except (OSError, subprocess.SubprocessError) as err:
            log.warning("nvidia-smi failed: %s", err)
        else:
            if out.returncode == 0:
                return list(range(sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))))
    proc = Path(NVIDIA_PROC_GPUS)
    return list(range(len(list(proc.iterdir())))) if proc.is_dir() else []
