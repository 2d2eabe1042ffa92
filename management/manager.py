"""The replica manager: keeps each model version's replicas at the count, cores and GPUs asked for.

Desired state (``set_desired``) and one record per replica live in Redis; the
backend (local processes, Docker) runs the replicas; the frontend's
``GET /replicas`` says which of them are registered and ready. A reconcile loop
restarts replicas whose process died (same cores, exponential backoff), starts
missing ones and stops extra ones.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from schooner import defaults, topology
from schooner.types import Backend, ModelSpec, ReplicaState
from management import replica_launch as launch
from management.replica_launch import Health
from management.allocator import CpuAllocator, Placement
from management.backends.base import ReplicaBackend
from management.keys import KeyIssuer
from schooner import curve
from management.backends.local import terminate_stray
from management.errors import (AllocationError, BackendError, BadRequest, ManagementError, ModelFailed,
                               NotFound, ReplicasNotReady, StoreUnavailable)
from management.store import FrontendDirectory, ReplicaRecord
from management.frontend_client import SERVING, FrontendView, merge, public, wall_time

log = logging.getLogger(__name__)

_FIRST_HELLO_S = 15.0  # a start younger than this may not have registered yet (containers: no comparable pid)

# Where a replica runs, as a backend on many hosts reports it (Ray): kept in the record beside ``node``.
_PLACEMENT_KEYS = ("node_id", "node_ip", "node_cpus", "actor_pid")

class ReplicaManager:
    """Starts, stops, restarts and describes the replicas of every model version."""

    def __init__(self, store: Any, backend: ReplicaBackend, allocator: CpuAllocator, *, frontend_rpc: str,
                 frontend_http_url: str, reconcile_interval_s: float = 1.0,
                 restart_backoff_s: tuple[float, float] = (defaults.REPLICA_RESTART_BACKOFF_MIN_S,
                                                            defaults.REPLICA_RESTART_BACKOFF_MAX_S), frontend_cpus: list[int] | None = None,
                 stop_timeout_s: float = 30.0, replica_env: dict[str, str] | None = None,
                 http_timeout_s: float = 5.0,
                 failed_after_starts: int = defaults.MODEL_FAILED_AFTER_STARTS, keys: KeyIssuer | None = None) -> None:
        if not frontend_rpc:
            raise ValueError("frontend_rpc must be the frontend's replica address, e.g. tcp://127.0.0.1:7000")
        if reconcile_interval_s <= 0:
            raise ValueError("reconcile_interval_s must be > 0")
        lo, hi = restart_backoff_s
        if not 0 < lo <= hi:
            raise ValueError("restart_backoff_s must be (min, max) with 0 < min <= max")
        self.store = store
        self.backend = backend
        self.allocator = allocator
        self.frontend_rpc = frontend_rpc
        self.frontend_http_url = frontend_http_url.rstrip("/")
        self.reconcile_interval_s = reconcile_interval_s
        self.restart_backoff_s = (float(lo), float(hi))
        self.frontend_cpus = list(frontend_cpus or [])
        self.stop_timeout_s = stop_timeout_s
        self.replica_env = dict(replica_env or {})
        self.http_timeout_s = http_timeout_s
        if not isinstance(failed_after_starts, int) or failed_after_starts < 1:
            raise ValueError("failed_after_starts must be a positive integer")
        self.failed_after_starts = failed_after_starts
        self.pending_s = defaults.PENDING_SCALE_S
        self.keys = keys  # set: every replica gets its own CURVE key pair (management/keys.py)
        # A replica the frontend shows dead this long while its process runs (SIGSTOP, wedged) is replaced.
        self.dead_grace_s = 2 * reconcile_interval_s
        self._dead_since: dict[str, float] = {}
        self.host = socket.gethostname()
        self._lock = asyncio.Lock()
        self._health: dict[str, Health] = {}
        self._view = FrontendView(frontend_http_url, http_timeout_s, others=self._announced_http)
        self._adopted = False

    # -- public API --------------------------------------------------------------------------

    def default_pool(self) -> list[int]:
        """Every online cpu minus those the frontend is pinned to (all of them if that leaves none)."""
        pool = [c for c in self.allocator.available if c not in self.frontend_cpus]
        return pool or list(self.allocator.available)

    def owns_cores(self, cpus: list[int], owner: str) -> bool | None:
        """Whether a replica of ``owner`` on ``cpus`` has them to itself (it busy-polls only then).

        No when another model's replica holds one of them or the frontend may run there:
        on its ``frontend_cpus``, else (the frontend of ``schooner up`` inherits this
        service's affinity) on this process's cpus when they are not the whole machine.
        Unknown (None) when neither is known: an unpinned frontend may run anywhere.
        """
        if any(c in self.allocator.in_use(exclude_owner=owner) for c in cpus):
            return False
        frontend = set(self.frontend_cpus)
        if not frontend:
            mine = set(topology.allowed_cpus())
            if mine >= set(self.allocator.available):
                return None
            frontend = mine
        return not frontend & set(cpus)

    async def set_num_replicas(self, model_name: str, model_version: str | None = None, num_replicas: int = 1,
                               cpus_per_replica: int | None = None, model_cpus: list[int] | None = None,
                               gpus: list[int] | None = None, wait_s: float = 0.0) -> list[dict]:
        """Scale a model version to ``num_replicas``; refuse impossible placements before starting anything."""
        model = self._model(model_name, model_version)
        if not isinstance(wait_s, (int, float)) or isinstance(wait_s, bool) or wait_s < 0:
            raise BadRequest(f"wait_s must be a number >= 0, got {wait_s!r}")
        desired = {
            "num_replicas": num_replicas,
            "cpus_per_replica": model.cpus_per_replica if cpus_per_replica is None else cpus_per_replica,
            "model_cpus": list(model_cpus or []),
            "gpus": list(model.gpus if gpus is None else gpus),
        }
        async with self._lock:
            await self._adopt_once()
            plan = self._plan(model, desired)  # raises AllocationError, nothing changed yet
            await self._call(self.store.replicas.set_desired, model.name, model.version, desired)
            await self._apply(model, desired, plan)
        if wait_s > 0:
            await self.wait_ready(model.name, model.version, wait_s)
        return await self.describe(model.name, model.version)

    async def set_pending(self, model_name: str, model_version: str, num_replicas: int,
                          cpus_per_replica: int | None = None, model_cpus: list[int] | None = None,
                          gpus: list[int] | None = None) -> None:
        """Remember a scale request for a model version not registered yet; it applies once add_model comes."""
        if not isinstance(num_replicas, int) or isinstance(num_replicas, bool) or num_replicas < 0:
            raise BadRequest(f"num_replicas must be an integer >= 0, got {num_replicas!r}")
        desired = {"num_replicas": num_replicas, "cpus_per_replica": cpus_per_replica,
                   "model_cpus": list(model_cpus or []), "gpus": gpus, "pending_since": time.time()}
        await self._call(self.store.replicas.set_desired, model_name, str(model_version), desired)
        log.info("scale of %s:%s to %d kept until the model is registered", model_name, model_version,
                 num_replicas)

    async def wait_ready(self, model_name: str, model_version: str, timeout_s: float) -> None:
        """Wait until the frontend shows every replica of the model version ready (or busy).

        Raises ReplicasNotReady after ``timeout_s``; the replicas are left starting.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            desired = await self._call(self.store.replicas.get_desired, model_name, model_version) or {}
            if desired.get("failed"):
                raise ModelFailed(f"model {model_name}:{model_version} failed: {desired['failed']}")
            records = await self._call(self.store.replicas.find, model_name, model_version)
            view = await self.frontend_view()
            waiting = [r.replica_id for r in records
                       if view.get(r.replica_id, {}).get("state") not in SERVING]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise ReplicasNotReady(
                    f"replicas {waiting} of {model_name}:{model_version} were not ready within {timeout_s:g}s; "
                    "they keep starting (see /admin/get_model_replicas and /admin/get_replica_logs)")
            await asyncio.sleep(0.1)

    async def describe(self, model_name: str, model_version: str | None = None) -> list[dict]:
        """Every replica of a model version: Redis record merged with the frontend's view."""
        model = self._model(model_name, model_version)
        records = await self._call(self.store.replicas.find, model.name, model.version)
        view = await self.frontend_view()
        return [merge(r, view.get(r.replica_id)) for r in sorted(records, key=_seq)]

    def list_all(self) -> list[dict]:
        """Every replica record of every model (as stored in Redis)."""
        return [public(r) for r in self.store.replicas.find()]

    def get(self, replica_id: str) -> dict:
        """One replica's record; NotFound if no model has it."""
        for record in self.store.replicas.find():
            if record.replica_id == replica_id:
                return public(record)
        raise NotFound(f"replica {replica_id!r} does not exist")

    def logs(self, replica_id: str, tail: int = 200) -> str:
        """The last ``tail`` lines the replica wrote; NotFound if it is unknown."""
        self.get(replica_id)
        try:
            return self.backend.logs(replica_id, tail)
        except BackendError as err:
            raise NotFound(str(err)) from err

    async def delete_model(self, name: str, version: str) -> None:
        """Stop every replica of a model version and forget its desired state and records."""
        async with self._lock:
            records = await self._call(self.store.replicas.find, name, str(version))
            await self._stop_many(records)
            await self._call(self.store.replicas.delete_desired, name, str(version))

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile every ``reconcile_interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.reconcile_once()
            except ManagementError as err:
                log.warning("reconcile failed: %s", err)
            except Exception:  # a bug in one pass must not end the loop
                log.exception("reconcile failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.reconcile_interval_s)
            except asyncio.TimeoutError:
                pass

    async def reconcile_once(self) -> None:
        """One pass: restart dead replicas, start missing ones, stop extras, refresh records."""
        async with self._lock:
            await self._adopt_once()
            view = await self.frontend_view()
            running = {r.replica_id: r for r in await asyncio.to_thread(self.backend.list)}
            records = await self._call(self.store.replicas.find)
            wanted = set()
            for desired in await self._call(self.store.replicas.list_desired):
                name, version = desired["model_name"], str(desired["model_version"])
                mine = [r for r in records if r.model_name == name and r.model_version == version]
                wanted.update(r.replica_id for r in mine)
                model = await self._call(self.store.get_model, name, version)
                if model is None and time.time() - float(desired.get("pending_since") or 0) < self.pending_s:
                    continue  # scaled before add_model (Clipper's container managers): wait for it
                if model is not None and "pending_since" in desired:  # registered now: the model's defaults
                    desired = {"num_replicas": desired["num_replicas"], "model_cpus": desired["model_cpus"],
                               "cpus_per_replica": desired["cpus_per_replica"] or model.cpus_per_replica,
                               "gpus": list(model.gpus if desired["gpus"] is None else desired["gpus"])}
                    await self._call(self.store.replicas.set_desired, name, version, desired)
                if model is None:
                    await self._stop_many(mine)
                    await self._call(self.store.replicas.delete_desired, name, version)
                    continue
                await self._reconcile_model(model, desired, mine, running, view)
            for record in records:  # replicas of model versions nobody wants any more
                if record.replica_id not in wanted:
                    await self._stop_many([record])
            known = {r.replica_id for r in records}
            for rid in set(running) - known:  # started by us, record gone (deleted by hand)
                await self._stop_one(rid)

    async def shutdown(self) -> None:
        """Stop (drain) every replica this manager started; keep desired state for the next start."""
        async with self._lock:
            running = await asyncio.to_thread(self.backend.list)
            await asyncio.gather(*(self._stop_one(r.replica_id, keep_record=True) for r in running))
            for record in await self._call(self.store.replicas.find):
                if record.replica_id in {r.replica_id for r in running}:
                    record.state = ReplicaState.STOPPED.value
                    await self._call(self.store.replicas.put, record)
        await self.close()

    async def close(self) -> None:
        """Release the manager's HTTP session; replicas keep running (see :meth:`shutdown`)."""
        await self._view.close()

    async def frontend_view(self) -> dict[str, dict]:
        """replica_id -> the frontend's row from GET /replicas; empty when it cannot be reached."""
        return await self._view.rows()

    # -- planning ----------------------------------------------------------------------------

    def _model(self, name: str, version: str | None) -> ModelSpec:
        if not isinstance(name, str) or not name:
            raise BadRequest("model_name must be a non-empty string")
        model = self.store.get_model(name, None if version is None else str(version))
        if model is None:
            what = f"model {name!r}" + ("" if version is None else f" version {version!r}")
            raise NotFound(f"{what} does not exist")
        return model

    def _plan(self, model: ModelSpec, desired: dict) -> tuple[list[ReplicaRecord], list[ReplicaRecord], list[Placement]]:
        """(records to keep, records to stop, placements to start) for ``desired``."""
        owner = launch.owner(model.name, model.version)
        records = sorted(self.store.replicas.find(model.name, model.version), key=_seq)
        explicit = bool(desired["model_cpus"])
        pool = desired["model_cpus"] if explicit else self.default_pool()
        n, per, gpus = desired["num_replicas"], desired["cpus_per_replica"], desired["gpus"]
        self.allocator.check(n if isinstance(n, int) and not isinstance(n, bool) else -1, per, pool, gpus)
        fits = all(len(r.cpus) == per and set(r.cpus) <= set(pool)
                   and (r.gpu is None or r.gpu in gpus) for r in records)
        keep = records[:n] if fits else []
        stop = [r for r in records if r not in keep]
        # Cores of replicas being stopped are free for the new ones.
        for r in stop:
            self.allocator.release(r.replica_id)
        try:
            new = self.allocator.allocate(n - len(keep), per, pool, gpus, owner=owner,
                                          keep=[Placement(list(r.cpus), r.gpu) for r in keep],
                                          share=not explicit, avoid=self.frontend_cpus)
        except AllocationError:
            for r in stop:  # nothing changes: give the cores back
                self.allocator.claim(r.replica_id, owner, Placement(list(r.cpus), r.gpu))
            raise
        return keep, stop, new

    async def _apply(self, model: ModelSpec, desired: dict,
                     plan: tuple[list[ReplicaRecord], list[ReplicaRecord], list[Placement]]) -> None:
        keep, stop, new = plan
        await self._stop_many(stop)
        seq = max([r.seq for r in keep + stop] + [0])
        for i, placement in enumerate(new, start=1):
            await self._start_new(model, placement, seq + i)

    async def _reconcile_model(self, model: ModelSpec, desired: dict, records: list[ReplicaRecord],
                               running: dict, view: dict[str, dict]) -> None:
        now = time.monotonic()
        failed = desired.get("failed") or ""
        for record in records:
            rid = record.replica_id
            proc = running.get(rid)
            row = view.get(rid)
            if proc is not None and proc.alive and self._hung(record, row, now):
                # Its process runs but the frontend declared it dead (no heartbeat: stopped, wedged):
                # kill it, so the restart below replaces it on the same cores.
                log.warning("replica %s runs but the frontend has seen it dead for %.1f s; replacing it", rid,
                            now - self._dead_since.pop(rid))
                await asyncio.to_thread(self.backend.stop, rid, 1.0)
                proc = None
            if proc is not None and proc.alive:
                if row and row.get("state") in SERVING and rid in self._health:
                    self._health[rid].served = True
                await self._refresh(record, row, proc)
                continue
            health = self._health.setdefault(rid, Health(started_at=now))
            if health.next_restart_at == 0.0 and not failed:  # first time we see it dead
                health.died(now, self.restart_backoff_s)
                record.state = ReplicaState.DEAD.value
                reason = await asyncio.to_thread(self._death_reason, rid)
                if reason:
                    record.extra["error"] = reason
                await self._call(self.store.replicas.put, record)
                log.warning("replica %s died (failure %d)%s; restarting in %.1fs on cpus %s", rid,
                            health.failures, f": {reason}" if reason else "", health.next_restart_at - now,
                            record.cpus)
                if not health.served and health.failures >= self.failed_after_starts:
                    failed = reason or f"its replicas exited {health.failures} times before serving"
                    await self._mark_failed(model, desired, failed)
            if failed:
                if record.state != ReplicaState.FAILED.value:
                    record.state = ReplicaState.FAILED.value
                    record.extra.setdefault("error", failed)
                    await self._call(self.store.replicas.put, record)
                continue
            if now >= health.next_restart_at:
                await self._restart(model, record)
        if failed:
            return  # no new replicas for a model that does not load; set_num_replicas again retries
        n = desired["num_replicas"]
        if len(records) > n:
            await self._stop_many(sorted(records, key=_seq)[n:])
        elif len(records) < n:
            try:
                plan = self._plan(model, desired)
            except AllocationError as err:
                log.error("cannot start missing replicas of %s:%s: %s", model.name, model.version, err)
                return
            await self._apply(model, desired, plan)

    def _death_reason(self, replica_id: str) -> str:
        """What the replica's last start said before it exited (its load error), "" if nothing."""
        try:
            return launch.load_error(self.backend.logs(replica_id, 60))
        except (BackendError, OSError, ValueError):
            return ""

    async def _mark_failed(self, model: ModelSpec, desired: dict, reason: str) -> None:
        log.error("model %s:%s marked failed: %s", model.name, model.version, reason)
        marked = {k: v for k, v in desired.items() if k not in ("model_name", "model_version")}
        marked["failed"] = reason
        await self._call(self.store.replicas.set_desired, model.name, model.version, marked)

    # -- acting ------------------------------------------------------------------------------

    async def _start_new(self, model: ModelSpec, placement: Placement, number: int) -> ReplicaRecord:
        record = launch.new_record(model, placement, number, self.backend.name, self.host)
        self.allocator.claim(record.replica_id, launch.owner(model.name, model.version), placement)
        return await self._launch(model, record)

    async def _restart(self, model: ModelSpec, record: ReplicaRecord) -> None:
        rid = record.replica_id
        await asyncio.to_thread(self.backend.stop, rid, 0.0)  # reap the dead one's bookkeeping
        record.restarts += 1
        self.allocator.claim(rid, launch.owner(model.name, model.version),
                             Placement(list(record.cpus), record.gpu))
        try:
            await self._launch(model, record)
        except BackendError as err:
            log.error("restart of replica %s failed: %s", rid, err)

    async def _launch(self, model: ModelSpec, record: ReplicaRecord) -> ReplicaRecord:
        rid = record.replica_id
        spec = launch.launch_spec(model, rid, Placement(list(record.cpus), record.gpu),
                                  await asyncio.to_thread(self._frontend_addresses), self.replica_env,
                                  self.owns_cores(record.cpus, launch.owner(model.name, model.version)))
        if self.keys is not None:
            # A fresh key each start; the record (put next) registers it with the frontends
            # before the process exists, and replaces the previous start's key.
            pair, key_file = await asyncio.to_thread(self.keys.issue, rid)
            record.curve_public_key = pair.public
            spec.curve_key_file = str(key_file)
            spec.env[curve.ENV_SERVER_KEY] = self.keys.server_key
        record.state = ReplicaState.STARTING.value
        await self._call(self.store.replicas.put, record)  # first, so a crash here leaves a trace
        try:
            running = await asyncio.to_thread(self.backend.start, spec)
        except Exception as err:
            record.state = ReplicaState.DEAD.value
            await self._call(self.store.replicas.put, record)
            failures = self._health[rid].failures if rid in self._health else 0
            self._health[rid] = Health(started_at=time.monotonic(), failures=max(1, failures))
            raise err if isinstance(err, BackendError) else BackendError(f"{rid}: {err}") from err
        record.handle = running.handle
        record.pid = int(running.handle) if running.backend == Backend.PROCESS.value else None
        record.container_id = running.handle if running.backend == Backend.DOCKER.value else None
        record.node = running.node  # Ray: "" until the actor is placed; _refresh fills it in
        for key in _PLACEMENT_KEYS:
            record.extra.pop(key, None)
        await self._call(self.store.replicas.put, record)
        failures = self._health[rid].failures if rid in self._health else 0
        self._health[rid] = Health(started_at=time.monotonic(), failures=failures)
        return record

    def _announced_http(self) -> list[str]:
        """HTTP URLs of the frontends announced in Redis (the view's fallback)."""
        client = getattr(self.store, "client", None)
        return [] if client is None else FrontendDirectory(client).addresses("http")

    def _frontend_addresses(self) -> str:
        """The replica addresses a new replica starts from: the configured frontend's and every one
        announced in Redis (a replica learns later ones from the frontends themselves)."""
        addresses = [self.frontend_rpc]
        client = getattr(self.store, "client", None)
        if client is not None:
            try:
                addresses += FrontendDirectory(client).addresses("replica")
            except (StoreUnavailable, TypeError):
                pass
        return ",".join(dict.fromkeys(addresses))

    def _hung(self, record: ReplicaRecord, row: dict | None, now: float) -> bool:
        """Whether the frontend has shown this start of the replica dead for longer than the grace period."""
        rid = record.replica_id
        health = self._health.get(rid)
        # A dead row of an earlier start (another pid; or, where pids are not comparable, one seen
        # before this start could have registered) is not about the process running now.
        stale = (row is not None and record.pid and row.get("pid") and row.get("pid") != record.pid) or (
            not record.pid and health is not None and now - health.started_at < _FIRST_HELLO_S)
        if not row or row.get("state") != ReplicaState.DEAD.value or stale:
            self._dead_since.pop(rid, None)
            return False
        since = self._dead_since.setdefault(rid, now)
        return now - since >= self.dead_grace_s

    async def _refresh(self, record: ReplicaRecord, row: dict | None, proc: Any = None) -> None:
        """Copy the frontend's state and heartbeat, and where the backend says it runs, when they changed."""
        state = str(row.get("state") or ReplicaState.STARTING.value) if row else ReplicaState.STARTING.value
        changed = state != record.state
        if proc is not None and proc.node:
            was, now = record.extra.get("node_id"), proc.details.get("node_id")
            if was and now and was != now:
                log.warning("replica %s moved from node %s to node %s", record.replica_id, was, now)
            placed = {k: v for k, v in proc.details.items() if k in _PLACEMENT_KEYS}
            pid = proc.details.get("pid")
            if (proc.node != record.node or pid != record.pid
                    or any(record.extra.get(k) != v for k, v in placed.items())):
                record.node, record.pid = proc.node, pid
                record.extra.update(placed)
                changed = True
        if row and row.get("last_heartbeat_s"):
            beat = wall_time(float(row["last_heartbeat_s"]))
            changed = changed or abs(beat - float(record.last_heartbeat or 0)) >= 5.0
            record.last_heartbeat = beat
        if changed:
            record.state = state
            await self._call(self.store.replicas.put, record)

    async def _stop_many(self, records: list[ReplicaRecord]) -> None:
        await asyncio.gather(*(self._stop_record(r) for r in records))

    async def _stop_record(self, record: ReplicaRecord) -> None:
        rid = record.replica_id
        record.state = ReplicaState.DRAINING.value
        await self._call(self.store.replicas.put, record)
        await self._stop_one(rid)
        await self._call(self.store.replicas.delete, record.model_name, record.model_version, rid)
        if self.keys is not None:
            self.keys.revoke(rid)

    async def _stop_one(self, replica_id: str, keep_record: bool = False) -> None:
        try:
            await asyncio.to_thread(self.backend.stop, replica_id, self.stop_timeout_s)
        except BackendError as err:
            log.error("stopping replica %s failed: %s", replica_id, err)
        if not keep_record:
            self.allocator.release(replica_id)
            self._health.pop(replica_id, None)

    async def _adopt_once(self) -> None:
        """On the first call: claim the cores of replicas recorded by an earlier manager.

        Their processes are not ours (a previous management service started them):
        stray local ones still running are stopped, so the reconcile pass restarts
        each replica under this manager on its recorded cores.
        """
        if self._adopted:
            return
        self._adopted = True
        ours = {r.replica_id for r in await asyncio.to_thread(self.backend.list)}
        for record in await self._call(self.store.replicas.find):
            rid = record.replica_id
            self.allocator.claim(rid, launch.owner(record.model_name, record.model_version),
                                 Placement(list(record.cpus), record.gpu))
            if rid not in ours and record.backend == "process" and record.host == self.host:
                await asyncio.to_thread(terminate_stray, record.pid, rid, self.stop_timeout_s)
            self._health.setdefault(rid, Health(started_at=time.monotonic()))

    async def _call(self, fn: Any, *args: Any) -> Any:
        """A blocking store call, off the event loop."""
        return await asyncio.to_thread(fn, *args)



def _seq(record: ReplicaRecord) -> int:
    return record.seq
