"""The replica pool: registration, liveness, and the batches each replica has in flight.

:class:`ReplicaPool` is the only code that changes a replica's state; the
message handlers (:mod:`frontend.replica_events`) and the dispatcher call it.
Replicas that are dead or stopped stay listed for ``forget_after_s`` (so an
operator sees what happened), then :meth:`ReplicaPool.prune` forgets them.
"""

from __future__ import annotations

import collections
import logging
import math
import os
from typing import Any, Callable

from schooner import defaults
from schooner.errors import ProtocolError
from schooner.protocol import check_shape, short
from frontend.queries import Entry
from schooner.types import LIVE_REPLICA_STATES, InputType, ReplicaInfo, ReplicaState

log = logging.getLogger(__name__)


def own_pidns() -> str:
    """This process's PID namespace (``/proc/self/ns/pid`` link text), "" where unknown."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a running (not zombie) process in our PID namespace."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


class Replica:
    """A registered replica: its ROUTER identity, what it said in HELLO, and its batches in flight.

    It runs them in the order sent; the first is running, the others wait in its socket
    (pipelining: the next batch is there when one ends, with no round trip in between).
    """

    __slots__ = ("identity", "info", "check_pid", "batches", "last_seen", "timed_out_batch", "gone_at")

    def __init__(self, identity: bytes, info: ReplicaInfo, check_pid: bool, now: float) -> None:
        self.identity = identity
        self.info = info
        self.check_pid = check_pid
        self.batches: list[Batch] = []  # in flight, in the order sent
        self.last_seen = now
        # The batch it held past the batch timeout; set, the replica stays dead until it sends HELLO.
        self.timed_out_batch: Batch | None = None
        self.gone_at: float | None = None  # when it became dead or stopped

    @property
    def key(self) -> tuple[str, str]:
        """(model name, version) this replica serves."""
        return (self.info.model_name, self.info.model_version)

    @property
    def state(self) -> ReplicaState:
        """The replica's state as the frontend sees it."""
        return self.info.state

    @property
    def idle(self) -> bool:
        """Ready for a batch: registered, not draining, no batch in flight."""
        return self.info.state == ReplicaState.READY and not self.batches

    def can_pipeline(self, depth: int) -> bool:
        """Running a batch (busy), not draining, with room for another behind it (``depth`` batches in all)."""
        return self.info.state == ReplicaState.BUSY and len(self.batches) < depth

    def free_at(self, latency: Callable[[int], float]) -> float:
        """When its batches in flight are expected to have run, one after the other (-inf: none)."""
        end = -math.inf
        for batch in self.batches:
            start = batch.sent_at
            end = (start if start > end else end) + latency(len(batch.entries))
        return end


class Batch:
    """A batch sent to one replica, waiting for its RESULT."""

    __slots__ = ("batch_id", "replica", "queue", "entries", "sent_at")

    def __init__(self, batch_id: int, replica: Replica, queue: Any, entries: list[Entry], sent_at: float) -> None:
        self.batch_id = batch_id
        self.replica = replica
        self.queue = queue
        self.entries = entries
        self.sent_at = sent_at


MAX_HELLO_STRING = 256  # characters of a HELLO's replica_id, model, version and host
MAX_HELLO_CPUS = 4096


def _field(hdr: dict, name: str, types: tuple, required: bool = True) -> Any:
    value = hdr.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, types) or isinstance(value, bool):
        raise ProtocolError(f"HELLO field {name!r} must be {'/'.join(t.__name__ for t in types)}, "
                            f"got {short(value)}")
    if isinstance(value, str) and len(value) > MAX_HELLO_STRING:
        raise ProtocolError(f"HELLO field {name!r} is longer than {MAX_HELLO_STRING} characters")
    return value


def info_from_hello(hdr: dict, now: float) -> ReplicaInfo:
    """A ReplicaInfo from a HELLO header; ProtocolError names the bad field."""
    try:
        input_type = InputType.parse(_field(hdr, "input_type", (str,)))
    except ValueError:
        raise ProtocolError(f"HELLO field 'input_type' must be one of {', '.join(t.value for t in InputType)}, "
                            f"got {short(hdr.get('input_type'))}") from None
    cpus = hdr.get("cpus") or []
    shape = hdr.get("input_shape")
    if not isinstance(cpus, list) or len(cpus) > MAX_HELLO_CPUS or not all(
            c.__class__ is int and c >= 0 for c in cpus):
        raise ProtocolError(f"HELLO field 'cpus' must be a list of at most {MAX_HELLO_CPUS} cpu ids")
    if shape is not None:
        check_shape(shape)
    return ReplicaInfo(
        replica_id=str(_field(hdr, "replica_id", (str, int))),
        model_name=_field(hdr, "model", (str,)),
        model_version=str(_field(hdr, "version", (str, int))),
        input_type=input_type,
        pid=_field(hdr, "pid", (int,), required=False) or 0,
        cpus=cpus,
        gpu=_field(hdr, "gpu", (int,), required=False),
        input_shape=shape,
        host=_field(hdr, "host", (str,), required=False) or "",
        state=ReplicaState.READY,
        last_heartbeat_s=now,
    )


class ReplicaPool:
    """Every replica that registered, by ROUTER identity, and the batches in flight.

    The one owner of replica state: every change of a replica's state, batch or
    liveness goes through a method here.
    """

    def __init__(self, pidns: str | None = None,
                 forget_after_s: float = defaults.GONE_REPLICA_FORGET_AFTER_S) -> None:
        if not forget_after_s >= 0:
            raise ValueError(f"forget_after_s must be >= 0, got {forget_after_s!r}")
        self.pidns = own_pidns() if pidns is None else pidns
        self.forget_after_s = forget_after_s
        self.by_identity: dict[bytes, Replica] = {}
        self.by_id: dict[str, Replica] = {}  # replica_id -> its latest registration
        self.batches: dict[int, Batch] = {}
        self._next_batch_id = 1
        # (gone_at, replica) in the order replicas went: prune() reads only the expired head.
        self._gone: collections.deque[tuple[float, Replica]] = collections.deque()

    # ---- lookups ----------------------------------------------------------------------------

    def get(self, identity: bytes) -> Replica | None:
        """The replica behind a ROUTER identity."""
        return self.by_identity.get(identity)

    def get_by_id(self, replica_id: Any) -> Replica | None:
        """The live replica registered as ``replica_id`` (its latest registration)."""
        replica = self.by_id.get(replica_id) if isinstance(replica_id, str) else None
        return replica if replica is not None and replica.state in LIVE_REPLICA_STATES else None

    def of_model(self, key: tuple[str, str]) -> list[Replica]:
        """Live replicas of a model version."""
        return [r for r in self.by_identity.values() if r.key == key and r.state in LIVE_REPLICA_STATES]

    def live(self) -> list[Replica]:
        """Every replica not dead or stopped."""
        return [r for r in self.by_identity.values() if r.state in LIVE_REPLICA_STATES]

    def infos(self) -> list[ReplicaInfo]:
        """ReplicaInfo of every replica still listed, recently dead and stopped ones included."""
        return [r.info for r in self.by_identity.values()]

    def lost(self, now: float, timeout_s: float) -> list[Replica]:
        """Live replicas silent for ``timeout_s`` or whose process is gone."""
        out = []
        for replica in self.live():
            if now - replica.last_seen > timeout_s or (replica.check_pid and not pid_alive(replica.info.pid)):
                out.append(replica)
        return out

    def overdue(self, now: float, timeout_s: float) -> list[Replica]:
        """Live replicas whose running batch has taken longer than ``timeout_s``."""
        return [b.replica for b in self.batches.values()
                if now - b.sent_at > timeout_s and b.replica.state in LIVE_REPLICA_STATES
                and b.replica.batches[0] is b]

    # ---- state changes ----------------------------------------------------------------------

    def register(self, identity: bytes, hdr: dict, now: float) -> tuple[Replica, list[Batch]]:
        """Register (or re-register) a replica from HELLO.

        Returns (the new replica, the batches its previous registration on this
        identity had in flight, to requeue). The previous one becomes stopped.
        """
        info = info_from_hello(hdr, now)
        check_pid = bool(self.pidns) and hdr.get("pidns") == self.pidns and info.pid > 0
        old = self.by_identity.get(identity)
        displaced = self._mark_gone(old, ReplicaState.STOPPED, now) if old is not None else []
        replica = Replica(identity, info, check_pid, now)
        self.by_identity[identity] = replica
        self.by_id[info.replica_id] = replica
        return replica, displaced

    def heard_from(self, replica: Replica, now: float) -> bool:
        """``replica`` sent something; True when that brings a replica declared dead back to ready."""
        replica.last_seen = now
        replica.info.last_heartbeat_s = now
        if replica.info.state != ReplicaState.DEAD or replica.timed_out_batch is not None:
            return False
        replica.info.state = ReplicaState.READY
        replica.gone_at = None
        return True

    def drain(self, replica: Replica) -> None:
        """``replica`` said BYE: it finishes its batch and takes no new one."""
        if replica.info.state in LIVE_REPLICA_STATES:
            replica.info.state = ReplicaState.DRAINING

    def start_batch(self, replica: Replica, queue: Any, entries: list[Entry], now: float) -> Batch:
        """Record ``entries`` as a batch in flight to ``replica`` (behind any it holds)."""
        batch = Batch(self._next_batch_id, replica, queue, entries, now)
        self._next_batch_id += 1
        self.batches[batch.batch_id] = batch
        replica.batches.append(batch)
        replica.info.state = ReplicaState.BUSY
        return batch

    def finish_batch(self, replica: Replica, batch_id: Any, now: float) -> Batch | None:
        """The batch ``batch_id`` of ``replica``, now finished; None if unknown or not its own.

        A batch waiting behind it starts now, as far as timing goes: its ``sent_at``
        moves here, so its latency and batch timeout do not count the wait.
        """
        batch = self.batches.get(batch_id)
        if batch is None or batch.replica is not replica:
            return None
        del self.batches[batch_id]
        replica.batches.remove(batch)
        replica.info.batches_done += 1
        if replica.batches:
            head = replica.batches[0]
            head.sent_at = max(head.sent_at, now)
        elif replica.info.state == ReplicaState.BUSY:
            replica.info.state = ReplicaState.READY
        return batch

    def lose(self, replica: Replica, now: float) -> list[Batch]:
        """A replica went silent or away: dead (stopped if it was draining); returns its batches to requeue."""
        state = ReplicaState.STOPPED if replica.state == ReplicaState.DRAINING else ReplicaState.DEAD
        return self._mark_gone(replica, state, now)

    def time_out(self, replica: Replica, now: float) -> list[Batch]:
        """A replica held its batch past the batch timeout: dead until it registers again."""
        batches = self._mark_gone(replica, ReplicaState.DEAD, now)
        replica.timed_out_batch = batches[0] if batches else None
        return batches

    def _mark_gone(self, replica: Replica, state: ReplicaState, now: float) -> list[Batch]:
        replica.info.state = state
        replica.gone_at = now
        self._gone.append((now, replica))
        batches, replica.batches = replica.batches, []
        for batch in batches:
            self.batches.pop(batch.batch_id, None)
        return batches

    def prune(self, now: float) -> list[Replica]:
        """Forget replicas dead or stopped for ``forget_after_s``; returns them (O(forgotten))."""
        limit = now - self.forget_after_s
        old = []
        gone = self._gone
        while gone and gone[0][0] <= limit:
            at, replica = gone.popleft()
            # Skip entries of replicas that came back (or went again later: a newer entry follows).
            if replica.gone_at == at and replica.state not in LIVE_REPLICA_STATES:
                self.forget(replica)
                old.append(replica)
        return old

    def forget(self, replica: Replica) -> None:
        """Drop a replica from the pool entirely."""
        if self.by_identity.get(replica.identity) is replica:
            del self.by_identity[replica.identity]
        if self.by_id.get(replica.info.replica_id) is replica:
            del self.by_id[replica.info.replica_id]
