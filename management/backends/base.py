"""The interface every replica backend (local processes, Docker, ...) implements."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class LaunchSpec:
    """Everything a backend needs to start one replica of a model version."""

    replica_id: str
    model_name: str
    model_version: str
    model: str  # zoo model to run (containers.models registry name), e.g. "noop", "vgg"
    frontend_address: str  # e.g. tcp://127.0.0.1:7000
    cpus: list[int]
    gpu: int | None = None
    model_data_path: str = ""
    image: str = ""  # Docker image (Docker backend only)
    env: dict[str, str] = field(default_factory=dict)
    model_opts: dict = field(default_factory=dict)  # options for the zoo model (--model-opts JSON)
    input_type: str = ""  # the model version's input type (--input-type); "" = the zoo model's own
    curve_key_file: str = ""  # the replica's CURVE key pair (0600); backends pass it by env, never argv


def replica_args(spec: LaunchSpec, gpu: int | None) -> list[str]:
    """The ``-m containers.replica ...`` arguments that start ``spec`` (after the interpreter).

    ``gpu`` is the device index as the replica sees it (inside a container it is
    renumbered from 0), so it is passed apart from ``spec.gpu``.
    """
    args = ["-m", "containers.replica",
            "--model", spec.model,
            "--frontend", spec.frontend_address,
            "--cpus", ",".join(str(c) for c in spec.cpus),
            "--name", spec.model_name,
            "--version", spec.model_version,
            "--replica-id", spec.replica_id]
    if gpu is not None:
        args += ["--gpu", str(gpu)]
    if spec.model_data_path:
        args += ["--model-path", spec.model_data_path]
    if spec.model_opts:
        args += ["--model-opts", json.dumps(spec.model_opts)]
    if spec.input_type:
        args += ["--input-type", spec.input_type]
    return args


@dataclass
class RunningReplica:
    """A replica a backend has started and still knows about."""

    replica_id: str
    backend: str  # "process" | "docker" | "ray"
    handle: str  # pid, container id or Ray actor name
    cpus: list[int]
    gpu: int | None
    alive: bool
    node: str = ""  # the host it runs on, where the backend places replicas on many (Ray: node address)
    details: dict = field(default_factory=dict)  # where it runs, as the backend knows (Ray: node, pid, cores)


@runtime_checkable
class ReplicaBackend(Protocol):
    """Starts, stops and lists replica processes or containers."""

    name: str

    def start(self, spec: LaunchSpec) -> RunningReplica:
        """Start a replica pinned to ``spec.cpus`` (and ``spec.gpu``); return at once."""
        ...

    def stop(self, replica_id: str, timeout_s: float) -> None:
        """Ask the replica to drain (SIGTERM) and wait up to ``timeout_s``, then kill it."""
        ...

    def list(self) -> list[RunningReplica]:
        """Every replica this backend started that has not been stopped, alive or not."""
        ...

    def logs(self, replica_id: str, tail: int = 200) -> str:
        """The last ``tail`` lines the replica wrote."""
        ...
