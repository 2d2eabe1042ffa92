"""Every Redis key and channel name Schooner uses, built here and nowhere else."""

from __future__ import annotations


class Keys:
    """Builds every key and channel name under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.p = prefix

    @property
    def events(self) -> str:
        return f"{self.p}:events"

    @property
    def apps(self) -> str:
        return f"{self.p}:apps"

    @property
    def models(self) -> str:
        return f"{self.p}:models"

    def app(self, name: str) -> str:
        return f"{self.p}:app:{name}"

    def model(self, name: str, version: str) -> str:
        return f"{self.p}:model:{name}:{version}"

    def current_version(self, name: str) -> str:
        return f"{self.p}:current_version:{name}"

    def links(self, app: str) -> str:
        return f"{self.p}:links:{app}"

    def replica(self, model: str, version: str, replica_id: str) -> str:
        return f"{self.p}:replica:{model}:{version}:{replica_id}"

    @property
    def replica_keys(self) -> str:
        """Hash: CURVE public key -> the replica record key it was issued for."""
        return f"{self.p}:replica_keys"

    def replicas(self, model: str, version: str) -> str:
        return f"{self.p}:replicas:{model}:{version}"

    def replicas_pattern(self, model: str | None) -> str:
        return f"{self.p}:replicas:{model}:*" if model else f"{self.p}:replicas:*"

    def parse_replicas(self, key: str) -> tuple[str, str]:
        """(model, version) of a ``replicas`` set key."""
        model, version = key[len(f"{self.p}:replicas:"):].split(":", 1)
        return model, version

    @property
    def frontends(self) -> str:
        """Set of the ids of registered frontends (each also has a :meth:`frontend` hash with a TTL)."""
        return f"{self.p}:frontends"

    def frontend(self, frontend_id: str) -> str:
        return f"{self.p}:frontend:{frontend_id}"

    def desired(self, model: str, version: str) -> str:
        return f"{self.p}:desired:{model}:{version}"

    @property
    def desired_pattern(self) -> str:
        return f"{self.p}:desired:*"

    def parse_desired(self, key: str) -> tuple[str, str]:
        """(model, version) of a ``desired`` hash key."""
        model, version = key[len(f"{self.p}:desired:"):].split(":", 1)
        return model, version
