"""Configuration of the query frontend, and loading a deployment from a JSON file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from schooner import defaults
from schooner.types import AppSpec, DeploymentState, ModelSpec


@dataclass
class FrontendConfig:
    """Where the frontend listens and how it watches replicas.

    A port of 0 binds a free port; the bound ports are on the ``Frontend`` after
    ``start()``. ``http_port=None`` runs no HTTP endpoint.
    """

    host: str = defaults.HOST
    client_port: int = defaults.CLIENT_PORT
    replica_port: int = defaults.REPLICA_PORT
    http_port: int | None = defaults.HTTP_PORT
    heartbeat_interval_s: float = defaults.HEARTBEAT_INTERVAL_S
    heartbeat_timeout_s: float = defaults.HEARTBEAT_TIMEOUT_S
    batch_timeout_s: float = defaults.BATCH_TIMEOUT_S  # a batch in flight longer marks its replica dead
    max_message_bytes: int = defaults.MAX_MESSAGE_BYTES
    max_input_bytes: int = defaults.MAX_INPUT_BYTES
    max_items_per_query: int = defaults.MAX_ITEMS_PER_QUERY  # inputs in one query (ZMQ items, input_batch)
    # CURVE: the frontend's key pair file (schooner.curve format). Set, the replica port admits only
    # replicas whose keys the manager registered; client_curve also encrypts the client port.
    curve_secret_file: str = ""
    client_curve: bool = False
    start_ready: bool = True  # False: NotReady for every query until Frontend.set_ready() (the follower)
    client_curve_keys: list[str] = field(default_factory=list)  # empty: any client key (encryption only)
    # TLS for the HTTP endpoint (both or neither).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    retry_after_s: int = defaults.RETRY_AFTER_S
    max_batch_retries: int = defaults.MAX_BATCH_RETRIES
    spin_us: int = defaults.FRONTEND_SPIN_US  # busy-poll window after a burst (0 = block at once)
    # Batches in flight to one replica: with 2, a full batch waits in the replica's socket behind the
    # one running, so the replica starts it without a round trip (1 = one batch at a time, as Clipper).
    pipeline_depth: int = defaults.PIPELINE_DEPTH
    # dead/stopped replicas stay listed this long, then are forgotten
    forget_gone_replicas_after_s: float = defaults.GONE_REPLICA_FORGET_AFTER_S
    # The host others reach this frontend by, in Redis's frontend directory; "" = ``host``, or this
    # machine's address when ``host`` is a wildcard (0.0.0.0).
    advertise_host: str = ""
    frontend_id: str = ""  # its id in the frontend directory; "" = <hostname>-<pid>-<random>

    def __post_init__(self) -> None:
        for name in ("client_port", "replica_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < 65536:
                raise ValueError(f"{name} must be a port number (0 = any free port), got {value!r}")
        if self.http_port is not None and (not isinstance(self.http_port, int) or not 0 <= self.http_port < 65536):
            raise ValueError(f"http_port must be a port number or None, got {self.http_port!r}")
        if self.heartbeat_interval_s <= 0:
            raise ValueError("heartbeat_interval_s must be positive")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ValueError("heartbeat_timeout_s must be larger than heartbeat_interval_s")
        if not self.batch_timeout_s > 0:
            raise ValueError(f"batch_timeout_s must be positive, got {self.batch_timeout_s!r}")
        if self.max_message_bytes < 1 or self.max_input_bytes < 1:
            raise ValueError("max_message_bytes and max_input_bytes must be positive")
        if not isinstance(self.max_items_per_query, int) or self.max_items_per_query < 1:
            raise ValueError(f"max_items_per_query must be a positive integer, got {self.max_items_per_query!r}")
        if not isinstance(self.spin_us, int) or self.spin_us < 0:
            raise ValueError(f"spin_us must be an integer >= 0, got {self.spin_us!r}")
        if not isinstance(self.pipeline_depth, int) or self.pipeline_depth < 1:
            raise ValueError(f"pipeline_depth must be an integer >= 1, got {self.pipeline_depth!r}")
        if not self.forget_gone_replicas_after_s >= 0:
            raise ValueError("forget_gone_replicas_after_s must be >= 0")
        if self.client_curve and not self.curve_secret_file:
            raise ValueError("client_curve needs curve_secret_file (the frontend's key pair)")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.max_batch_retries < 0:
            raise ValueError("max_batch_retries must be >= 0")


def state_from_dict(data: Any) -> DeploymentState:
    """A DeploymentState from its JSON shape; ValueError names the bad field.

    Shape: ``{"apps": [AppSpec dicts], "models": [ModelSpec dicts],
    "links": {app: [model names]}, "current_versions": {model: version}}``.
    A model without a current version gets the version listed last.
    """
    if not isinstance(data, dict):
        raise ValueError("deployment state must be a JSON object")
    state = DeploymentState()
    for i, raw in enumerate(data.get("apps", [])):
        try:
            app = AppSpec(**raw)
        except TypeError as err:
            raise ValueError(f"apps[{i}]: {err}") from err
        state.apps[app.name] = app
    for i, raw in enumerate(data.get("models", [])):
        try:
            model = ModelSpec(**raw)
        except TypeError as err:
            raise ValueError(f"models[{i}]: {err}") from err
        state.models[model.key] = model
    links = data.get("links", {})
    if not isinstance(links, dict):
        raise ValueError("links must map an app name to a list of model names")
    for app, names in links.items():
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"links[{app!r}] must be a list of model names")
        state.links[app] = list(names)
    versions = data.get("current_versions", {})
    if not isinstance(versions, dict):
        raise ValueError("current_versions must map a model name to a version")
    state.current_versions = {str(k): str(v) for k, v in versions.items()}
    explicit = set(state.current_versions)
    for name, version in state.models:
        if name not in explicit:
            state.current_versions[name] = version
    return state


def load_state_file(path: str) -> DeploymentState:
    """Read a DeploymentState JSON file (see :func:`state_from_dict`)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as err:
        raise ValueError(f"cannot read deployment file {path!r}: {err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"deployment file {path!r} is not valid JSON: {err}") from err
    return state_from_dict(data)
