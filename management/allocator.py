"""CPU and GPU placement of replicas: disjoint core sets, one GPU per replica while GPUs last.

The pool a model may use is validated against the *machine's* online cpus, not
against the caller's affinity: a management service started under
``numactl -C 0`` must still be able to place replicas on cores 1, 2, ...

The allocator is told which replica holds which placement (:meth:`claim`,
:meth:`release`), so that scaling keeps existing replicas on their cores and
gives new ones cores nobody else holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Collection, Iterable, Sequence

from management.errors import AllocationError
from schooner.topology import detect_gpus, online_cpus

log = logging.getLogger(__name__)

@dataclass
class Placement:
    """Where one replica runs: its cores and, optionally, its GPU."""

    cpus: list[int]
    gpu: int | None = None

    def to_dict(self) -> dict:
        """JSON/Redis-friendly form."""
        return {"cpus": list(self.cpus), "gpu": self.gpu}


@dataclass
class _Claim:
    owner: str  # "<model>:<version>": replicas of one owner never share cores
    placement: Placement = field(default_factory=lambda: Placement([]))


class CpuAllocator:
    """Hands out disjoint core sets (and GPUs) for replicas and remembers who holds what."""

    def __init__(self, available: list[int] | None = None, gpus: list[int] | None = None) -> None:
        cpus = online_cpus() if available is None else list(available)
        if not cpus or not all(isinstance(c, int) and c >= 0 for c in cpus):
            raise ValueError(f"available must be a non-empty list of cpu ids, got {available!r}")
        self.available: list[int] = sorted(set(cpus))
        self.gpus: list[int] = detect_gpus() if gpus is None else sorted(set(gpus))
        self._claims: dict[str, _Claim] = {}

    # -- bookkeeping -------------------------------------------------------------------------

    def claim(self, replica_id: str, owner: str, placement: Placement) -> None:
        """Record that ``replica_id`` (of ``owner``, e.g. ``"model:version"``) holds ``placement``."""
        self._claims[replica_id] = _Claim(owner, placement)

    def release(self, replica_id: str) -> None:
        """Forget ``replica_id``'s placement (no-op if unknown)."""
        self._claims.pop(replica_id, None)

    def placement_of(self, replica_id: str) -> Placement | None:
        """The placement ``replica_id`` holds, if any."""
        claim = self._claims.get(replica_id)
        return claim.placement if claim else None

    def in_use(self, exclude_owner: str | None = None) -> dict[int, list[str]]:
        """cpu -> owners holding it (optionally leaving one owner out)."""
        used: dict[int, list[str]] = {}
        for claim in self._claims.values():
            if claim.owner == exclude_owner:
                continue
            for cpu in claim.placement.cpus:
                used.setdefault(cpu, []).append(claim.owner)
        return used

    # -- validation and placement ------------------------------------------------------------

    def check(self, n_replicas: int, cpus_per_replica: int, pool: Sequence[int] | None,
              gpus: Sequence[int] | None) -> tuple[list[int], list[int]]:
        """Validate a request; return the pool and GPUs to use. Raise AllocationError naming the problem."""
        if not isinstance(n_replicas, int) or isinstance(n_replicas, bool) or n_replicas < 0:
            raise AllocationError(f"num_replicas must be an integer >= 0, got {n_replicas!r}")
        if (not isinstance(cpus_per_replica, int) or isinstance(cpus_per_replica, bool)
                or cpus_per_replica < 1):
            raise AllocationError(f"cpus_per_replica must be an integer >= 1, got {cpus_per_replica!r}")
        pool_list = list(self.available if pool is None or len(pool) == 0 else pool)
        missing = _unknown_ids(pool_list, "model_cpus", "cpu", self.available)
        if missing:
            raise AllocationError(
                f"cpu(s) {missing} do not exist on this machine (online cpus: {_fmt(self.available)})")
        need = n_replicas * cpus_per_replica
        if need > len(pool_list):
            raise AllocationError(
                f"{n_replicas} replica(s) x {cpus_per_replica} cpu(s) need {need} cpus, "
                f"but the pool {pool_list} has only {len(pool_list)}")
        gpu_list = list(gpus or [])
        missing_gpus = _unknown_ids(gpu_list, "gpus", "GPU", self.gpus)
        if missing_gpus:
            have = f"GPUs {self.gpus}" if self.gpus else "no GPU (nvidia-smi -L finds none)"
            raise AllocationError(f"gpu(s) {missing_gpus} do not exist: this machine has {have}")
        return pool_list, gpu_list

    def allocate(self, n_replicas: int, cpus_per_replica: int, pool: Sequence[int] | None = None,
                 gpus: Sequence[int] | None = None, *, owner: str = "", keep: Iterable[Placement] = (),
                 share: bool = False, avoid: Collection[int] = ()) -> list[Placement]:
        """Placements for ``n_replicas`` new replicas of ``owner``, disjoint from ``keep``.

        ``keep`` are the placements of the owner's replicas that stay; the request is
        validated for the total (kept + new), before anything starts. Cores held by
        other owners are avoided; if the pool has too few free cores the request is
        refused, unless ``share`` (the pool was not chosen by the user), in which case
        the least-shared cores are used and a warning is logged. Cores in ``avoid``
        (the frontend's) are used last: only when the pool's other cores are taken.
        Otherwise cores go in pool order.
        """
        kept = list(keep)
        pool_list, gpu_list = self.check(n_replicas + len(kept), cpus_per_replica, pool, gpus)
        taken = {c for p in kept for c in p.cpus}
        free_pool = sorted((c for c in pool_list if c not in taken), key=lambda c: c in avoid)  # stable
        others = self.in_use(exclude_owner=owner)
        need = n_replicas * cpus_per_replica
        uncontended = [c for c in free_pool if c not in others]
        if len(uncontended) >= need:
            chosen = uncontended[:need]
        elif share:
            # Fewest other holders first, then pool order: spreads the overlap evenly.
            ranked = sorted(free_pool, key=lambda c: (len(others.get(c, [])), c in avoid, pool_list.index(c)))
            chosen = sorted(ranked[:need], key=pool_list.index)
            log.warning("cpus %s are shared with other models (%s): too few free cores in %s",
                        [c for c in chosen if c in others],
                        sorted({o for c in chosen for o in others.get(c, [])}), pool_list)
        else:
            held = {c: others[c] for c in free_pool if c in others}
            raise AllocationError(
                f"{n_replicas} new replica(s) x {cpus_per_replica} cpu(s) need {need} free cpus in "
                f"{pool_list}, but only {len(uncontended)} are free (held by other models: {held})")
        free_gpus = [g for g in gpu_list if g not in {p.gpu for p in kept}]
        placements = []
        for i in range(n_replicas):
            cpus = chosen[i * cpus_per_replica:(i + 1) * cpus_per_replica]
            placements.append(Placement(cpus=cpus, gpu=free_gpus[i] if i < len(free_gpus) else None))
        return placements


def _fmt(cpus: list[int]) -> str:
    return ",".join(str(c) for c in cpus)


def _unknown_ids(ids: list, field: str, noun: str, known: list[int]) -> list[int]:
    """Check ``ids`` are distinct integers (AllocationError naming ``field``); return those not in ``known``."""
    bad = [i for i in ids if not isinstance(i, int) or isinstance(i, bool)]
    if bad:
        raise AllocationError(f"{field} must be integers, got {bad!r}")
    if len(set(ids)) != len(ids):
        raise AllocationError(f"{field} lists a {noun} twice: {ids}")
    return sorted(i for i in ids if i not in known)
