"""Shapes shared by every part of Schooner: input types, apps, models, replicas.

These dataclasses are the contract between the frontend, the replica runtime,
the management service and the driver. They serialise to plain dicts (JSON,
msgpack, Redis hashes) with :func:`dataclasses.asdict`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from schooner import defaults

if TYPE_CHECKING:
    import numpy as np


class InputType(str, enum.Enum):
    """Clipper's input types; the value is the name used on the wire and in Redis."""

    BYTES = "bytes"
    INTS = "ints"
    FLOATS = "floats"
    DOUBLES = "doubles"
    STRINGS = "strings"

    @property
    def dtype(self) -> np.dtype | None:
        """The numpy dtype of a numeric input type, None for bytes and strings."""
        if not _DTYPES:
            _load_dtypes()
        return _DTYPES.get(self)

    @classmethod
    def parse(cls, value: str | InputType) -> InputType:
        """Parse a name; raise ValueError naming the accepted names."""
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(t.value for t in cls)
            raise ValueError(f"input_type must be one of {names}, got {value!r}") from None


_DTYPES: dict[InputType, np.dtype] = {}


def _load_dtypes() -> None:
    # numpy on first use: the management service and `schooner up` never need it (~10 MiB each).
    import numpy as np

    _DTYPES.update({InputType.INTS: np.dtype("<i4"), InputType.FLOATS: np.dtype("<f4"),
                    InputType.DOUBLES: np.dtype("<f8")})


class BatchSize(int):
    """The batch-size rule of a model version: a fixed size (>= 1), or :attr:`ADAPTIVE`.

    An ``int`` so that it goes into JSON, msgpack and Redis unchanged; adaptive
    is stored and sent as ``-1`` (Clipper's convention, kept on the REST API),
    and ``"adaptive"`` is accepted wherever a batch size is parsed.
    """

    ADAPTIVE: ClassVar[BatchSize]

    @property
    def adaptive(self) -> bool:
        """Whether the frontend chooses the size (bounded by the model's max_batch_size)."""
        return int(self) == _ADAPTIVE_WIRE

    @classmethod
    def parse(cls, value: Any, field: str = "batch_size") -> BatchSize:
        """A BatchSize from a positive int, ``-1`` or ``"adaptive"``; ValueError names ``field``."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str) and value.strip().lower() == "adaptive":
            return cls.ADAPTIVE
        if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != _ADAPTIVE_WIRE):
            raise ValueError(f"{field} must be a positive integer, or -1 / \"adaptive\" for adaptive batching, "
                             f"got {value!r}")
        return cls.ADAPTIVE if value == _ADAPTIVE_WIRE else cls(value)


_ADAPTIVE_WIRE = -1
BatchSize.ADAPTIVE = BatchSize(_ADAPTIVE_WIRE)


class Backend(str, enum.Enum):
    """Where the manager runs replicas; the value is the name in flags, config and Redis."""

    PROCESS = "process"  # local processes (the default)
    DOCKER = "docker"  # containers on a Docker engine
    RAY = "ray"  # processes owned by Ray actors, on the nodes of a Ray cluster


BACKENDS = tuple(b.value for b in Backend)


class ReplicaState(str, enum.Enum):
    """Life of a replica, as the frontend and the manager see it."""

    STARTING = "starting"  # process launched, not yet registered with the frontend
    READY = "ready"  # registered, idle, may take a batch
    BUSY = "busy"  # one batch in flight
    DRAINING = "draining"  # asked to stop: finishes its batch, takes no new one
    DEAD = "dead"  # missed heartbeats or its process is gone
    STOPPED = "stopped"  # stopped on purpose
    FAILED = "failed"  # its model did not load, start after start: the manager stopped restarting it

    @property
    def live(self) -> bool:
        """Whether a replica in this state is registered and serving (ready, busy or draining)."""
        return self in LIVE_REPLICA_STATES


# The one definition of "live": registered with a frontend and not gone. STARTING is not live
# (not registered yet); DRAINING is (it still finishes the batch it holds).
LIVE_REPLICA_STATES = frozenset({ReplicaState.READY, ReplicaState.BUSY, ReplicaState.DRAINING})
# Live and taking batches: what "the replica is up" means to the manager and the tests.
SERVING_REPLICA_STATES = frozenset({ReplicaState.READY, ReplicaState.BUSY})


ON_OVERLOAD_CHOICES = ("reject", "default")


@dataclass
class AppSpec:
    """An application: the name clients query, bound to one model."""

    name: str
    input_type: InputType
    default_output: str = defaults.DEFAULT_OUTPUT
    latency_slo_micros: int = defaults.LATENCY_SLO_MICROS
    policy: str = "default"
    # A query that cannot finish within the objective given the queue is answered at once:
    # "reject" = error overloaded (HTTP 429 + Retry-After), "default" = the default output.
    on_overload: str = defaults.ON_OVERLOAD

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("name must be a non-empty string")
        self.input_type = InputType.parse(self.input_type)
        if not isinstance(self.latency_slo_micros, int) or self.latency_slo_micros <= 0:
            raise ValueError("latency_slo_micros must be a positive integer")
        if self.on_overload not in ON_OVERLOAD_CHOICES:
            raise ValueError(f"on_overload must be one of {', '.join(ON_OVERLOAD_CHOICES)}, "
                             f"got {self.on_overload!r}")


@dataclass
class ModelSpec:
    """A model version and how the frontend batches for it.

    ``batch_size`` is a :class:`BatchSize`: a fixed size, or adaptive batching
    (``-1`` on the wire; the cap with the most answers within the objective)
    bounded by ``max_batch_size``. ``input_shape`` (optional) is the shape every
    input must have; the frontend rejects others with BadInput.
    """

    name: str
    version: str
    input_type: InputType
    labels: list[str] = field(default_factory=list)
    batch_size: int = defaults.BATCH_SIZE  # a BatchSize after __post_init__
    max_batch_size: int = defaults.MAX_BATCH_SIZE
    batch_wait_timeout_micros: int = defaults.BATCH_WAIT_TIMEOUT_MICROS
    input_shape: list[int] | None = None
    max_queue_size: int = defaults.MAX_QUEUE_SIZE
    # Prediction cache (per version): identical inputs answered from an LRU of this many bytes.
    cache_enabled: bool = False
    cache_size_bytes: int = defaults.CACHE_SIZE_BYTES
    # Launch settings, used by the manager, ignored by the frontend.
    launcher: str = ""  # zoo model the replicas run (containers.models name); "" = same as name
    model_opts: dict = field(default_factory=dict)  # options for the zoo model (e.g. sleep's a_ms, b_ms)
    image: str = ""
    model_data_path: str = ""
    cpus_per_replica: int = 1
    gpus: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("name must be a non-empty string")
        self.version = str(self.version)
        self.input_type = InputType.parse(self.input_type)
        self.batch_size = BatchSize.parse(self.batch_size)
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise ValueError("max_batch_size must be a positive integer")
        if self.batch_wait_timeout_micros < 0:
            raise ValueError("batch_wait_timeout_micros must be >= 0")
        if self.max_queue_size < 1:
            raise ValueError("max_queue_size must be a positive integer")
        if not isinstance(self.cache_enabled, bool):
            raise ValueError(f"cache_enabled must be true or false, got {self.cache_enabled!r}")
        if isinstance(self.cache_size_bytes, bool) or not isinstance(self.cache_size_bytes, int) \
                or self.cache_size_bytes < 0:
            raise ValueError(f"cache_size_bytes must be an integer >= 0, got {self.cache_size_bytes!r}")

    @property
    def key(self) -> tuple[str, str]:
        """(name, version), the identity of a model version."""
        return (self.name, self.version)


@dataclass
class ReplicaInfo:
    """What a replica says about itself when it registers, plus the frontend's view."""

    replica_id: str
    model_name: str
    model_version: str
    input_type: InputType
    pid: int
    cpus: list[int] = field(default_factory=list)
    gpu: int | None = None
    input_shape: list[int] | None = None
    host: str = ""
    state: ReplicaState = ReplicaState.READY
    last_heartbeat_s: float = 0.0  # time.monotonic() on the frontend
    batches_done: int = 0


@dataclass
class DeploymentState:
    """Everything the frontend serves from: what the management service keeps in Redis.

    ``links`` maps an app to its linked model names (Clipper allows one);
    ``current_versions`` maps a model name to the version queries go to.
    """

    apps: dict[str, AppSpec] = field(default_factory=dict)
    models: dict[tuple[str, str], ModelSpec] = field(default_factory=dict)
    links: dict[str, list[str]] = field(default_factory=dict)
    current_versions: dict[str, str] = field(default_factory=dict)
