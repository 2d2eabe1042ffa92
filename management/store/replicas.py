"""The manager's records in the store: one hash per replica and the desired count per model version."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from management.store.codec import text
from management.store.connection import Connection, translated
from management.errors import BadRequest
from management.store.events import EventKind
from schooner.types import Backend, ReplicaState


@dataclass
class ReplicaRecord:
    """What the manager keeps in Redis about one replica it started.

    ``state`` is the manager's view (a :class:`~schooner.types.ReplicaState`
    value); ``handle`` is the backend's id of the running replica (``pid`` for
    processes, ``container_id`` for Docker). Fields a newer writer added that
    this reader does not know are kept in ``extra`` and written back unchanged.
    """

    replica_id: str
    model_name: str
    model_version: str
    backend: str = Backend.PROCESS.value
    host: str = ""
    handle: str = ""
    cpus: list[int] = field(default_factory=list)
    gpu: int | None = None
    state: str = ReplicaState.STARTING.value
    last_heartbeat: float = 0.0  # wall-clock seconds of the last heartbeat the frontend saw
    restarts: int = 0
    seq: int = 0  # start order within its model version (the manager's own)
    created_s: float = 0.0
    node: str = ""  # the node it runs on, for a backend that places replicas on many hosts (Ray: its address)
    pid: int | None = None
    container_id: str | None = None
    curve_public_key: str = ""  # the CURVE key the manager issued it; the frontend admits only that key
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("replica_id", "model_name", "model_version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
                raise BadRequest(f"replica record field {name!r} must be a non-empty string, got {value!r}")
            setattr(self, name, str(value))
        self.state = str(ReplicaState(self.state).value) if self.state in _STATES else str(self.state)

    @classmethod
    def from_dict(cls, data: dict) -> ReplicaRecord:
        """A record from its dict form (unknown fields go to ``extra``); BadRequest names a missing field."""
        if not isinstance(data, dict):
            raise TypeError("a replica record must be a dict")
        known = {k: v for k, v in data.items() if k in _FIELDS}
        missing = [k for k in ("replica_id", "model_name", "model_version") if k not in known]
        if missing:
            raise BadRequest(f"replica record needs field {missing[0]!r}")
        return cls(**known, extra={k: v for k, v in data.items() if k not in _FIELDS and k != "extra"})

    def to_dict(self) -> dict[str, Any]:
        """The dict form (JSON, Redis): every field, ``pid``/``container_id`` only when set, extras inline."""
        out = {f: getattr(self, f) for f in _FIELDS}
        for optional in ("pid", "container_id"):
            if out[optional] is None:
                del out[optional]
        return {**self.extra, **out}

    @property
    def key(self) -> tuple[str, str]:
        """(model name, version) of the replica."""
        return (self.model_name, self.model_version)


_FIELDS = tuple(f.name for f in dataclasses.fields(ReplicaRecord) if f.name != "extra")
_STATES = frozenset(s.value for s in ReplicaState)


def _decode(raw: dict) -> dict:
    return {text(k): json.loads(text(v)) for k, v in raw.items()}


class ReplicaTable:
    """Replica records and desired deployments in Redis."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._r = conn.redis
        self._k = conn.keys

    @translated
    def put(self, record: ReplicaRecord | dict) -> None:
        """Create or replace a replica record."""
        if isinstance(record, dict):
            record = ReplicaRecord.from_dict(record)
        if not isinstance(record, ReplicaRecord):
            raise TypeError("record must be a ReplicaRecord")
        model, version, rid = record.model_name, record.model_version, record.replica_id
        key = self._k.replica(model, version, rid)
        old_key = self._public_key(key)
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={str(k): json.dumps(v) for k, v in record.to_dict().items()})
        pipe.sadd(self._k.replicas(model, version), rid)
        if old_key and old_key != record.curve_public_key:
            pipe.hdel(self._k.replica_keys, old_key)
        if record.curve_public_key:
            pipe.hset(self._k.replica_keys, record.curve_public_key, key)
        self._conn.event(pipe, EventKind.REPLICA_PUT, model_name=model, model_version=version, replica_id=rid)
        pipe.execute()

    @translated
    def get(self, model: str, version: str, replica_id: str) -> ReplicaRecord | None:
        """A replica record as it was put, or None."""
        raw = self._r.hgetall(self._k.replica(model, str(version), replica_id))
        return ReplicaRecord.from_dict(_decode(raw)) if raw else None

    @translated
    def find(self, model: str | None = None, version: str | None = None) -> list[ReplicaRecord]:
        """Replica records, of one model version, of one model, or all; sorted by id."""
        if model is not None and version is not None:
            sets = [self._k.replicas(model, str(version))]
        else:
            sets = sorted(text(k) for k in self._r.scan_iter(match=self._k.replicas_pattern(model), count=500))
        keys = []
        for set_key in sets:
            model_name, model_version = self._k.parse_replicas(set_key)
            keys += [self._k.replica(model_name, model_version, text(r)) for r in self._r.smembers(set_key)]
        pipe = self._r.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        records = [ReplicaRecord.from_dict(_decode(raw)) for raw in pipe.execute() if raw]
        return sorted(records, key=lambda r: r.replica_id)

    @translated
    def delete(self, model: str, version: str, replica_id: str) -> bool:
        """Remove a replica record; whether there was one."""
        version = str(version)
        key = self._k.replica(model, version, replica_id)
        old_key = self._public_key(key)
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(key)
        pipe.srem(self._k.replicas(model, version), replica_id)
        if old_key:
            pipe.hdel(self._k.replica_keys, old_key)
        self._conn.event(pipe, EventKind.REPLICA_DELETED, model_name=model, model_version=version,
                         replica_id=replica_id)
        return bool(pipe.execute()[0])

    def _public_key(self, record_key: str) -> str:
        raw = self._r.hget(record_key, "curve_public_key")
        return json.loads(text(raw)) if raw else ""

    @translated
    def replica_for_key(self, public_key: str) -> str | None:
        """The id of the replica whose record holds CURVE key ``public_key``, or None."""
        record_key = self._r.hget(self._k.replica_keys, public_key)
        if not record_key:
            return None
        raw = self._r.hmget(text(record_key), ["curve_public_key", "replica_id"])
        if not raw[0] or json.loads(text(raw[0])) != public_key:
            return None
        return json.loads(text(raw[1]))

    @translated
    def curve_keys(self) -> dict[str, str]:
        """Every registered CURVE public key -> the id of the replica it was issued to."""
        index = {text(k): text(v) for k, v in self._r.hgetall(self._k.replica_keys).items()}
        pipe = self._r.pipeline(transaction=False)
        for record_key in index.values():
            pipe.hmget(record_key, ["curve_public_key", "replica_id"])
        out = {}
        for public_key, (have, rid) in zip(index, pipe.execute()):
            if have and rid and json.loads(text(have)) == public_key:
                out[public_key] = json.loads(text(rid))
        return out

    @translated
    def set_desired(self, model: str, version: str, desired: dict) -> None:
        """Replace the desired deployment of a model version (num_replicas, cpus_per_replica, ...)."""
        if not isinstance(desired, dict) or not desired:
            raise BadRequest("desired must be a non-empty dict")
        version = str(version)
        key = self._k.desired(model, version)
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={str(k): json.dumps(v) for k, v in desired.items()})
        self._conn.event(pipe, EventKind.DESIRED_SET, model_name=model, model_version=version)
        pipe.execute()

    @translated
    def get_desired(self, model: str, version: str) -> dict | None:
        """The desired deployment of a model version, or None."""
        raw = self._r.hgetall(self._k.desired(model, str(version)))
        return _decode(raw) if raw else None

    @translated
    def list_desired(self) -> list[dict]:
        """Every desired deployment, each with model_name and model_version added."""
        out = []
        for key in sorted(text(k) for k in self._r.scan_iter(match=self._k.desired_pattern, count=500)):
            model, version = self._k.parse_desired(key)
            desired = self.get_desired(model, version)
            if desired is not None:
                out.append({**desired, "model_name": model, "model_version": version})
        return out

    @translated
    def delete_desired(self, model: str, version: str) -> None:
        """Forget the desired deployment of a model version."""
        version = str(version)
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._k.desired(model, version))
        self._conn.event(pipe, EventKind.DESIRED_DELETED, model_name=model, model_version=version)
        pipe.execute()
