"""How the manager names, records, launches and backs off restarting one replica."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from schooner import defaults
from schooner.types import ModelSpec, ReplicaState
from management.allocator import Placement
from management.backends.base import LaunchSpec
from management.store import ReplicaRecord

HEALTHY_RUN_S = defaults.REPLICA_HEALTHY_RUN_S


@dataclass
class Health:
    """In-memory restart bookkeeping of one replica (not worth a Redis write)."""

    started_at: float
    failures: int = 0
    next_restart_at: float = 0.0
    served: bool = False  # this start reached ready (a death after that is not a load failure)

    def died(self, now: float, backoff_s: tuple[float, float]) -> None:
        """Count a death seen at ``now`` and schedule the restart: min * 2**(failures-1), capped at max."""
        self.failures = 1 if now - self.started_at >= HEALTHY_RUN_S else self.failures + 1
        lo, hi = backoff_s
        self.next_restart_at = now + min(hi, lo * 2 ** (self.failures - 1))


def load_error(log_tail: str) -> str:
    """The reason a replica's last start gave for not loading its model ("" if it gave none)."""
    from containers.errors import LOAD_ERROR_MARKER  # noqa: PLC0415 - numpy-only, but only needed here

    last_start = log_tail.rfind("--- start:")
    reason = ""
    for line in log_tail[max(last_start, 0):].splitlines():
        at = line.find(LOAD_ERROR_MARKER)
        if at >= 0:
            try:
                reason = str(json.loads(line[at + len(LOAD_ERROR_MARKER):])["error"])
            except (ValueError, KeyError, TypeError):
                reason = line[at + len(LOAD_ERROR_MARKER):].strip()
    return reason


def owner(name: str, version: str) -> str:
    """The allocator owner of a model version's replicas."""
    return f"{name}:{version}"


def new_record(model: ModelSpec, placement: Placement, number: int, backend: str, host: str) -> ReplicaRecord:
    """The Redis record of a replica about to start for the first time."""
    rid = f"{model.name}-{model.version}-r{number}-{uuid.uuid4().hex[:4]}"
    return ReplicaRecord(replica_id=rid, model_name=model.name, model_version=model.version, backend=backend,
                         host=host, cpus=list(placement.cpus), gpu=placement.gpu,
                         state=ReplicaState.STARTING.value, seq=number, created_s=time.time())


def launch_spec(model: ModelSpec, replica_id: str, placement: Placement, frontend_rpc: str,
                replica_env: dict[str, str], owns_cores: bool | None = None) -> LaunchSpec:
    """What a backend needs to start ``replica_id`` of ``model`` on ``placement``.

    ``owns_cores``: whether no other process is placed on the placement's cores (the
    replica busy-polls only then; None = unknown, it spins adaptively).
    """
    env = dict(replica_env)
    if owns_cores is not None and "SCHOONER_OWNS_CORES" not in env:
        env["SCHOONER_OWNS_CORES"] = "yes" if owns_cores else "no"
    # Also as env: a backend that passes only env (Docker) still gets them.
    env["SCHOONER_INPUT_TYPE"] = model.input_type.value
    if model.model_opts:
        env["SCHOONER_MODEL_OPTS"] = json.dumps(model.model_opts)
    return LaunchSpec(replica_id=replica_id, model_name=model.name, model_version=model.version,
                      model=model.launcher or model.name, frontend_address=frontend_rpc,
                      cpus=list(placement.cpus), gpu=placement.gpu, model_data_path=model.model_data_path,
                      image=model.image, env=env, model_opts=dict(model.model_opts),
                      input_type=model.input_type.value)
