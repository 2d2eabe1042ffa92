"""Replica backend on a Ray cluster: each replica is a process owned by a Ray actor, wherever Ray places it.

Ray does the scheduling and the recovery; Schooner writes no scheduler of its own:

- ``start`` creates a named actor (:class:`ReplicaHost`) with ``num_cpus`` = the
  replica's cores and ``num_gpus`` = 1 for a GPU replica, spread over the nodes
  (``scheduling_strategy="SPREAD"``), restarted by Ray without limit
  (``max_restarts=-1``). The actor claims cores on its node (below), starts
  ``python -m containers.replica`` pinned to them, and holds it.
- A node that dies takes its actors with it; Ray restarts each on a node that
  has room, where it claims cores and starts its replica again (same replica
  id: the frontends see it register again). Killing an actor's worker process
  does the same on the same node.
- A replica *process* that exits while its actor lives is reported dead by
  :meth:`RayBackend.list`; the manager restarts it (with its backoff), which
  replaces the actor.
- Actors belong to the management service's Ray job (not detached): stopping
  the service stops its replicas.

Cores on a node: Ray counts CPUs but does not pin. The actor picks its cores
from the cores its process may use (``sched_getaffinity``: the whole host, or a
Kubernetes pod's cpuset) by taking an exclusive ``flock`` on
``<tmp>/schooner-cpus/cpu<N>.lock`` for each, lowest free first. The locks are
per host (every Ray node on one host sees the same files), so two replicas on
a host never take the same core, and the kernel drops a lock when its holder
dies, so a crashed replica's cores are free at once. A host with fewer free
cores than asked (more Ray CPUs declared than it has) shares the rest, with a
warning.

Records: ``cpus`` in a replica's Redis record are slots of the cluster's CPU
count (what the allocator counts); ``node`` (its address), ``node_id``, ``pid`` and ``node_cpus`` say
where it runs and on which cores, refreshed when Ray moves it.
"""

from __future__ import annotations

import ctypes
import fcntl
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
import ray.exceptions

from schooner import curve
from management.backends.base import LaunchSpec, RunningReplica, replica_args
from management.errors import BackendError

log = logging.getLogger(__name__)

NAMESPACE = "schooner"
STATUS_TIMEOUT_S = 2.0  # list(): an actor that does not answer this fast is starting or restarting
CALL_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1


def _lock_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "schooner-cpus")


def claim_cpus(n: int, lock_dir: str | None = None,
               candidates: list[int] | None = None) -> tuple[list[int], list[int]]:
    """``n`` cores of this host for one replica, and the lock fds that hold them (close them to free).

    Lowest free cores first among ``candidates`` (default: this process's affinity);
    when fewer than ``n`` are free, the rest are shared, lowest first, with a warning.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    folder = lock_dir or _lock_dir()
    os.makedirs(folder, exist_ok=True)
    allowed = sorted(candidates if candidates is not None else os.sched_getaffinity(0))
    mine: list[int] = []
    fds: list[int] = []
    for cpu in allowed:
        if len(mine) == n:
            break
        fd = os.open(os.path.join(folder, f"cpu{cpu}.lock"), os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        mine.append(cpu)
        fds.append(fd)
    if len(mine) < n:
        shared = [c for c in allowed if c not in mine][:n - len(mine)]
        log.warning("only %d of %d cores free on this host; sharing cores %s with other replicas",
                    len(mine), n, shared)
        mine += shared
    return sorted(mine), fds


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM (drain) when the actor's process dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class ReplicaHost:
    """A Ray actor that claims cores on its node and runs one replica process pinned to them."""

    def __init__(self, spec: LaunchSpec, log_dir: str = "") -> None:
        self.spec = spec
        self.node_id = ray.get_runtime_context().get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        self.cpus, self._locks = claim_cpus(len(spec.cpus))
        gpus = ray.get_gpu_ids() if spec.gpu is not None else []
        folder = Path(log_dir or os.path.join(tempfile.gettempdir(), "schooner-ray-replicas"))
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / f"{spec.replica_id}.log"
        # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPUs; the replica sees its one GPU as device 0.
        cmd = [sys.executable] + replica_args(replace(spec, cpus=self.cpus), gpu=0 if gpus else None)
        cpu_list = ",".join(str(c) for c in self.cpus)
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", cpu_list] + cmd
        env = dict(os.environ)
        env.update(spec.env)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        if not gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""
        with open(self.log_path, "ab") as out:
            out.write(f"--- start on node {self.node_ip} ({self.node_id[:12]}): {' '.join(cmd)}\n".encode())
            out.flush()
            # Started from the actor's main thread (the one that runs __init__), which lives as long as the
            # actor: PDEATHSIG fires when the thread that forked exits.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, cwd=root, preexec_fn=_die_with_parent)
        self.started_s = time.time()
        self._lock = threading.Lock()

    def status(self) -> dict:
        """Whether the replica process runs, its pid, node and cores."""
        code = self.proc.poll()
        return {"alive": code is None, "exit_code": code, "pid": self.proc.pid, "node_id": self.node_id,
                "node_ip": self.node_ip, "node_cpus": list(self.cpus), "started_s": self.started_s,
                "actor_pid": os.getpid()}

    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM the replica (it drains), SIGKILL after ``timeout_s``; free its cores."""
        with self._lock:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=max(timeout_s, 0.0))
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            for fd in self._locks:
                os.close(fd)
            self._locks = []
            return self.proc.returncode

    def logs(self, tail: int) -> str:
        """The last ``tail`` lines of the replica's log on this node."""
        with open(self.log_path, "r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=max(int(tail), 0)))


class RayBackend:
    """Starts replicas as Ray actors on the cluster at ``address`` (``""``: start or join a local one)."""

    name = "ray"

    def __init__(self, address: str = "", namespace: str = NAMESPACE, env: dict[str, str] | None = None,
                 log_dir: str = "") -> None:
        self.address = address
        self.namespace = namespace
        self.env = dict(env or {})
        self.log_dir = log_dir
        try:
            if not ray.is_initialized():
                local = not (address or os.environ.get("RAY_ADDRESS"))
                ray.init(address=address or None, namespace=namespace, log_to_driver=False,
                         configure_logging=False, **({"include_dashboard": False} if local else {}))
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise BackendError(f"cannot join the Ray cluster at {address or 'auto'}: {err}") from err
        self._actor_class = ray.remote(ReplicaHost)
        self._actors: dict[str, Any] = {}
        self._specs: dict[str, LaunchSpec] = {}
        self._last: dict[str, dict] = {}
        # The status call still unanswered per replica: an actor Ray cannot place yet answers none, and
        # asking again every reconcile pass would pile calls up in its queue.
        self._asked: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- capacity ----------------------------------------------------------------------------

    def capacity(self) -> tuple[int, int]:
        """(CPUs, GPUs) the cluster has now, as Ray counts them."""
        resources = ray.cluster_resources()
        return int(resources.get("CPU", 0)), int(resources.get("GPU", 0))

    def nodes(self) -> list[dict]:
        """The cluster's nodes: id, address, alive, resources."""
        return [{"node": n["NodeID"], "node_ip": n.get("NodeManagerAddress"), "alive": n.get("Alive"),
                 "resources": n.get("Resources", {})} for n in ray.nodes()]

    # -- the ReplicaBackend protocol ---------------------------------------------------------

    def start(self, spec: LaunchSpec) -> RunningReplica:
        """Create the replica's actor; Ray places it (it registers with the frontends on its own)."""
        if not spec.cpus:
            raise BackendError(f"replica {spec.replica_id}: no cpus")
        with self._lock:
            if spec.replica_id in self._actors:
                raise BackendError(f"replica {spec.replica_id} is already running")
        secrets = {}
        if spec.curve_key_file:  # the actor may run on another host: the secret travels in its spec (env)
            try:
                secrets[curve.ENV_SECRET_KEY] = curve.read_key_file(spec.curve_key_file).secret
            except curve.CurveError as err:
                raise BackendError(f"replica {spec.replica_id}: {err}") from err
        spec = replace(spec, env={**self.env, **spec.env, **secrets}, curve_key_file="")
        try:
            actor = self._actor_class.options(
                name=spec.replica_id, namespace=self.namespace, num_cpus=len(spec.cpus),
                num_gpus=1 if spec.gpu is not None else 0, max_restarts=-1, max_task_retries=0,
                scheduling_strategy="SPREAD").remote(spec, self.log_dir)
        except (ValueError, ray.exceptions.RayError) as err:
            raise BackendError(f"could not create the actor of replica {spec.replica_id}: {err}") from err
        with self._lock:
            self._actors[spec.replica_id] = actor
            self._specs[spec.replica_id] = spec
            self._last.pop(spec.replica_id, None)
        log.info("created Ray actor for replica %s (%d cpus, %s gpu)", spec.replica_id, len(spec.cpus),
                 "1" if spec.gpu is not None else "no")
        return self._running(spec.replica_id, {})

    def stop(self, replica_id: str, timeout_s: float) -> None:
        """Drain the replica (SIGTERM, SIGKILL after ``timeout_s``), then end its actor for good."""
        with self._lock:
            actor = self._actors.pop(replica_id, None)
            self._specs.pop(replica_id, None)
            self._last.pop(replica_id, None)
            self._asked.pop(replica_id, None)
        if actor is None:
            return
        try:
            ray.get(actor.stop.remote(timeout_s), timeout=timeout_s + CALL_TIMEOUT_S)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as err:
            log.info("replica %s: actor gone or not answering (%s); killing it", replica_id, type(err).__name__)
        try:
            ray.kill(actor, no_restart=True)
        except (ValueError, ray.exceptions.RayError):
            pass
        log.info("stopped replica %s", replica_id)

    def list(self) -> list[RunningReplica]:
        """Every replica started and not stopped; ``alive`` is False once its process exited or its actor
        is gone for good. An actor Ray is still placing or restarting counts as alive (Ray brings it back)."""
        with self._lock:
            actors = dict(self._actors)
        refs = {}
        for rid, actor in actors.items():
            ref = self._asked.get(rid)  # an earlier pass's call, unanswered then (maybe answered now)
            if ref is None:
                try:
                    ref = actor.status.remote()
                except ray.exceptions.RayError:
                    ref = None
            refs[rid] = ref
        pending = [r for r in refs.values() if r is not None]
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=STATUS_TIMEOUT_S)
        out = []
        for rid, ref in refs.items():
            status = self._status(rid, ref)
            out.append(self._running(rid, status))
        return out

    def logs(self, replica_id: str, tail: int = 200) -> str:
        """The last ``tail`` lines the replica wrote, read on its node."""
        with self._lock:
            actor = self._actors.get(replica_id)
        if actor is None:
            raise BackendError(f"no logs for replica {replica_id}")
        try:
            return ray.get(actor.logs.remote(tail), timeout=CALL_TIMEOUT_S)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError, OSError) as err:
            raise BackendError(f"cannot read the logs of replica {replica_id}: {err}") from err

    # -- helpers -----------------------------------------------------------------------------

    def _status(self, rid: str, ref: Any) -> dict:
        if ref is None:
            return {"alive": False, "gone": True}
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:  # being placed or restarted: Ray owns it; ask again once this call is answered
            self._asked[rid] = ref
            return dict(self._last.get(rid, {}), alive=True, answering=False)
        self._asked.pop(rid, None)
        try:
            status = ray.get(ref)
        except ray.exceptions.ActorDiedError:
            return {"alive": False, "gone": True}
        except ray.exceptions.RayError:  # unavailable for now (its node is going away): Ray restarts it
            return dict(self._last.get(rid, {}), alive=True, answering=False)
        with self._lock:
            if rid in self._actors:
                self._last[rid] = status
        return status

    def _running(self, rid: str, status: dict) -> RunningReplica:
        spec = self._specs.get(rid)
        return RunningReplica(replica_id=rid, backend=self.name, handle=rid, cpus=list(spec.cpus) if spec else [],
                              gpu=spec.gpu if spec else None, alive=bool(status.get("alive", True)),
                              node=str(status.get("node_ip") or ""),
                              details={k: status[k] for k in ("node_id", "node_ip", "node_cpus", "pid", "actor_pid")
                                       if k in status})
