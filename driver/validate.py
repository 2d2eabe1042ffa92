"""Check a requested sweep against this machine and turn it into a plan, before anything starts."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from driver.errors import ImpossibleSweep
from schooner import topology
from schooner.types import BACKENDS, BatchSize
from driver.load import Arrival, LoadLevel

log = logging.getLogger(__name__)

MODES = ("sweep", "latency", "throughput", "load", "repeated_scale_calls", "concurrent_inference")
MAX_BATCH_SIZE_LIMIT = 4096  # larger fixed batch sizes are refused as a typo


@dataclass(frozen=True)
class ModelInput:
    """What one query of a zoo model looks like: input type, flat width, default model options."""

    input_type: str
    width: int
    default_opts: dict = field(default_factory=dict)


# Zoo model -> one input (flat float vector). Images travel flattened (H*W*C).
MODEL_INPUTS: dict[str, ModelInput] = {
    "noop": ModelInput("floats", 8),
    "sleep": ModelInput("floats", 8, {"a_ms": 5.0, "b_ms": 1.0}),
    "vgg": ModelInput("floats", 224 * 224 * 3),
    "inception": ModelInput("floats", 299 * 299 * 3),
    "resnet18": ModelInput("floats", 224 * 224 * 3),
    "lgbm": ModelInput("floats", 2048),
    "kpca-svm": ModelInput("floats", 4096),
    "kernel-svm": ModelInput("floats", 4096),
    "elastic-net": ModelInput("floats", 4096),
}


@dataclass(frozen=True)
class Machine:
    """The cores and GPUs the driver may use, and where the driver itself runs."""

    usable_cpus: tuple[int, ...]  # cores processes may be pinned to (online, in our cpuset)
    driver_cpus: tuple[int, ...]  # the driver's own affinity (numactl -C puts it here)
    gpus: tuple[int, ...] = ()  # GPU ids replicas may be given (schooner.topology.detect_gpus)

    @classmethod
    def detect(cls) -> Machine:
        """The machine this process runs on."""
        return cls(tuple(topology.online_cpus()), tuple(topology.allowed_cpus()), tuple(topology.detect_gpus()))

    @property
    def gpu_count(self) -> int:
        """How many GPUs replicas may be given."""
        return len(self.gpus)

    def reserved_cpus(self) -> list[int]:
        """Cores for the driver and the frontend: the driver's affinity, or the first core if unpinned."""
        if set(self.driver_cpus) != set(self.usable_cpus):
            return sorted(self.driver_cpus)
        return [min(self.usable_cpus)]

    def default_model_cpus(self) -> list[int]:
        """Every usable core except those the driver and frontend run on (all of them on a 1-core box)."""
        rest = sorted(set(self.usable_cpus) - set(self.reserved_cpus()))
        return rest or sorted(self.usable_cpus)


@dataclass
class SweepSpec:
    """A validated sweep: every value the sweep runner and the modes need."""

    model: str
    duration_s: float
    batch_sizes: list[int]
    num_replicas: list[int]
    model_cpus: list[int]
    cpus_per_replica: list[int]
    model_gpus: list[int]
    slo_ms: float
    load_levels: list[LoadLevel | None]  # None: concurrency chosen per configuration
    warmup_s: float
    window_s: float
    out_dir: str
    frontend: str  # "" = start our own Stack
    management: str
    backend: str
    mode: str
    target_qps: float | None
    seed: int
    model_opts: dict
    frontend_cpus: list[int]
    count: int = 3  # models deployed at once in mode "load"
    repeat: int = 3  # scale-up/down rounds in mode "repeated_scale_calls"

    @property
    def model_input(self) -> ModelInput:
        """Input type and width of the model."""
        return MODEL_INPUTS[self.model]


def _positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ImpossibleSweep(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _address(name: str, value: str) -> str:
    if not value:
        return ""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ImpossibleSweep(f"{name} must be HOST:PORT, got {value!r}")
    return value


def build_spec(args, machine: Machine) -> SweepSpec:
    """Validate parsed CLI arguments against ``machine``; raise ImpossibleSweep with one clear message."""
    if args.model_name not in MODEL_INPUTS:
        raise ImpossibleSweep(f"unknown model {args.model_name!r}; choose one of {', '.join(MODEL_INPUTS)}")
    if args.mode not in MODES:
        raise ImpossibleSweep(f"unknown mode {args.mode!r}; choose one of {', '.join(MODES)}")
    if args.backend not in BACKENDS:
        raise ImpossibleSweep(f"unknown backend {args.backend!r}; choose one of {', '.join(BACKENDS)}")
    for name in ("duration_seconds", "window_s", "slo_ms"):
        _positive(name, getattr(args, name))
    _positive("warmup_s", args.warmup_s, allow_zero=True)
    _positive("target_qps", args.target_qps)
    for b in args.batch_sizes:
        try:
            size = BatchSize.parse(b)
        except ValueError:
            size = None
        if size is None or size > MAX_BATCH_SIZE_LIMIT:
            raise ImpossibleSweep(
                f"bad batch size {b}: use a positive size up to {MAX_BATCH_SIZE_LIMIT}, or -1 for adaptive")
    for r in args.num_replicas:
        if r < 1:
            raise ImpossibleSweep(f"bad replica count {r}: must be >= 1")
    for p in args.cpus_per_replica_nums:
        if p < 1:
            raise ImpossibleSweep(f"bad cpus per replica {p}: must be >= 1")
    # The driver's and frontend's cores go last: a replica is placed there only when the others are taken.
    reserved = set(machine.reserved_cpus())
    model_cpus = (sorted(set(args.model_cpus), key=lambda c: (c in reserved, c)) if args.model_cpus
                  else machine.default_model_cpus())
    missing = [c for c in model_cpus if c not in machine.usable_cpus]
    if missing:
        raise ImpossibleSweep(
            f"core(s) {missing} do not exist or are not usable here; usable cores: {list(machine.usable_cpus)}")
    widest = max(args.num_replicas) * max(args.cpus_per_replica_nums)
    if widest > len(model_cpus):
        raise ImpossibleSweep(
            f"{max(args.num_replicas)} replicas x {max(args.cpus_per_replica_nums)} cpus per replica needs "
            f"{widest} cores but model_cpus {model_cpus} has only {len(model_cpus)}")
    if args.mode == "load" and args.count * widest > len(model_cpus):
        raise ImpossibleSweep(
            f"mode load deploys {args.count} models x {widest} cores but model_cpus {model_cpus} "
            f"has only {len(model_cpus)}")
    gpus = sorted(set(args.model_gpus or []))
    bad_gpus = [g for g in gpus if g not in machine.gpus]
    if bad_gpus:
        have = f"GPU ids {list(machine.gpus)}" if machine.gpus else "no GPU"
        raise ImpossibleSweep(f"GPU(s) {bad_gpus} are not there; this machine has {have}")
    frontend = _address("--frontend", args.frontend or "")
    management = _address("--management", args.management or "")
    if bool(frontend) != bool(management):
        raise ImpossibleSweep("--frontend and --management go together (both name the running deployment)")
    if args.concurrency and args.rate:
        raise ImpossibleSweep("give --concurrency (closed loop) or --rate (open loop), not both")
    for c in args.concurrency or []:
        if c < 1:
            raise ImpossibleSweep(f"bad concurrency {c}: must be >= 1")
    for q in args.rate or []:
        if q <= 0:
            raise ImpossibleSweep(f"bad rate {q}: must be > 0 queries per second")
    arrival = Arrival(args.arrival)
    levels: list[LoadLevel | None]
    if args.rate:
        levels = [LoadLevel.open(q, arrival) for q in args.rate]
    elif args.concurrency:
        levels = [LoadLevel.closed(c) for c in args.concurrency]
    else:
        levels = [None]
    if args.count < 1 or args.repeat < 1:
        raise ImpossibleSweep("--count and --repeat must be >= 1")
    overlap = sorted(set(model_cpus) & set(machine.reserved_cpus()))
    if overlap and not frontend:
        log.warning("model cores %s overlap the driver/frontend cores %s; measurements will be noisy",
                    overlap, machine.reserved_cpus())
    opts = dict(MODEL_INPUTS[args.model_name].default_opts)
    opts.update(args.model_opts or {})
    return SweepSpec(
        model=args.model_name, duration_s=args.duration_seconds, batch_sizes=list(args.batch_sizes),
        num_replicas=list(args.num_replicas), model_cpus=model_cpus,
        cpus_per_replica=list(args.cpus_per_replica_nums), model_gpus=gpus, slo_ms=args.slo_ms,
        load_levels=levels, warmup_s=args.warmup_s, window_s=args.window_s, out_dir=args.out,
        frontend=frontend, management=management, backend=args.backend, mode=args.mode,
        target_qps=args.target_qps, seed=args.seed, model_opts=opts,
        frontend_cpus=machine.reserved_cpus(), count=args.count, repeat=args.repeat)
