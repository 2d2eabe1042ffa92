"""The manager's records in the store: one hash per replica and the desired count per model version."""

from __future__ import annotations

import json

from management.store.codec import text
from management.store.connection import StoreBase, translated
from management.errors import BadRequest
from management.store.events import EventKind


class ReplicaRecords(StoreBase):
    """Replica records and desired deployments; :class:`management.store.Store` inherits these."""

    @translated
    def put_replica(self, record: dict) -> None:
        """Create or replace a replica record (needs model_name, model_version, replica_id)."""
        if not isinstance(record, dict):
            raise TypeError("record must be a dict")
        try:
            model, version, rid = (str(record[k]) for k in ("model_name", "model_version", "replica_id"))
        except KeyError as err:
            raise BadRequest(f"replica record needs field {err.args[0]!r}") from err
        key = self._k.replica(model, version, rid)
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={str(k): json.dumps(v) for k, v in record.items()})
        pipe.sadd(self._k.replicas(model, version), rid)
        self._event(pipe, EventKind.REPLICA_PUT, model_name=model, model_version=version, replica_id=rid)
        pipe.execute()

    @translated
    def get_replica(self, model: str, version: str, replica_id: str) -> dict | None:
        """A replica record as it was put, or None."""
        raw = self._r.hgetall(self._k.replica(model, str(version), replica_id))
        return {text(k): json.loads(text(v)) for k, v in raw.items()} if raw else None

    @translated
    def list_replicas(self, model: str | None = None, version: str | None = None) -> list[dict]:
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
        records = [{text(k): json.loads(text(v)) for k, v in raw.items()} for raw in pipe.execute() if raw]
        return sorted(records, key=lambda r: str(r.get("replica_id")))

    @translated
    def delete_replica(self, model: str, version: str, replica_id: str) -> bool:
        """Remove a replica record; whether there was one."""
        version = str(version)
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._k.replica(model, version, replica_id))
        pipe.srem(self._k.replicas(model, version), replica_id)
        self._event(pipe, EventKind.REPLICA_DELETED, model_name=model, model_version=version,
                    replica_id=replica_id)
        return bool(pipe.execute()[0])

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
        self._event(pipe, EventKind.DESIRED_SET, model_name=model, model_version=version)
        pipe.execute()

    @translated
    def get_desired(self, model: str, version: str) -> dict | None:
        """The desired deployment of a model version, or None."""
        raw = self._r.hgetall(self._k.desired(model, str(version)))
        return {text(k): json.loads(text(v)) for k, v in raw.items()} if raw else None

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
        self._event(pipe, EventKind.DESIRED_DELETED, model_name=model, model_version=version)
        pipe.execute()
