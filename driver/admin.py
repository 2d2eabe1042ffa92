"""A small client for the management REST API (stdlib HTTP, JSON in and out)."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from driver.errors import DeployError
from management import admin_token

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 60.0


class Admin:
    """Calls ``<base_url>/admin/...``; failures raise DeployError with the service's message."""

    def __init__(self, base_url: str, timeout_s: float = HTTP_TIMEOUT_S, token: str | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            base_url = "http://" + base_url
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        # None: SCHOONER_ADMIN_TOKEN, SCHOONER_ADMIN_TOKEN_FILE or <state-dir>/admin-token (management.admin_token)
        self.token = admin_token.discover() if token is None else token

    def _call(self, method: str, path: str, body: dict | None, timeout_s: float | None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            try:
                info = json.loads(text)
            except ValueError:
                info = {"message": text}
            raise DeployError(f"{path}: HTTP {err.code}: {info.get('message') or text}",
                              status=err.code, error=str(info.get("error", ""))) from err
        except (urllib.error.URLError, OSError) as err:
            raise DeployError(f"{path}: cannot reach the management service at {self.base_url}: {err}") from err
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return raw.decode(errors="replace")  # Clipper's write endpoints answer plain "Success!"

    def post(self, path: str, body: dict, timeout_s: float | None = None) -> Any:
        """POST JSON to ``path``; the decoded JSON answer, or its text."""
        return self._call("POST", path, body, timeout_s)

    def get(self, path: str, timeout_s: float | None = None) -> Any:
        """GET ``path``; the decoded answer."""
        return self._call("GET", path, None, timeout_s)

    def add_app(self, name: str, input_type: str, default_output: str, slo_micros: int) -> None:
        """Register an app; one that already exists is kept (HTTP 409)."""
        self._idempotent("/admin/add_app", {"name": name, "input_type": input_type,
                                            "default_output": default_output,
                                            "latency_slo_micros": slo_micros})

    def add_model(self, body: dict) -> None:
        """Register a model version; one that already exists is kept (HTTP 409)."""
        self._idempotent("/admin/add_model", body)

    def link(self, app: str, model: str) -> None:
        """Link ``model`` to ``app``; an existing link is kept."""
        self._idempotent("/admin/add_model_links", {"app_name": app, "model_names": [model]})

    def _idempotent(self, path: str, body: dict) -> None:
        try:
            self.post(path, body)
        except DeployError as err:
            if err.status != 409:
                raise
            log.info("%s: already there (%s)", path, err)

    def set_batching(self, model: str, version: str, batch_size: int, max_batch_size: int,
                     wait_micros: int) -> None:
        """Change a model's batching."""
        self.post("/admin/set_model_batching", {"model_name": model, "model_version": version,
                                                "batch_size": batch_size, "max_batch_size": max_batch_size,
                                                "batch_wait_timeout_micros": wait_micros})

    def set_num_replicas(self, model: str, version: str, num_replicas: int, cpus_per_replica: int,
                         model_cpus: list[int], gpus: list[int], wait_s: float) -> Any:
        """Scale a model and wait (up to ``wait_s``) until its replicas serve."""
        return self.post("/admin/set_num_replicas",
                         {"model_name": model, "model_version": version, "num_replicas": num_replicas,
                          "cpus_per_replica": cpus_per_replica, "model_cpus": model_cpus, "gpus": gpus,
                          "wait_s": wait_s}, timeout_s=wait_s + self.timeout_s)

    def replicas(self, model: str, version: str) -> Any:
        """The model's replicas as the manager describes them."""
        return self.post("/admin/get_model_replicas", {"model_name": model, "model_version": version})

    def metrics(self) -> dict:
        """The frontend's metrics dump (Clipper layout)."""
        return self.get("/admin/metrics")

    def delete(self, app: str, model: str, version: str) -> None:
        """Remove the app and the model version (best effort: logs what fails)."""
        for path, body in (("/admin/delete_app", {"name": app}),
                           ("/admin/delete_versioned_model", {"model_name": model, "model_version": version})):
            try:
                self.post(path, body)
            except DeployError as err:
                log.warning("cleanup %s failed: %s", path, err)
