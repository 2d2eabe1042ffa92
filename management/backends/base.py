"""The interface every replica backend (local processes, Docker, ...) implements."""

from __future__ import annotations

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


@dataclass
class RunningReplica:
    """A replica a backend has started and still knows about."""

    replica_id: str
    backend: str  # "process" | "docker"
    handle: str  # pid or container id
    cpus: list[int]
    gpu: int | None
    alive: bool


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
